"""The dataclass tree that defines a run: every hyperparameter, with its type and its legal values.

Enum-like settings are ``Literal`` types: the loader rejects any other value with one sentence naming the key and
the choices, and the modules that act on them read their legal values from here (``typing.get_args``). Free-form
strings with a fixed shape carry a ``pattern`` in their field metadata (``model.finetune``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Dataset = Literal["digits_lt", "cifar10_lt", "cifar100_lt", "imagenet_lt", "places_lt", "inat2018", "image_folder"]
ImbalanceProfile = Literal["exp", "step"]
AugmentOn = Literal["loader", "device"]
Preset = Literal["cifar_autoaugment_cutout", "simclr", "randaugment", "randaugstack", "digits", "digits_simclr", "none"]
ContrastiveMode = Literal["distribution_aware", "uniform"]
Normalization = Literal["cifar", "imagenet", "model"]
CutoutFill = Literal["mean", "black"]
Classifier = Literal["linear", "cosine"]
CLASSIFICATION_LOSSES = ("ce", "bs", "la", "ldam")
CONTRASTIVE_LOSSES = ("scl", "acl", "bcl")
# A classification loss, optionally "+" a contrastive one; GPaCo's loss classifies and contrasts at once.
OBJECTIVES = (
    *CLASSIFICATION_LOSSES,
    *(f"{c}+{k}" for c in CLASSIFICATION_LOSSES for k in CONTRASTIVE_LOSSES),
    "gpaco",
)
Objective = Literal[OBJECTIVES]  # type: ignore[valid-type]
NegativeWeighting = Literal["inverse_frequency", "none"]
Schedule = Literal["step", "cosine"]
Device = Literal["auto", "cpu", "cuda"]
Amp = Literal["auto", "none", "bf16", "fp16"]
FINETUNE_PATTERN = r"full|bitfit|lora:[1-9][0-9]*"


@dataclass
class DataConfig:
    """Where the images come from and how the long-tailed training set is built."""

    dataset: Dataset = "digits_lt"
    root: str = ""  # .npz file, CIFAR folder, image root or class-folder tree, by dataset
    train_list: str = ""  # split-list datasets: "path label" lines; the image paths in it are relative to root
    val_list: str = ""
    test_list: str = ""
    # N_max / N_min of a long-tailed subset of the training images; 1 keeps every image as given.
    imbalance_factor: float = 1.0
    imbalance_profile: ImbalanceProfile = "exp"
    # CIFAR-LT and digits: a class-balanced validation split of this many images per class, taken from the
    # training images that the long-tailed subset leaves unused (0: no validation split).
    val_per_class: int = 0
    download: bool = False  # CIFAR only: fetch the official archive when it is missing
    skip_corrupt: bool = False  # drop unreadable images (and report how many) instead of failing
    num_classes: int = 0  # split-list datasets: size of the label space (0: standard 1000 / 365 / 8142)
    subset_seed: int = 0  # seed of the long-tailed subset selection (0 gives LDAM-DRW's published subsets)
    many_threshold: int = 100  # classes with more training images are many-shot
    few_threshold: int = 20  # classes with fewer training images are few-shot
    batch_size: int = 128  # images per optimisation step, summed over all processes
    eval_batch_size: int = 256
    # loader: PIL augmentation in DataLoader workers | device: in-memory training set kept on the training device and
    # augmented there in batches (CIFAR, digits)
    augment_on: AugmentOn = "loader"
    num_workers: int = 2  # loader processes per training process (capped at the available cores)
    pin_memory: bool = True  # only takes effect on CUDA
    persistent_workers: bool = True
    prefetch_factor: int = 2


@dataclass
class ViewsConfig:
    """The distribution-aware multi-view pipeline (reference.md section 1)."""

    num_views: int = 4  # views per training image; all of them feed the classification loss
    presets: list[Preset] = field(default_factory=lambda: ["cifar_autoaugment_cutout"])  # per view, last repeats
    sizes: list[int] = field(default_factory=lambda: [32])  # output side per view, last repeats; 0: the model's
    contrastive_mode: ContrastiveMode = "distribution_aware"
    contrastive_views: list[int] = field(default_factory=lambda: [2, 3, 4])  # many / medium / few
    test_size: int = 32  # side of the evaluation crop (0: the model's input size)
    test_resize: int = 0  # shorter side before the centre crop (0: test_size, so the whole image is seen)
    normalization: Normalization = "cifar"  # model: the pretrained backbone's own mean and std
    randaugment_n: int = 2
    randaugment_m: int = 10
    randaugment_bins: int = 11  # magnitude bins; 11 puts m on timm's 0..10 scale (m10 = strongest), as GPaCo
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
    finetune: str = field(default="full", metadata={"pattern": FINETUNE_PATTERN})  # full | bitfit | lora:R
    lora_alpha: float = 0.0  # LoRA scaling numerator (0: equal to the rank R, a scaling of 1)
    zero_shot_head: bool = False  # open_clip: initialise the cosine classifier from the class names' text
    projection_hidden: int = 64  # 0: a single linear projection
    projection_dim: int = 32  # 0: no projection head (objectives without a contrastive term)
    projection_bn: bool = False
    classifier: Classifier = "linear"
    cosine_scale: float = 16.0  # logit scale of the cosine classifier
    trainable: list[str] = field(default_factory=list)  # parameter-name prefixes to train; empty: all
    sync_bn: bool = False


@dataclass
class LossConfig:
    """Objective: classification loss plus an optional contrastive term (Eq. 10), or GPaCo."""

    objective: Objective = "bs+acl"
    alpha: float = 0.1  # weight of the contrastive term
    temperature: float = 0.05
    use_centers: bool = True  # ACL: class centres as extra positives and negatives
    center_momentum: float = 0.9  # ACL: EMA momentum of the class centres (not given by the paper)
    negative_weighting: NegativeWeighting = "inverse_frequency"  # ACL
    logit_adjust_tau: float = 1.0  # objective "la": logits + tau * log(prior)
    cls_weight: float = 1.0  # weight of the classification term (BCL's recipe weights it 2.0)
    # LDAM-DRW (Cao et al. 2019): margins proportional to n_j^(-1/4), the largest ldam_max_margin, logit scale s
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0
    drw_start_epoch: int = 0  # deferred re-weighting from this epoch (0: 80% of optim.epochs, 160 of 200)
    drw_beta: float = 0.9999  # effective-number class weights (1 - beta) / (1 - beta^n_j)
    # GPaCo (Cui et al. 2023): weights of the sample positives, of the own-centre positive, and of the sample
    # terms in the denominator
    # Defaults: the authors' CIFAR-100-LT scripts (Parametric-Contrastive-Learning, PaCo/LT/sh/CIFAR100_train_imb0.01.sh
    # --alpha 0.01 --beta 1.0 --gamma 1.0; GPaCo/LT/sh/CIFAR/CIFAR100_train.sh also uses alpha 0.01)
    gpaco_alpha: float = 0.01
    gpaco_beta: float = 1.0
    gpaco_gamma: float = 1.0


@dataclass
class OptimConfig:
    """SGD with linear warm-up, then step or cosine decay (per epoch fraction)."""

    epochs: int = 200
    lr: float = 0.07
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    warmup_epochs: int = 10
    schedule: Schedule = "step"
    milestones: list[int] = field(default_factory=lambda: [160, 180])
    gamma: float = 0.1


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
    eval_every: int = 10  # epochs between evaluations (the last epoch is always evaluated)
    max_steps_per_epoch: int = 0  # 0: whole epochs; >0 cuts each epoch (smoke tests)
    checkpoint_every_steps: int = 0  # also save checkpoint_last.pt every this many steps inside an epoch (0: off)
    # steps between reads of the device-side loss statistics and non-finite flag (also read at every checkpoint
    # and at the end of every epoch); a read makes the host wait for the device
    sync_every: int = 50
    monitor_conflicts: bool = False  # record SCL's per-class gradient-conflict ratio (Fig. 4a)
    tensorboard: bool = True
    progress: bool = True  # a progress bar on a terminal; one line per epoch otherwise


@dataclass
class Config:
    """The whole definition of a run."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
