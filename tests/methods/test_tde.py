"""The causal model with TDE (Tang et al., NeurIPS 2020): the causal classifier's training logits, moving average
and counterfactual logits against float64 references written from the paper's equations (values and gradients),
the momentum schedule, the state a checkpoint carries, two processes against one, the config checks, the rival
configs, and a digits run stopped and resumed in-process to the same weights whose checkpoint predicts with TDE.

The authors' code (KaihuaTang/Long-Tailed-Recognition.pytorch 5c916d0, classification/models/
CausalNormClassifier.py and run_networks.py) was run outside the repository on the same inputs (the report gives
the largest differences)."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ltcl.config import ConfigError, OptimConfig, load_config
from ltcl.engine.interrupts import TEST_SIGNAL_AT_STEP, Interrupted
from ltcl.errors import UserError
from ltcl.losses.tde import epoch_momentum
from ltcl.methods import ObjectiveSetup, StepRecord, resolve_config
from ltcl.methods.tde import TDESection, TotalDirectEffect
from ltcl.models import CausalNormClassifier, build_network
from tests.engine.test_training import DIGITS, REPO, TINY, assert_same_checkpoints, ltcl, sets

N, FEAT, C = 6, 8, 4


def heads_of(v, k, d):
    return v[k * d : (k + 1) * d]


def training_reference(x, w, num_heads, tau, gamma):
    """Eq. 5, one row, class and head at a time: z_ij = (tau / K) sum_k <x_i^k / ||x_i^k||, w_j^k / (||w_j^k|| +
    gamma)>."""
    d = x.shape[1] // num_heads
    rows = []
    for i in range(x.shape[0]):
        row = []
        for j in range(w.shape[0]):
            z = x.sum() * 0.0
            for k in range(num_heads):
                xk, wk = heads_of(x[i], k, d), heads_of(w[j], k, d)
                z = z + (tau / num_heads) * torch.dot(xk / torch.sqrt(torch.dot(xk, xk)),
                                                      wk / (torch.sqrt(torch.dot(wk, wk)) + gamma))  # fmt: skip
            row.append(z)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def tde_reference(x, w, c, num_heads, tau, gamma, alpha):
    """Eq. 9: z_ij = (tau / K) sum_k <x^k/||x^k|| - alpha cos(x^k, c^k) c^k/||c^k||, w_j^k / (||w_j^k|| + gamma)>."""
    d = x.shape[1] // num_heads
    rows = []
    for i in range(x.shape[0]):
        row = []
        for j in range(w.shape[0]):
            z = x.sum() * 0.0
            for k in range(num_heads):
                xk, ck, wk = heads_of(x[i], k, d), heads_of(c, k, d), heads_of(w[j], k, d)
                nx, nc = torch.sqrt(torch.dot(xk, xk)), torch.sqrt(torch.dot(ck, ck))
                cos = torch.dot(xk, ck) / (nx * nc)
                z = z + (tau / num_heads) * torch.dot(xk / nx - alpha * cos * ck / nc,
                                                      wk / (torch.sqrt(torch.dot(wk, wk)) + gamma))  # fmt: skip
            row.append(z)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def cross_entropy_reference(z, y):
    terms = [torch.log(sum(torch.exp(z[i, j]) for j in range(z.shape[1]))) - z[i, y[i]] for i in range(len(y))]
    return sum(terms) / len(y)


def features(seed, rows=N):
    g = torch.Generator().manual_seed(seed)
    # ReLU-like features, every head of non-zero length (the reference divides by it)
    return (torch.relu(torch.randn(rows, FEAT, generator=g, dtype=torch.float64) + 0.2) + 0.01).requires_grad_()


def objective(**section):
    return TotalDirectEffect(ObjectiveSetup(class_counts=(40, 20, 10, 5), section=TDESection(**section)))


class Net(torch.nn.Module):
    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier


LABELS = {
    "random": torch.tensor([0, 2, 1, 3, 0, 2]),
    "a class alone": torch.tensor([0, 0, 0, 1, 1, 3]),
    "one class": torch.tensor([2, 2, 2, 2, 2, 2]),
}


@pytest.mark.parametrize("labels", list(LABELS))
@pytest.mark.parametrize("num_heads", [1, 2, 4])
def test_training_logits_loss_and_gradients_match_the_reference(labels, num_heads):
    y = LABELS[labels]
    tde = objective(num_heads=num_heads, tau=16.0, gamma=0.03125, alpha=1.5)
    head = CausalNormClassifier(FEAT, C).double()
    tde.bind(Net(head))
    assert head.heads == num_heads and float(head.alpha) == 1.5
    x = features(num_heads)
    head.train()
    z = head(x)
    step = StepRecord(z, y, None, torch.zeros(N, dtype=torch.bool), 1, N, None, features=x)
    out = tde(step)
    z_ref = training_reference(x, head.weight, num_heads, 16.0, 0.03125)
    want = cross_entropy_reference(z_ref, y)
    torch.testing.assert_close(z, z_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    for got, ref in zip(torch.autograd.grad(out.loss, [x, head.weight]), torch.autograd.grad(want, [x, head.weight])):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert set(out.parts) == {"tde_momentum", "tde_cos"} == set(tde.stat_names)


def test_the_moving_average_and_the_counterfactual_match_the_reference():
    head = CausalNormClassifier(FEAT, C, num_heads=2, alpha=1.5, momentum=0.9).double()
    batches = [features(s, rows=n) for s, n in ((10, 5), (11, 3), (12, 7))]
    head.train()
    average = torch.zeros(FEAT, dtype=torch.float64)
    for x in batches:
        head(x)
        rows = [x[i].detach() for i in range(x.shape[0])]
        average = 0.9 * average + sum(rows) / len(rows)  # c <- mu c + mean(x): not (1 - mu) mean
        torch.testing.assert_close(head.direction, average, rtol=1e-14, atol=1e-14)
    head.eval()
    x = features(20)
    with torch.no_grad():
        before = head.direction.clone()
    z = head(x)
    assert torch.equal(head.direction, before)  # evaluation leaves the average alone
    want = tde_reference(x, head.weight, average, 2, 16.0, 0.03125, 1.5)
    torch.testing.assert_close(z, want, rtol=1e-12, atol=1e-12)
    g = torch.randn(z.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(torch.autograd.grad((z * g).sum(), x)[0], torch.autograd.grad((want * g).sum(), x)[0],
                               rtol=1e-10, atol=1e-12)  # fmt: skip
    # alpha 0: the training logits; no direction yet (a fresh classifier): no subtraction instead of 0/0 = NaN
    head.configure(2, 16.0, 0.03125, 0.0, 0.9)
    torch.testing.assert_close(head(x), training_reference(x, head.weight, 2, 16.0, 0.03125))
    fresh = CausalNormClassifier(FEAT, C).double().eval()
    assert torch.isfinite(fresh(x)).all()


def test_the_momentum_follows_the_learning_rate_off_cifar():
    optim = OptimConfig(epochs=90, lr=0.2, warmup_epochs=0, schedule="cosine")
    tde = TotalDirectEffect(ObjectiveSetup(class_counts=(4, 2), section=TDESection(), epochs=90, optim=optim))
    head = CausalNormClassifier(FEAT, 2)
    tde.bind(Net(head))
    for epoch in (0, 60, 85, 89):
        tde.set_epoch(epoch)
        lr = 0.5 * 0.2 * (1 + math.cos(math.pi * epoch / 90))
        # run_networks.py lines 305-309: mu = 1 - (1 - 0.9) * min(50 lr, 1)
        assert float(head.momentum) == pytest.approx(1 - 0.1 * min(lr * 50, 1.0), abs=1e-12)
    assert float(head.momentum) > 0.99
    assert epoch_momentum(0.9, 0.001, 0.0) == 0.9  # CIFAR: fixed
    fixed = TotalDirectEffect(ObjectiveSetup(class_counts=(4, 2), section=TDESection(momentum_lr_scale=0.0),
                                             optim=optim))  # fmt: skip
    fixed.bind(Net(head))
    fixed.set_epoch(89)
    assert float(head.momentum) == pytest.approx(0.9, abs=1e-15)


def test_a_state_dict_carries_the_average_and_the_hyperparameters():
    head = CausalNormClassifier(FEAT, C, num_heads=4, tau=10.0, gamma=0.5, alpha=2.0).double()
    head.train()
    head(features(3))
    fresh = CausalNormClassifier(FEAT, C).double()  # the authors' defaults (2 heads, alpha 3), as `ltcl eval` builds it
    fresh.load_state_dict(head.state_dict())
    assert fresh.heads == 4 and float(fresh.alpha) == 2.0
    head.eval(), fresh.eval()
    x = features(4)
    torch.testing.assert_close(fresh(x), head(x), rtol=0, atol=0)


def test_the_config_checks():
    # the objective alone turns the linear classifier into the causal one; another classifier is refused
    assert resolve_config(load_config(DIGITS, ["loss.objective=tde"])).model.classifier == "causal"
    with pytest.raises(ConfigError, match="set model.classifier=causal, got cosine"):
        resolve_config(load_config(DIGITS, ["loss.objective=tde", "model.classifier=cosine"]))
    with pytest.raises(ConfigError, match="'loss.tde.num_heads' expects an integer >= 1"):
        resolve_config(load_config(DIGITS, ["loss.objective=tde", "model.classifier=causal", "loss.tde.num_heads=0"]))
    with pytest.raises(UserError, match="cannot be cut into 3 heads"):
        objective(num_heads=3).bind(Net(CausalNormClassifier(FEAT, C)))
    with pytest.raises(ConfigError, match="needs model.classifier=causal"):
        objective().bind(Net(torch.nn.Linear(FEAT, C)))


WORLD = 2


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        head = CausalNormClassifier(FEAT, C).double().train()
        for seed in (30, 31):
            x = features(seed, rows=8)
            head(x[:5] if rank == 0 else x[5:])  # unequal shares: 5 and 3 rows
        torch.save(head.direction, os.path.join(out_dir, f"direction{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_keep_the_average_of_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    one = CausalNormClassifier(FEAT, C).double().train()
    for seed in (30, 31):
        one(features(seed, rows=8))
    for rank in range(WORLD):
        torch.testing.assert_close(torch.load(tmp_path / f"direction{rank}.pt"), one.direction, rtol=1e-14, atol=1e-14)


def test_it_trains_resumes_to_the_same_weights_and_its_checkpoint_predicts_with_tde(tmp_path, monkeypatch):
    from ltcl.engine.inference import load_trained_model
    from ltcl.engine.resume import plan_resume
    from ltcl.engine.trainer import train

    common = [*TINY, "loss.objective=tde", "model.classifier=causal", "loss.tde.alpha=1.5", "views.num_views=1",
              "views.presets=[digits]", "views.sizes=[32]", "data.batch_size=16", "optim.epochs=2",
              "train.max_steps_per_epoch=2", "train.deterministic=true", "train.amp=none",
              "train.tensorboard=false"]  # fmt: skip
    train(load_config(DIGITS, [*common, f"train.output_dir={tmp_path / 'straight'}"]))
    monkeypatch.setenv(TEST_SIGNAL_AT_STEP, "3:TERM")
    with pytest.raises(Interrupted):
        train(load_config(DIGITS, [*common, f"train.output_dir={tmp_path / 'stopped'}"]))
    monkeypatch.delenv(TEST_SIGNAL_AT_STEP)
    stopped = tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt"
    plan = plan_resume(stopped)
    train(plan.cfg, resume=plan)
    want = torch.load(tmp_path / "straight" / "digits_lt" / "checkpoint_last.pt", weights_only=True)
    got = torch.load(stopped, weights_only=True)
    assert_same_checkpoints(want, got)
    assert float(want["model"]["classifier.alpha"]) == 1.5 and want["model"]["classifier.direction"].abs().sum() > 0
    # What `ltcl eval` and `ltcl predict` load: the backbone's features through the TDE rule, alpha 1.5.
    trained = load_trained_model(stopped, ["data.num_workers=0"], device="cpu")
    model = trained.model
    assert not model.training
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
        head = model.classifier
        want_logits = tde_reference(out.features.double(), head.weight.double(), head.direction.double(), 2, 16.0,
                                    0.03125, 1.5)  # fmt: skip
        plain = training_reference(out.features.double(), head.weight.double(), 2, 16.0, 0.03125)
    torch.testing.assert_close(out.logits.double(), want_logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(want_logits, plain)


SHARED_PROTOCOL = [  # configs/cifar10_lt_if100_acl.yaml -> TDE's CIFAR-10-LT row of the 20-epoch protocol
    "loss.objective=tde", "model.classifier=causal", "model.backbone=bbn_resnet32", "loss.tde.alpha=1.0",
    "loss.tde.momentum_lr_scale=0", "views.num_views=1", "views.presets=[cifar_autoaugment_cutout]",
    "optim.epochs=20", "optim.warmup_epochs=1", "optim.schedule=cosine",
]  # fmt: skip


@pytest.mark.parametrize("name", ["cifar10_lt_if100_tde", "cifar100_lt_if100_tde", "imagenet_lt_x50_tde"])
def test_the_rival_configs_resolve(name):
    cfg = resolve_config(load_config(DIGITS.replace("digits_lt.yaml", f"rivals/{name}.yaml")))
    assert cfg.loss.objective == "tde" and cfg.model.classifier == "causal" and cfg.views.num_views == 1
    section = cfg.loss.sections["tde"]
    assert section["num_heads"] == 2 and section["tau"] == 16.0 and section["gamma"] == 0.03125
    assert section["alpha"] == {"cifar10": 1.0, "cifar100": 1.5, "imagenet": 3.0}[name.split("_")[0]]
    assert (section["momentum_lr_scale"] == 0) == name.startswith("cifar")
    net = build_network(cfg.model, 10)
    assert net.feature_dim % section["num_heads"] == 0


def test_every_value_of_the_rival_configs_has_its_source():
    for path in sorted((REPO / "configs" / "rivals").glob("*_tde.yaml")):
        lines = path.read_text().splitlines()
        for before, line in zip(lines, lines[1:]):  # on its line or in the comment above
            if ":" in line and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
                assert "#" in line or before.lstrip().startswith("#"), (path.name, line)


def test_the_shared_protocol_overrides_resolve():
    cfg = resolve_config(load_config(DIGITS.replace("digits_lt.yaml", "cifar10_lt_if100_acl.yaml"), SHARED_PROTOCOL))
    assert cfg.loss.sections["tde"]["alpha"] == 1.0 and cfg.data.batch_size == 128


def test_the_objective_alone_trains_on_the_digits(tmp_path):
    """``--set loss.objective=tde`` alone: the method puts in its own part of the network (model.classifier causal)."""
    one_step = ["optim.epochs=1", "train.max_steps_per_epoch=1", f"train.output_dir={tmp_path}"]
    proc = ltcl("train", "-c", DIGITS, *sets(*TINY, "loss.objective=tde", *one_step))
    assert "  loss   tde (cross-entropy on the causal classifier" in proc.stdout  # the name once, then its terms
    saved = (tmp_path / "digits_lt" / "config.yaml").read_text()
    assert "  classifier: causal\n" in saved and (tmp_path / "digits_lt" / "results.json").is_file()
