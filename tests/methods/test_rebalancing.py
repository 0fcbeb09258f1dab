"""The re-balancing losses: ``focal``, ``cb_ce``, ``cb_sigmoid``, ``cb_focal`` (Lin et al. 2017; Cui et al. 2019),
``lade`` and ``pc_softmax`` (Hong et al. 2021).

Each loss against a float64 reference written from the paper's equations as slow loops (loss and logit gradient,
on label patterns with a class alone in the batch, absent classes and a single class); the class-balanced loss's
normalisation by the number of rows (the authors' code); LADE under two gloo processes against one; what ``bind``
writes into the classifier (the sigmoid forms' bias, LADE's and PC-softmax's evaluation bias); the rival configs;
and each method trained on the digits, one of them interrupted and resumed to the same weights.
"""

import math
import signal

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from ltcl.config import load_config
from ltcl.engine.interrupts import TEST_SIGNAL_AT_STEP, Interrupted
from ltcl.engine.resume import plan_resume
from ltcl.engine.trainer import train
from ltcl.losses import ClassBalancedLoss, LADELoss, class_balanced_loss, lade_loss
from ltcl.methods import OBJECTIVES, StepRecord, build_objective, resolve_config
from ltcl.models import LinearClassifier
from tests.engine.test_host_syncs import CountSyncs
from tests.engine.test_training import DIGITS, REPO, TINY, assert_same_checkpoints
from tests.methods import lade_distributed
from tests.methods.lade_distributed import PER_RANK, WORLD

COUNTS = (50, 20, 8, 3)
C = len(COUNTS)


def label_patterns(rows=12):
    g = torch.Generator().manual_seed(5)
    return {
        "random": torch.randint(0, C, (rows,), generator=g),
        "alone_and_absent": torch.tensor([0] * (rows - 1) + [3]),  # class 3 alone, classes 1-2 absent
        "one_class": torch.full((rows,), 2),
    }


def random_logits(rows=12, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, C, generator=g, dtype=torch.float64) * scale).requires_grad_(True)


# ---------------------------------------------------------------------------------------------------------------
# References, from the papers' equations


def effective_number_reference(counts, beta):
    """Cui et al. Eq. 3-4: E_n = (1 - beta^n) / (1 - beta), weight 1 / E_n, normalised to sum to C (their code)."""
    inverse = [(1 - beta) / (1 - beta**n) if beta > 0 else 1.0 for n in counts]
    return [w / sum(inverse) * len(counts) for w in inverse]


def focal_reference(logits, labels, gamma, form, weights):
    """Lin et al. Eq. 5 per class (sigmoid) or on the softmax, weighted per class, the sum over rows / N."""
    total = logits.new_zeros(())
    for i in range(logits.shape[0]):
        y = int(labels[i])
        if form == "softmax":
            p_t = torch.exp(logits[i, y]) / torch.exp(logits[i]).sum()
            term = -((1 - p_t) ** gamma) * torch.log(p_t)
        else:
            term = logits.new_zeros(())
            for j in range(logits.shape[1]):
                p = 1 / (1 + torch.exp(-logits[i, j]))
                p_t = p if j == y else 1 - p
                term = term - (1 - p_t) ** gamma * torch.log(p_t)
        total = total + weights[y] * term
    return total / logits.shape[0]


def lade_reference(logits, labels, counts, alpha, lam):
    """Hong et al.: LADE-CE (Eq. 13) + alpha * the regularised DV estimate (Eqs. 14-16), weights p_s(y)."""
    n, classes = logits.shape
    prior = [c / sum(counts) for c in counts]
    ce = logits.new_zeros(())
    for i in range(n):
        y = int(labels[i])
        norm = sum(prior[c] * torch.exp(logits[i, c]) for c in range(classes))
        ce = ce - torch.log(prior[y] * torch.exp(logits[i, y]) / norm)
    regularizer = logits.new_zeros(())
    for c in range(classes):
        rows = [i for i in range(n) if int(labels[i]) == c]
        first = sum(logits[i, c] for i in rows) / len(rows) if rows else 0.0
        second = torch.log(sum(torch.exp(logits[i, c]) * (1 / classes) / prior[c] for i in range(n)) / n)
        regularizer = regularizer - prior[c] * (first - second - lam * second**2)
    return ce / n + alpha * regularizer


