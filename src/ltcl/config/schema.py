"""The dataclass tree that defines a run: every hyperparameter, with its type and its legal values.

Enum-like settings are ``Literal`` types: the loader rejects any other value with one sentence naming the key and
the choices, and the modules that act on them read their legal values from here (``typing.get_args``). Free-form
strings with a fixed shape carry a ``pattern`` in their field metadata (``model.finetune``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ltcl.config.checks import (
    AT_LEAST_0,
    AT_LEAST_1,
    BETAS,
    EACH_AT_LEAST_0,
    EACH_AT_LEAST_1,
    MOMENTUM,
    NON_NEGATIVE,
    NOT_EMPTY,
    POSITIVE,
    UNIT_INTERVAL,
    check,
)

Dataset = Literal["digits_lt", "cifar10_lt", "cifar100_lt", "imagenet_lt", "places_lt", "inat2018", "image_folder"]
ImbalanceProfile = Literal["exp", "step"]
AugmentOn = Literal["loader", "device"]
Preset = Literal["cifar_autoaugment_cutout", "simclr", "randaugment", "randaugstack", "digits", "digits_simclr", "none"]
ContrastiveMode = Literal["distribution_aware", "uniform"]
Normalization = Literal["cifar", "imagenet", "model"]
CutoutFill = Literal["mean", "black"]
Schedule = Literal["step", "cosine"]
Device = Literal["auto", "cpu", "cuda"]
Amp = Literal["auto", "none", "bf16", "fp16"]
OptimizerName = Literal["sgd", "adamw"]
WeightDecayOn = Literal["auto", "all", "weights_only"]


@dataclass
class DataConfig:
    """Where the images come from and how the long-tailed training set is built."""

    dataset: Dataset = "digits_lt"
    root: str = ""  # .npz file, CIFAR folder, image root or class-folder tree, by dataset
    train_list: str = ""  # split-list datasets: "path label" lines; the image paths in it are relative to root
    val_list: str = ""
    test_list: str = ""
    # N_max / N_min of a long-tailed subset of the training images; 1 keeps every image as given.
    imbalance_factor: float = field(default=1.0, metadata=check(lambda v: v >= 1, "a number >= 1"))
    imbalance_profile: ImbalanceProfile = "exp"
    # CIFAR-LT and digits: a class-balanced validation split of this many images per class, taken from the
    # training images that the long-tailed subset leaves unused (0: no validation split).
    val_per_class: int = field(default=0, metadata=AT_LEAST_0)
    download: bool = False  # CIFAR only: fetch the official archive when it is missing
    skip_corrupt: bool = False  # drop unreadable images (and report how many) instead of failing
    # split-list datasets: size of the label space (0: standard 1000 / 365 / 8142)
    num_classes: int = field(default=0, metadata=AT_LEAST_0)
    subset_seed: int = 0  # seed of the long-tailed subset selection (0 gives LDAM-DRW's published subsets)
    many_threshold: int = field(default=100, metadata=AT_LEAST_0)  # classes with more training images are many-shot
    few_threshold: int = field(default=20, metadata=AT_LEAST_0)  # classes with fewer training images are few-shot
    # which images an epoch draws: instance | class_balanced | square_root | progressive (`ltcl methods` lists them)
    sampler: str = "instance"
    batch_size: int = field(default=128, metadata=AT_LEAST_1)  # images per optimisation step, summed over all processes
    eval_batch_size: int = field(default=256, metadata=AT_LEAST_1)
    # loader: PIL augmentation in DataLoader workers | device: in-memory training set kept on the training device and
    # augmented there in batches (CIFAR, digits)
    augment_on: AugmentOn = "loader"
    # loader processes per training process (capped at the available cores)
    num_workers: int = field(default=2, metadata=AT_LEAST_0)
    pin_memory: bool = True  # only takes effect on CUDA
    persistent_workers: bool = True
    prefetch_factor: int = field(default=2, metadata=AT_LEAST_1)


@dataclass
class ViewsConfig:
    """The distribution-aware multi-view pipeline: V views per image, all of them classified, the first k of them
    contrasted, with k set by the image's shot group (the paper's Sec. 5)."""

    # views per training image; all of them feed the classification loss
    num_views: int = field(default=4, metadata=AT_LEAST_1)
    # per view, last repeats
    presets: list[Preset] = field(default_factory=lambda: ["cifar_autoaugment_cutout"], metadata=NOT_EMPTY)
    # output side per view, last repeats; 0: the model's
    sizes: list[int] = field(default_factory=lambda: [32], metadata=EACH_AT_LEAST_0)
    contrastive_mode: ContrastiveMode = "distribution_aware"
    # many / medium / few
    contrastive_views: list[int] = field(default_factory=lambda: [2, 3, 4], metadata=EACH_AT_LEAST_1)
    test_size: int = field(default=32, metadata=AT_LEAST_0)  # side of the evaluation crop (0: the model's input size)
    # shorter side before the centre crop (0: test_size, so the whole image is seen)
    test_resize: int = field(default=0, metadata=AT_LEAST_0)
    normalization: Normalization = "cifar"  # model: the pretrained backbone's own mean and std
    randaugment_n: int = field(default=2, metadata=AT_LEAST_0)
    randaugment_m: int = field(default=10, metadata=AT_LEAST_0)
    # magnitude bins; 11 puts m on timm's 0..10 scale (m10 = strongest), as GPaCo
    randaugment_bins: int = field(default=11, metadata=check(lambda v: v >= 2, "an integer >= 2"))
    cutout_fill: CutoutFill = "mean"  # mean: 0 after normalisation (Cutout paper) | black: pixel 0 (GPaCo's code)


@dataclass
class ModelConfig:
    """Backbone, projection head and classifier."""

    # resnet32 (and resnet8/20/44/56) | resnet50 | resnext50_32x4d | ... | timm/<name> | open_clip/<arch>
    backbone: str = "resnet32"
    # timm: true loads the hub's pretrained weights (downloads only when set); open_clip: the pretrained tag
    pretrained: bool | str = False
    weights: str = ""  # local .pth or .safetensors file with backbone weights (never downloaded)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm / open_clip, e.g. img_size
    finetune: str = "full"  # full | bitfit | lora:R | adaptformer | vpt_shallow:N | vpt_deep:N | ssf (`ltcl methods`)
    # LoRA scaling numerator (0: equal to the rank R, a scaling of 1)
    lora_alpha: float = field(default=0.0, metadata=NON_NEGATIVE)
    zero_shot_head: bool = False  # open_clip: initialise the cosine classifier from the class names' text
    projection_hidden: int = field(default=64, metadata=AT_LEAST_0)  # 0: a single linear projection
    # 0: no projection head (objectives without a contrastive term)
    projection_dim: int = field(default=32, metadata=AT_LEAST_0)
    projection_bn: bool = False
    classifier: str = "linear"  # a registered classifier: linear | cosine (`ltcl methods` lists them)
    cosine_scale: float = field(default=16.0, metadata=POSITIVE)  # logit scale of the cosine classifier
    trainable: list[str] = field(default_factory=list)  # parameter-name prefixes to train; empty: all
    sync_bn: bool = False


@dataclass
class LossConfig:
    """The training objective and the weights that every method shares.

    ``objective`` names a registered method (``ltcl methods`` lists them): a whole objective (``gpaco``), a
    classification loss (``bs``), or a classification loss plus a contrastive term (``bs+acl``, Eq. 10:
    ``cls_weight * classification + alpha * contrastive``). Each method's own hyperparameters live in its own
    section, ``loss.<section>`` (``loss.acl.center_momentum``, ``loss.gpaco.alpha``): in YAML and ``--set`` they are
    written there, and ``sections`` holds them here (filled with the method's defaults when the run starts).
    ``mixing`` names a registered mixing strategy of the classification term, whose hyperparameters are its own
    section too (``loss.mixup.alpha``).
    """

    objective: str = "bs+acl"
    # none | mixup | cutmix | remix (`ltcl methods` lists them): the classification term trains on mixed images and
    # labels, drawn from the same batch; a contrastive term still sees the unmixed views
    mixing: str = "none"
    alpha: float = field(default=0.1, metadata=NON_NEGATIVE)  # weight of the contrastive term
    temperature: float = field(default=0.05, metadata=POSITIVE)  # tau of the contrastive similarities
    cls_weight: float = field(default=1.0, metadata=NON_NEGATIVE)  # weight of the classification term
    # epsilon of the classification term's target, (1 - eps) one-hot + eps / C uniform, on the logits the loss sees
    # (adjusted ones for bs / la), as torch's CrossEntropyLoss(label_smoothing=eps) (Szegedy et al., CVPR 2016,
    # Sec. 7); ce, bs and la take it. 0: off
    label_smoothing: float = field(default=0.0, metadata=UNIT_INTERVAL)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"inline_sections": True})


@dataclass
class OptimConfig:
    """The optimiser (SGD or AdamW) with linear warm-up, then step or cosine decay (per epoch fraction)."""

    # sgd: the paper's ResNet recipes | adamw: decoupled weight decay (Loshchilov & Hutter, ICLR 2019), the usual
    # optimiser for fine-tuning a ViT or CLIP tower (timm's fine-tuning recipes; LIFT, Shi et al., ICML 2024)
    name: OptimizerName = "sgd"
    epochs: int = field(default=200, metadata=AT_LEAST_1)
    lr: float = field(default=0.07, metadata=POSITIVE)
    momentum: float = field(default=0.9, metadata=MOMENTUM)  # sgd only
    weight_decay: float = field(default=5e-4, metadata=NON_NEGATIVE)
    # which parameters weight_decay applies to. all: every parameter (the paper's ResNet recipes and GPaCo's code
    # decay everything) | weights_only: not normalisation parameters, biases (every parameter with ndim <= 1) nor
    # the embeddings a module's no_weight_decay() names (timm: pos_embed, cls_token; OpenCLIP: positional_embedding,
    # class_embedding), as timm's param_groups_weight_decay | auto: all for sgd, weights_only for adamw
    weight_decay_on: WeightDecayOn = "auto"
    nesterov: bool = False  # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=BETAS)  # adamw (torch's defaults)
    eps: float = field(default=1e-8, metadata=POSITIVE)  # adamw (torch's default)
    # learning rate of the backbone's parameters relative to optim.lr; the head (classifier, projection, the
    # method's own modules) keeps optim.lr. Below 1 for a pretrained backbone (layer-wise decay's simplest form)
    backbone_lr_scale: float = field(default=1.0, metadata=POSITIVE)
    # micro-batches per optimisation step: each data.batch_size batch is split into this many parts, forwarded and
    # backpropagated one at a time (less activation memory); batch, lr, schedule and steps per epoch are unchanged
    accumulate_steps: int = field(default=1, metadata=AT_LEAST_1)
    # largest L2 norm of the gradient of all trainable parameters together, after unscaling under fp16 (0: off)
    clip_grad_norm: float = field(default=0.0, metadata=NON_NEGATIVE)
    warmup_epochs: int = field(default=10, metadata=AT_LEAST_0)
    schedule: Schedule = "step"
    milestones: list[int] = field(default_factory=lambda: [160, 180])
    gamma: float = field(default=0.1, metadata=POSITIVE)


@dataclass
class TrainConfig:
    """How the run is executed and recorded."""

    output_dir: str = "runs"  # the run directory is output_dir/run_name
    run_name: str = ""  # default: the config's name
    seed: int = 0
    deterministic: bool = False
    device: Device = "auto"
    # auto: bf16 where the processor has bf16 matrix units (AMX / AVX512-BF16) or the GPU supports it, else none;
    # fp16 (CUDA only) uses a gradient scaler
    amp: Amp = "auto"
    channels_last: bool = True
    compile: bool = False
    # epochs between evaluations (the last epoch is always evaluated)
    eval_every: int = field(default=10, metadata=AT_LEAST_1)
    # decay of an exponential moving average of the model's parameters (its buffers are the model's own), updated
    # after every optimisation step; validation, checkpoint selection, the final table and ltcl eval use it
    # (timm's ModelEma; 0.9998 or so for fine-tuning). 0: off
    ema_decay: float = field(default=0.0, metadata=MOMENTUM)
    # 0: whole epochs; >0 cuts each epoch (smoke tests)
    max_steps_per_epoch: int = field(default=0, metadata=AT_LEAST_0)
    # also save checkpoint_last.pt every this many steps inside an epoch (0: off)
    checkpoint_every_steps: int = field(default=0, metadata=AT_LEAST_0)
    # steps between reads of the device-side loss statistics and non-finite flag (also read at every checkpoint
    # and at the end of every epoch); a read makes the host wait for the device
    sync_every: int = field(default=50, metadata=AT_LEAST_1)
    monitor_conflicts: bool = False  # record SCL's per-class gradient-conflict ratio (Fig. 4a)
    # where each epoch's metrics row goes: csv (metrics.csv, always written), tensorboard, wandb (pip install
    # 'ltcl[wandb]'; WANDB_MODE=offline logs without a network); `ltcl.engine.loggers` lists them
    loggers: list[str] = field(default_factory=lambda: ["tensorboard", "csv"])
    tensorboard: bool = True  # the older switch, kept: false takes tensorboard out of train.loggers
    progress: bool = True  # a progress bar on a terminal; one line per epoch otherwise


@dataclass
class Config:
    """The whole definition of a run."""

    name: str = "run"
    # Python files that register methods or backbones (``ltcl.register_objective``), relative to the config file
    # in YAML; loaded before the rest of the config is checked, and recorded with the run.
    plugins: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
