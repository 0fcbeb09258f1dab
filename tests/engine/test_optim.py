"""Fine-tuning's optimisation, piece by piece, against float64 references written here: the parameter groups and
their weight decay, AdamW's step, per-group learning rates through warm-up, gradient accumulation, clipping (also
after fp16 unscaling) and the moving average of the weights.

The training step is the engine's own (:func:`ltcl.engine.loop.training_step`) on a ResNet-8 in float64, kept in
eval mode: BatchNorm then normalises with its running statistics, so the loss is a per-image mean and a batch split
in micro-batches must give the whole batch's gradient exactly (in training mode it would not: see the docstring
of ``training_step``).
"""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltcl.config import Config, ConfigError, from_dict, to_dict, validate
from ltcl.data.views import MultiViewBatch
from ltcl.engine.distributed import DistributedContext
from ltcl.engine.ema import ModelEma, with_averages
from ltcl.engine.loop import MultiViewForward, micro_batches, training_step
from ltcl.engine.optim import build_optimizer, no_weight_decay_names, parameter_groups, set_learning_rates
from ltcl.engine.state import EpochProgress, NonFiniteFlag, TrainState
from ltcl.methods import build_objective
from ltcl.models import build_network
from ltcl.schedule import learning_rate
from tests.models.tiny import TINY_CLIP_KWARGS, TINY_VIT

COUNTS = [12, 6, 3]  # three classes, long-tailed


def config(**optim) -> Config:
    cfg = from_dict(to_dict(Config()))
    cfg.model = replace(cfg.model, backbone="resnet8", projection_dim=0)
    cfg.loss = replace(cfg.loss, objective="bs")
    cfg.views = replace(cfg.views, num_views=1, sizes=[8], presets=["none"], test_size=8)
    cfg.optim = replace(cfg.optim, warmup_epochs=0, schedule="cosine", epochs=2, lr=0.1, **optim)
    cfg.train = replace(cfg.train, channels_last=False, amp="none")
    cfg.data = replace(cfg.data, batch_size=8)
    return cfg


def state_for(cfg: Config, scaler=None) -> TrainState:
    """The engine's state around a float64 ResNet-8 in eval mode (per-image BatchNorm: see the module docstring)."""
    torch.manual_seed(0)
    model = build_network(cfg.model, len(COUNTS)).double().eval()
    objective = build_objective(cfg, COUNTS, feature_dim=model.feature_dim)
    optimizer, groups = build_optimizer(cfg.optim, model)
    ctx = DistributedContext(0, 1, 0, torch.device("cpu"))
    progress = EpochProgress.empty(objective.stat_names, len(COUNTS), ctx.device)
    state = TrainState(cfg, ctx, model, MultiViewForward(model), objective, optimizer, scaler, progress, "none", 4)
    state.nonfinite = NonFiniteFlag.create(1 + len(objective.stat_names), ctx.device)
    state.trainable = [p for g in optimizer.param_groups for p in g["params"]]
    state.optimizer_groups = groups
    if cfg.train.ema_decay > 0:
        state.ema = ModelEma(model, cfg.train.ema_decay)
    return state


def a_batch(b: int = 8, seed: int = 1) -> tuple[MultiViewBatch, torch.Tensor, torch.Tensor]:
    """One view of ``b`` 8x8 images: the batch, its images (b, 3, 8, 8) float64 and labels (b,)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, 8, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, len(COUNTS), (b,), generator=g)
    return MultiViewBatch([images], [[0]], labels, torch.ones(1, b, dtype=torch.bool)), images, labels


def reference_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Balanced Softmax in float64, written out: the mean over images of the cross-entropy of ``logits + log N_j``
    against the target ``(1 - eps) one_hot + eps / C``."""
    adjusted = model(images, with_projection=False).logits + torch.tensor(COUNTS, dtype=torch.float64).log()
    target = (1 - eps) * F.one_hot(labels, len(COUNTS)).double() + eps / len(COUNTS)
    return -(target * adjusted.log_softmax(1)).sum(1).mean()