def loss_and_grad(fn, logits):
    loss = fn(logits)
    return loss.detach(), torch.autograd.grad(loss, logits)[0]


# ---------------------------------------------------------------------------------------------------------------
# Focal and class-balanced losses


@pytest.mark.parametrize("form", ["softmax", "sigmoid"])
@pytest.mark.parametrize(("beta", "gamma"), [(0.0, 1.0), (0.9999, 0.0), (0.99, 0.5), (0.9, 2.0)])
def test_focal_and_class_balanced_follow_the_reference(form, beta, gamma):
    weights = effective_number_reference(COUNTS, beta)
    module = ClassBalancedLoss(COUNTS, beta=beta, gamma=gamma, form=form)
    torch.testing.assert_close(module.class_weights, torch.tensor(weights, dtype=torch.float64), rtol=1e-12, atol=0)
    for name, labels in label_patterns().items():
        logits = random_logits()
        want = loss_and_grad(lambda x, y=labels: focal_reference(x, y, gamma, form, weights), logits)
        got = loss_and_grad(lambda x, y=labels: module(x, y), logits)
        functional = class_balanced_loss(logits, labels, COUNTS, beta=beta, gamma=gamma, form=form)
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-14, msg=name)
        torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-14, msg=name)
        torch.testing.assert_close(functional.detach(), want[0], rtol=1e-12, atol=1e-14, msg=name)


def test_class_balanced_divides_by_the_rows_not_by_the_weights():
    """The authors' tf.losses.softmax_cross_entropy(weights=...) sums w_i CE_i and divides by the rows with a non-zero
    weight (all of them); F.cross_entropy(weight=w) would divide by sum_i w_i."""
    labels = torch.tensor([0, 0, 1, 3, 3, 3])
    logits = random_logits(6).detach()
    module = ClassBalancedLoss(COUNTS, beta=0.999, form="softmax")
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    w = module.class_weights[labels]
    torch.testing.assert_close(module(logits, labels), (w * ce).sum() / 6, rtol=1e-14, atol=0)
    assert not torch.isclose(module(logits, labels), (w * ce).sum() / w.sum())


@pytest.mark.parametrize("form", ["softmax", "sigmoid"])
def test_focal_stays_finite_on_confident_rows(form):
    """log p_t and log(1 - p_t) never pass through 1 - p_t: gamma < 1 on rows with p_t = 1 in float32."""
    logits = torch.tensor([[120.0, -120.0, 0.0, -95.0], [-120.0, 120.0, 3.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    loss = ClassBalancedLoss(COUNTS, beta=0.99, gamma=0.5, form=form)(logits, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    wide = logits.detach().double().requires_grad_(True)
    loss64 = ClassBalancedLoss(COUNTS, beta=0.99, gamma=0.5, form=form)(wide, labels)
    torch.testing.assert_close(loss.double(), loss64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), torch.autograd.grad(loss64, wide)[0], rtol=1e-5, atol=1e-6)


def test_class_balanced_refuses_bad_settings():
    with pytest.raises(ValueError, match="form must be one of"):
        ClassBalancedLoss(COUNTS, form="tanh")
    with pytest.raises(ValueError, match="gamma must be"):
        ClassBalancedLoss(COUNTS, gamma=-1.0)
    with pytest.raises(ValueError, match="beta must be in"):
        ClassBalancedLoss(COUNTS, beta=1.0)
    with pytest.raises(ValueError, match="labels must be < the number of classes 4"):
        ClassBalancedLoss(COUNTS)(torch.zeros(2, 4), torch.tensor([0, 4]))


# ---------------------------------------------------------------------------------------------------------------
# LADE


@pytest.mark.parametrize(("alpha", "lam"), [(0.1, 0.1), (0.05, 0.5), (1.0, 0.0)])
def test_lade_follows_the_reference(alpha, lam):
    module = LADELoss(COUNTS, alpha=alpha, remine_lambda=lam)
    for name, labels in label_patterns().items():
        logits = random_logits(seed=1)
        want = loss_and_grad(lambda x, y=labels: lade_reference(x, y, COUNTS, alpha, lam), logits)
        got = loss_and_grad(lambda x, y=labels: module(x, y), logits)
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-14, msg=name)
        torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-14, msg=name)
        functional = lade_loss(logits, labels, COUNTS, alpha=alpha, remine_lambda=lam)
        torch.testing.assert_close(functional.detach(), want[0], rtol=1e-12, atol=1e-14, msg=name)


def test_lade_on_two_processes_equals_one_process_on_the_global_batch(tmp_path):
    """The regulariser's batch statistics are the global batch's: after DDP's average the parameters get the
    gradient of one process on the whole batch (the cross-entropy part is a per-row mean, as DDP expects)."""
    g = torch.Generator().manual_seed(9)
    x = [torch.randn(WORLD * PER_RANK, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    batches = list(zip(x, label_patterns(WORLD * PER_RANK).values()))
    mp.spawn(lade_distributed.worker, args=(str(tmp_path / "rendezvous"), str(tmp_path), batches), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    model, loss_fn = lade_distributed.make_model(), lade_distributed.make_loss(gather=False)
    for step, (x, y) in enumerate(batches):
        model.zero_grad()
        loss_fn(model(x), y).backward()
        for key, p in model.named_parameters():
            for result in ranks:
                torch.testing.assert_close(result[step][key], p.grad, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------------
# The methods: what bind writes into the classifier, statistics, header


def built(name, **section):
    cfg = load_config(DIGITS, [f"loss.objective={name}", *[f"loss.{name}.{k}={v}" for k, v in section.items()]])
    return build_objective(resolve_config(cfg), COUNTS, feature_dim=6)


def test_bind_sets_the_sigmoid_bias_and_the_evaluation_priors():
    features = torch.randn(5, 6)
    for name, section in [("cb_focal", {}), ("cb_sigmoid", {}), ("focal", {}), ("focal", {"form": "softmax"}),
                          ("cb_ce", {}), ("lade", {}), ("pc_softmax", {})]:  # fmt: skip
        objective, head = built(name, **section), LinearClassifier(6, C)
        before = head.bias.detach().clone()
        objective.bind(type("Net", (), {"classifier": head})())
        sigmoid = name in ("cb_focal", "cb_sigmoid") or (name == "focal" and not section)
        want_bias = torch.full((C,), -math.log(C - 1)) if sigmoid else before
        torch.testing.assert_close(head.bias.detach(), want_bias, rtol=0, atol=1e-7)
        prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
        want_eval = {"lade": torch.full((C,), -math.log(C)), "pc_softmax": -prior.log()}.get(name, torch.zeros(C))
        torch.testing.assert_close(head.eval_bias, want_eval.float(), rtol=0, atol=1e-7)
        trained = head.train()(features)
        torch.testing.assert_close(head.eval()(features), trained + want_eval.float(), rtol=0, atol=1e-6)
    # LADE's test rule is the uniform test prior: the same predictions as the raw logits (not -log p_s)
    head = LinearClassifier(6, C)
    built("lade").bind(type("Net", (), {"classifier": head})())
    assert torch.equal(head.eval()(features).argmax(1), head.train()(features).argmax(1))


STATS = {"focal": ("focal_factor",), "cb_ce": ("cb_weight",), "cb_sigmoid": ("cb_weight",),
         "cb_focal": ("cb_weight", "focal_factor"), "lade": ("lade_ce", "lade_reg"), "pc_softmax": ()}  # fmt: skip


def test_methods_report_their_statistics_and_describe_themselves():
    logits, labels = random_logits(8).detach().float(), label_patterns(8)["random"]
    for name, stats in STATS.items():
        objective = built(name).classification
        step = StepRecord(logits, labels, None, torch.zeros(8, dtype=torch.bool), 1, 8, nn.Identity())
        out = objective(step)
        assert objective.stat_names == stats and tuple(out.parts) == stats and out.loss.shape == ()
        assert OBJECTIVES.get(name).role == "classification"
    weights = effective_number_reference(COUNTS, 0.9999)
    assert built("cb_focal").classification.describe() == (
        f"cb_focal (beta 0.9999, gamma 1.0, sigmoid form, class weights {min(weights):.3g}-{max(weights):.3g})"
    )
    assert built("lade", alpha=0.05).classification.describe().startswith("lade (alpha 0.05, remine_lambda 0.1;")
    for name in ("focal", "cb_ce", "cb_focal", "lade"):  # classification losses: they join a contrastive term
        joined = build_objective(resolve_config(load_config(DIGITS, [f"loss.objective={name}+acl"])), COUNTS,
                                 feature_dim=6)  # fmt: skip
        assert joined.stat_names[:2] == ("loss_cls", "loss_con") and joined.stat_names[2:] == STATS[name]
    # the weights' mean on the batch is what cb_weight reports
    cb = ClassBalancedLoss(COUNTS, beta=0.9999)
    torch.testing.assert_close(cb.terms(logits, labels)[1], cb.class_weights[labels].float().mean())


def test_the_losses_never_wait_for_the_host():
    """No op whose result the host must read (tests/engine/test_host_syncs.py) in the forward and backward pass."""
    labels = label_patterns()["alone_and_absent"]
    for name in STATS:
        objective, logits = built(name).classification, random_logits().detach().float().requires_grad_(True)
        step = StepRecord(logits, labels, None, torch.zeros(12, dtype=torch.bool), 1, 12, nn.Identity())
        with CountSyncs() as mode:
            objective(step).loss.backward()
        assert mode.calls == [], (name, mode.calls)


def test_the_evaluation_priors_need_a_classifier_with_an_eval_bias():
    for name in ("lade", "pc_softmax"):
        with pytest.raises(ValueError, match="eval_bias"):
            built(name).bind(type("Net", (), {"classifier": nn.Linear(6, C)})())


# ---------------------------------------------------------------------------------------------------------------
# Rival configs


@pytest.mark.parametrize("method", ["focal", "cb_ce", "cb_focal", "lade"])
def test_rival_configs_parse_and_give_every_value_a_source(method):
    for dataset in ("cifar10_lt_if100", "cifar100_lt_if100", "imagenet_lt_x50"):
        path = REPO / "configs" / "rivals" / f"{dataset}_{method}.yaml"
        cfg = resolve_config(load_config(path))
        assert cfg.loss.objective == method and cfg.views.num_views == 1 and cfg.model.classifier == "linear"
        lines = path.read_text().splitlines()
        for before, line in zip(lines, lines[1:]):  # every value has its source, on its line or just above
            if ":" in line and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
                assert "#" in line or before.lstrip().startswith("#"), (path.name, line)
    lade = resolve_config(load_config(REPO / "configs" / "rivals" / "imagenet_lt_x50_lade.yaml"))
    assert lade.loss.sections["lade"] == {"alpha": 0.05, "remine_lambda": 0.5} and lade.optim.epochs == 180


# ---------------------------------------------------------------------------------------------------------------
# Training on the digits, and a resume


def digits_run(name, out, extra=()):
    overrides = [*TINY, f"loss.objective={name}", "data.batch_size=8", "optim.epochs=2",
                 "train.max_steps_per_epoch=2", "train.deterministic=true", "train.amp=none", "train.tensorboard=false",
                 f"train.output_dir={out}", *extra]  # fmt: skip
    return load_config(DIGITS, overrides)


@pytest.mark.parametrize("name", ["focal", "cb_ce", "cb_focal", "lade"])
def test_trains_on_the_digits(tmp_path, monkeypatch, name):
    result = train(digits_run(name, tmp_path / "straight"))
    history = result.history
    assert [h["epoch"] for h in history] == [1, 2]
    for stat in STATS[name]:
        assert all(math.isfinite(h[stat]) for h in history), stat
    saved = torch.load(result.run_dir / "checkpoint_last.pt", weights_only=True)
    if name == "lade":  # the checkpoint evaluates with the test prior
        assert torch.equal(saved["model"]["classifier.eval_bias"], torch.full((10,), -math.log(10)))
    if name != "cb_focal":
        return
    # cb_focal: stopped by SIGTERM after step 3 (in epoch 2) and resumed, it ends with the straight run's weights
    # (bind starts the bias at -log(C - 1), and the resumed run loads its saved bias over it)
    monkeypatch.setenv(TEST_SIGNAL_AT_STEP, "3:TERM")
    with pytest.raises(Interrupted) as stopped:
        train(digits_run(name, tmp_path / "stopped"))
    assert stopped.value.signum == signal.SIGTERM
    monkeypatch.delenv(TEST_SIGNAL_AT_STEP)
    plan = plan_resume(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt")
    train(plan.cfg, resume=plan)
    got = torch.load(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt", weights_only=True)
    assert_same_checkpoints(saved, got)