def reference_gradient(state: TrainState, images, labels, eps: float = 0.0) -> list[torch.Tensor]:
    model = state.model
    loss = reference_loss(model, images, labels, eps)
    return list(torch.autograd.grad(loss, state.trainable))


# --------------------------------------------------------------------------------------------------------------
# Groups and weight decay


def test_sgd_keeps_one_group_that_decays_everything_by_default():
    cfg = config()
    model = build_network(cfg.model, len(COUNTS))
    groups, specs = parameter_groups(cfg.optim, model)
    # The layout of the checkpoints written before groups existed: one group, every parameter, in model order.
    assert len(groups) == 1 and groups[0]["weight_decay"] == cfg.optim.weight_decay
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in model.parameters()]


def test_adamw_exempts_norms_biases_and_the_vit_embeddings():
    cfg = config(name="adamw")
    cfg.model = replace(cfg.model, **TINY_VIT)
    model = build_network(cfg.model, len(COUNTS))
    groups, specs = parameter_groups(cfg.optim, model)
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    # timm's rule, restated: ndim <= 1, or a name the ViT's no_weight_decay() lists
    want = {n for n, p in model.named_parameters() if p.ndim <= 1} | {"backbone.pos_embed", "backbone.cls_token"}
    assert exempt == want and decayed == {n for n, _ in model.named_parameters()} - want
    assert "backbone.blocks.0.attn.qkv.weight" in decayed and "backbone.pos_embed" in exempt


def test_the_open_clip_embeddings_are_exempt_although_one_is_a_matrix():
    pytest.importorskip("open_clip")
    cfg = config(name="adamw")
    cfg.model = replace(cfg.model, backbone="open_clip/ViT-B-32", backbone_kwargs=TINY_CLIP_KWARGS)
    model = build_network(cfg.model, len(COUNTS))
    listed = no_weight_decay_names(model)
    assert listed == {"backbone.positional_embedding", "backbone.class_embedding"}
    assert model.get_parameter("backbone.positional_embedding").ndim == 2  # only its name exempts it


@pytest.mark.parametrize("name, weight_decay_on, groups", [("sgd", "weights_only", 2), ("adamw", "all", 1)])
def test_weight_decay_on_overrides_the_optimiser_default(name, weight_decay_on, groups):
    cfg = config(name=name, weight_decay_on=weight_decay_on)
    got, _ = parameter_groups(cfg.optim, build_network(cfg.model, len(COUNTS)))
    assert len(got) == groups


def test_adamw_steps_like_decoupled_weight_decay_written_out():
    cfg = config(name="adamw", weight_decay=0.1, betas=[0.8, 0.9], eps=1e-6, backbone_lr_scale=0.5)
    state = state_for(cfg)
    _, images, labels = a_batch()
    before = [p.detach().clone() for p in state.trainable]
    m = [torch.zeros_like(p) for p in before]
    v = [torch.zeros_like(p) for p in before]
    params = [p.clone() for p in before]
    rules = [(g["lr_scale"], g["weight_decay"]) for g in state.optimizer.param_groups for _ in g["params"]]
    for t in (1, 2):  # two steps on the same batch, float64 throughout
        batch, _, _ = a_batch()
        grads = reference_gradient(state, images, labels)
        training_step(state, batch)
        state.global_step += 1  # what the epoch loop does after each step
        lr = learning_rate(cfg.optim, t - 1, state.steps_per_epoch)
        for i, (g, (scale, wd)) in enumerate(zip(grads, rules)):
            rate = lr * scale
            params[i] = params[i] * (1 - rate * wd)  # decoupled: the decay never enters m or v
            m[i] = 0.8 * m[i] + 0.2 * g
            v[i] = 0.9 * v[i] + 0.1 * g * g
            m_hat, v_hat = m[i] / (1 - 0.8**t), v[i] / (1 - 0.9**t)
            params[i] = params[i] - rate * m_hat / (v_hat.sqrt() + 1e-6)
        for p, want in zip(state.trainable, params):
            torch.testing.assert_close(p.detach(), want, rtol=1e-10, atol=1e-12)
    # The exempt groups really had no decay, the backbone really half the rate.
    assert {(s.part, s.decay) for s in state.optimizer_groups} == {(a, d) for a in ("backbone", "head") for d in (0, 1)}


def test_warm_up_and_decay_scale_every_group():
    cfg = config(backbone_lr_scale=0.25)
    cfg.optim = replace(cfg.optim, warmup_epochs=1)
    state = state_for(cfg)
    for step in (0, 2, 5):
        lr = learning_rate(cfg.optim, step, 4)
        set_learning_rates(state.optimizer, lr)
        by_part = {s.part: g["lr"] for s, g in zip(state.optimizer_groups, state.optimizer.param_groups)}
        assert by_part == {"backbone": pytest.approx(0.25 * lr), "head": pytest.approx(lr)}
    # a group restored from a checkpoint written before groups had scales keeps the schedule's rate
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    assert "lr_scale" not in optimizer.param_groups[0]
    set_learning_rates(optimizer, 0.3)
    assert optimizer.param_groups[0]["lr"] == 0.3


# --------------------------------------------------------------------------------------------------------------
# Accumulation and clipping


def test_micro_batches_keep_every_view_of_their_images():
    b, views = 6, [[0, 2], [1]]
    labels = torch.arange(b)
    big = torch.arange(2 * b).double()[:, None].expand(2 * b, 3)  # row j*b + i: view j of image i
    small = 100 + torch.arange(b).double()[:, None]
    batch = MultiViewBatch([big, small], views, labels, torch.arange(3 * b).view(3, b) % 2 == 0)
    parts = micro_batches(batch, 3)
    assert [p.labels.tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert parts[1].groups[0][:, 0].tolist() == [2, 3, b + 2, b + 3] and parts[1].groups[1][:, 0].tolist() == [102, 103]
    assert torch.equal(torch.cat([p.contrastive_mask for p in parts], 1), batch.contrastive_mask)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_accumulated_micro_batches_give_the_whole_batch_gradient(eps):
    cfg = config(accumulate_steps=4)
    cfg.loss = replace(cfg.loss, label_smoothing=eps)
    state = state_for(cfg)
    batch, images, labels = a_batch()
    want = reference_gradient(state, images, labels, eps)
    training_step(state, batch)
    for p, g in zip(state.trainable, want):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-13)
    # ... and the epoch's statistics count the whole batch: its mean loss, once, over its 8 images
    with torch.no_grad():
        assert state.progress.sums[-1] == 8
    assert int(state.nonfinite.step) == 1


def test_accumulation_must_divide_the_batch():
    cfg = config(accumulate_steps=3)
    with pytest.raises(ConfigError, match="optim.accumulate_steps 3 must divide data.batch_size 8"):
        validate(cfg)


def reference_clipped(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    norm = torch.cat([g.flatten() for g in grads]).norm()
    return [g * min(1.0, max_norm / (float(norm) + 1e-6)) for g in grads]


@pytest.mark.parametrize("fp16_scaler", [False, True])
def test_clipping_bounds_the_whole_gradient_after_unscaling(fp16_scaler):
    cfg = config(clip_grad_norm=0.01, accumulate_steps=2)
    # A scaler with a huge scale: clipping before unscaling would clip the scaled gradient to 0.01 and leave
    # 0.01 / 2**16 after it.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16) if fp16_scaler else None
    state = state_for(cfg, scaler)
    batch, images, labels = a_batch()
    want = reference_clipped(reference_gradient(state, images, labels), 0.01)
    training_step(state, batch)
    for p, g in zip(state.trainable, want):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-14)
    assert torch.cat([p.grad.flatten() for p in state.trainable]).norm() == pytest.approx(0.01, rel=1e-6)


# --------------------------------------------------------------------------------------------------------------
# The moving average


def test_the_moving_average_follows_every_step_as_a_float64_loop():
    cfg = config(accumulate_steps=2)
    cfg.train = replace(cfg.train, ema_decay=0.7)
    state = state_for(cfg)
    names = [n for n, p in state.model.named_parameters() if p.requires_grad]
    average = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    for step in range(3):
        batch, _, _ = a_batch(seed=step)
        training_step(state, batch)
        state.global_step += 1
        for n, p in state.model.named_parameters():
            average[n] = 0.7 * average[n] + 0.3 * p.detach()
    assert state.ema.names == names
    for n in names:
        torch.testing.assert_close(state.ema.averages[n], average[n], rtol=1e-12, atol=1e-14)
    trained = {n: t.clone() for n, t in state.model.state_dict().items()}
    with state.ema.applied(state.model):
        inside = {n: t.clone() for n, t in state.model.state_dict().items()}
    for n, t in state.model.state_dict().items():
        assert torch.equal(t, trained[n]), n  # the trained weights come back exactly
        # inside: the averages for parameters, the live model's own buffers
        assert torch.equal(inside[n], state.ema.averages[n] if n in average else trained[n]), n
    # what ltcl eval loads from a checkpoint is the same model
    saved = with_averages(trained, state.ema.state_dict())
    assert all(torch.equal(saved[n], inside[n]) for n in inside)


def test_a_moving_average_restores_into_a_fresh_one_and_frozen_parameters_are_not_stored():
    cfg = config()
    model = build_network(cfg.model, len(COUNTS))
    model.backbone.requires_grad_(False)
    ema = ModelEma(model, 0.5)
    assert ema.names and all(not n.startswith("backbone.") for n in ema.names)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    other = ModelEma(model, 0.5)
    other.load_state_dict(ema.state_dict())
    for n in ema.names:
        assert torch.equal(other.averages[n], ema.averages[n])
    with pytest.raises(ValueError, match="lacks"):
        other.load_state_dict({"decay": 0.5, "averages": {}})


@pytest.mark.parametrize(
    "key, value, phrase",
    [
        ("train.ema_decay", 1.0, "'train.ema_decay' expects a number in [0, 1)"),
        ("loss.label_smoothing", -0.1, "'loss.label_smoothing' expects a number in [0, 1)"),
        ("optim.clip_grad_norm", -1.0, "'optim.clip_grad_norm' expects a finite number >= 0"),
        ("optim.backbone_lr_scale", 0.0, "'optim.backbone_lr_scale' expects a positive finite number"),
        ("optim.accumulate_steps", 0, "'optim.accumulate_steps' expects an integer >= 1"),
        ("optim.betas", [0.9], "'optim.betas' expects two numbers in [0, 1)"),
    ],
)
def test_bad_values_are_one_sentence(key, value, phrase):
    values = to_dict(Config())
    section, name = key.split(".")
    values[section][name] = value
    with pytest.raises(ConfigError) as err:
        validate(from_dict(values))
    assert phrase in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("clip", [0.0, 0.01])
def test_fused_adamw_under_a_gradient_scaler_steps_as_without_it(clip):
    # The fused kernel unscales in place when nothing was unscaled before it, and must not unscale again after
    # clipping's unscale_: either mistake moves the weights by a factor of the scale.
    weights = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**16)):
        state = state_for(config(name="adamw", eps=1e-3, clip_grad_norm=clip, accumulate_steps=2), scaler)
        start = [p.detach().clone() for p in state.trainable]
        for seed in (1, 2):
            batch, _, _ = a_batch(seed=seed)
            training_step(state, batch)
            state.global_step += 1
        weights.append([p.detach().clone() for p in state.trainable])
    assert all(not torch.equal(a, b) for a, b in zip(start, weights[1]))  # every parameter moved
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
