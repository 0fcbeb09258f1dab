"""The bbn objective (Zhou et al., CVPR 2020): the cumulative-learning loss and its gradients against a float64
reference written from the paper's equations, the schedule, the bilateral backbone, the config checks, the rival
configs, and one digits run from the command line that resumes to the same weights.

The authors' code (Megvii-Nanjing/BBN 7992e90, lib/core/combiner.py and lib/net/network.py) was run outside the
repository on the same inputs (the report gives the differences: none)."""

import csv
import signal
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ltcl.config import ConfigError, load_config
from ltcl.data.views import MultiViewBatch
from ltcl.engine.interrupts import TEST_SIGNAL_AT_STEP
from ltcl.losses.bbn import bilateral_loss, bilateral_mix, cumulative_alpha, schedule_length
from ltcl.methods import ObjectiveSetup, StepRecord, resolve_config
from ltcl.methods.bbn import BBNSection, BilateralBranchNetwork, first_view
from ltcl.models import build_backbone
from ltcl.models.resnet_cifar import BasicBlock
from tests.engine.test_training import DIGITS, REPO, TINY, assert_same_checkpoints, ltcl, sets

B, F, C = 6, 4, 5
COUNTS = (50, 20, 10, 5, 2)


def reference(f_c, f_r, weight, bias, y_c, y_r, alpha):
    """Eqs. 2-3, one row and one class at a time: z_ij = 2 (alpha <W_c,j, f_c,i> + (1 - alpha) <W_r,j, f_r,i>) + b_j
    (the factor 2 is the authors' code's, combiner.py line 56), L = mean_i alpha CE(z_i, y_c,i) + (1 - alpha)
    CE(z_i, y_r,i)."""
    total = f_c.sum() * 0.0
    for i in range(f_c.shape[0]):
        z = []
        for j in range(weight.shape[0]):
            conventional = sum(weight[j, k] * f_c[i, k] for k in range(F))
            rebalancing = sum(weight[j, F + k] * f_r[i, k] for k in range(F))
            z.append(2.0 * (alpha * conventional + (1.0 - alpha) * rebalancing) + bias[j])
        log_norm = torch.log(sum(torch.exp(v) for v in z))
        total = total + alpha * (log_norm - z[int(y_c[i])]) + (1.0 - alpha) * (log_norm - z[int(y_r[i])])
    return total / f_c.shape[0]


class FeatureBranches(nn.Module):
    """A stand-in bilateral backbone whose 'images' are the features themselves."""

    def forward_branches(self, x_c, x_r):
        return x_c, x_r


def method(epochs=4):
    return BilateralBranchNetwork(ObjectiveSetup(class_counts=COUNTS, section=BBNSection(), epochs=epochs))


LABELS = {
    "random": (torch.tensor([0, 1, 2, 0, 3, 1]), torch.tensor([4, 4, 3, 2, 4, 1])),
    "the same labels in both batches": (torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([0, 1, 2, 3, 4, 0])),
    # class 4 alone in the uniform batch, and no class of the reversed batch among the uniform labels
    "a class alone, disjoint batches": (torch.tensor([0, 0, 0, 1, 1, 4]), torch.tensor([3, 3, 2, 2, 3, 2])),
}


@pytest.mark.parametrize("labels", list(LABELS))
@pytest.mark.parametrize("epoch", [0, 2, 3])
def test_the_loss_and_its_gradients_match_the_reference(labels, epoch):
    y_c, y_r = LABELS[labels]
    g = torch.Generator().manual_seed(epoch)
    f_c = torch.randn(B, F, generator=g, dtype=torch.float64, requires_grad=True)
    f_r = torch.randn(B, F, generator=g, dtype=torch.float64, requires_grad=True)
    classifier = nn.Linear(2 * F, C).double()
    bbn = method(epochs=4)
    bbn.set_epoch(epoch)
    alpha = 1.0 - (epoch / 4) ** 2
    assert bbn.alpha == alpha
    # view 1 sits second in its group here: the method must take its rows, not the group's first
    other = torch.full((B, F), 99.0, dtype=torch.float64)
    model = SimpleNamespace(backbone=FeatureBranches(), classifier=classifier)
    second = MultiViewBatch([f_r], [[0]], y_r, torch.ones(1, B, dtype=torch.bool))
    step = StepRecord(None, y_c, None, torch.zeros(0, dtype=torch.bool), 0, B, model, images=[torch.cat([other, f_c])],
                      group_views=[[1, 0]], second=second)  # fmt: skip
    out = bbn(step)
    want = reference(f_c, f_r, classifier.weight, classifier.bias, y_c, y_r, alpha)
    inputs = [f_c, f_r, classifier.weight, classifier.bias]
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    for got, expected in zip(torch.autograd.grad(out.loss, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert set(out.parts) == {"alpha", "loss_conventional", "loss_rebalancing"} == set(bbn.stat_names)
    assert out.parts["alpha"].item() == alpha
    z = classifier(bilateral_mix(f_c, f_r, alpha))
    torch.testing.assert_close(out.logits, z.detach())
    torch.testing.assert_close(out.parts["loss_conventional"], nn.functional.cross_entropy(z, y_c).detach())
    torch.testing.assert_close(out.parts["loss_rebalancing"], nn.functional.cross_entropy(z, y_r).detach())


@pytest.mark.parametrize("epoch", [0, 2, 3])
def test_the_train_accuracy_counts_each_row_against_both_labels_weighted_by_alpha(epoch):
    """The authors' count (combiner.py bbn_mix): alpha for the main label, 1 - alpha for the reversed one."""
    g = torch.Generator().manual_seed(10 + epoch)
    f_c, f_r = torch.randn(B, F, generator=g), torch.randn(B, F, generator=g)
    classifier = nn.Linear(2 * F, C)
    bbn = method(epochs=4)
    bbn.set_epoch(epoch)
    # labels that the prediction hits: main only (rows 0-1), both (row 2), reversed only (rows 3-4), neither (5)
    predicted = classifier(bilateral_mix(f_c, f_r, bbn.alpha)).argmax(1)
    y_c, y_r = (predicted + 1) % C, (predicted + 2) % C
    y_c[:3], y_r[2:5] = predicted[:3], predicted[2:5]
    model = SimpleNamespace(backbone=FeatureBranches(), classifier=classifier)
    second = MultiViewBatch([f_r], [[0]], y_r, torch.ones(1, B, dtype=torch.bool))
    step = StepRecord(None, y_c, None, torch.zeros(0, dtype=torch.bool), 0, B, model, images=[f_c],
                      group_views=[[0]], second=second)  # fmt: skip
    out = bbn(step)
    z = classifier(bilateral_mix(f_c, f_r, bbn.alpha)).tolist()
    want = 0.0
    for i in range(B):
        best = max(range(C), key=lambda j: z[i][j])
        want += bbn.alpha * (best == int(y_c[i])) + (1.0 - bbn.alpha) * (best == int(y_r[i]))
    assert want == pytest.approx(3 * bbn.alpha + 3 * (1.0 - bbn.alpha))
    assert out.correct.item() == pytest.approx(want, abs=1e-9)


def test_at_alpha_0_only_the_reversed_labels_count_and_the_inputs_are_checked():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(B, C, generator=g, dtype=torch.float64)
    y_c, y_r = LABELS["random"]
    loss, conventional, rebalancing = bilateral_loss(z, y_c, y_r, 0.0)
    torch.testing.assert_close(loss, nn.functional.cross_entropy(z, y_r))
    with pytest.raises(ValueError, match="alpha must be a number in"):
        bilateral_loss(z, y_c, y_r, 1.5)
    with pytest.raises(ValueError, match="labels_rebalancing must hold integer class indices"):
        bilateral_loss(z, y_c, y_r.int(), 0.5)
    with pytest.raises(ValueError, match="labels_conventional must be < the number of classes"):
        bilateral_loss(z, y_c + 5, y_r, 0.5)


def test_the_cumulative_schedule_is_the_authors():
    # combiner.py lines 16-19 and 48: alpha = 1 - ((epoch - 1) / div_epoch)^2 over 1-based epochs
    assert [schedule_length(e) for e in (1, 20, 90, 100, 180, 200)] == [1, 20, 100, 100, 200, 200]
    assert [cumulative_alpha(e, 200) for e in (0, 100, 199)] == [1.0, 0.75, 1 - (199 / 200) ** 2]
    assert cumulative_alpha(89, schedule_length(90)) == pytest.approx(0.2079)
    bbn = BilateralBranchNetwork(ObjectiveSetup(class_counts=COUNTS, section=BBNSection(schedule_epochs=10), epochs=5))
    bbn.set_epoch(4)
    assert bbn.alpha == 1 - (4 / 10) ** 2 and "alpha = 1 - (epoch / 10)^2, from 1 to 0.84" in bbn.describe()


def test_first_view_finds_view_1_in_any_group():
    small, big = torch.arange(4.0).view(4, 1), torch.arange(10.0, 16.0).view(6, 1)  # B = 2
    assert first_view([big, small], [[1, 2, 3], [0, 4]], 2).flatten().tolist() == [0.0, 1.0]
    assert first_view([big], [[2, 0, 1]], 2).flatten().tolist() == [12.0, 13.0]


def test_the_bilateral_backbone_duplicates_the_last_block_and_weights_both_branches_equally_at_test():
    built = build_backbone("bbn_resnet32")
    plain = build_backbone("resnet32")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert built.feature_dim == 128
    assert count(built.module) == count(plain.module) + count(BasicBlock(64, 64))  # the last block twice
    net = build_backbone("bbn_resnet8").module.double()
    g = torch.Generator().manual_seed(0)
    x, other = (torch.randn(3, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    net.train()
    # the trunk runs on each batch alone: the conventional features of x do not depend on the other batch
    f_c, f_r = net.forward_branches(x, other)
    torch.testing.assert_close(f_c, net.forward_branches(x, other * 3 + 1)[0])
    assert f_r.shape == (3, 64)
    net.eval()  # test: both branches on the same images, the plain concatenation (2 x 1/2)
    f_c, f_r = net.forward_branches(x, x)
    torch.testing.assert_close(net(x), torch.cat([f_c, f_r], dim=1))
    assert not torch.allclose(f_c, f_r)  # two different blocks


def test_the_config_checks():
    # the objective alone takes the two-branch twin of the config's backbone; one without a twin is refused
    assert resolve_config(load_config(DIGITS, ["loss.objective=bbn"])).model.backbone == "bbn_resnet20"
    assert resolve_config(load_config(DIGITS, ["loss.objective=bbn", "model.backbone=resnet50"])).model.backbone == (
        "bbn_resnet50"
    )
    with pytest.raises(ConfigError, match="set model.backbone=bbn_resnet32 .* got resnet18"):
        resolve_config(load_config(DIGITS, ["loss.objective=bbn", "model.backbone=resnet18"]))
    cfg = resolve_config(load_config(DIGITS, ["loss.objective=bbn", "model.backbone=bbn_resnet20"]))
    assert resolve_config(cfg) == cfg
    with pytest.raises(ConfigError, match="runs on one process"):
        BilateralBranchNetwork(ObjectiveSetup(class_counts=COUNTS, section=BBNSection(), gather_distributed=True))


def test_bbn_trains_from_the_command_line_and_resumes_to_the_same_weights(tmp_path, capsys):
    from ltcl.engine.trainer import train

    common = [*TINY, "loss.objective=bbn", "model.backbone=bbn_resnet8", "views.num_views=1", "views.presets=[digits]",
              "views.sizes=[32]", "data.batch_size=16", "optim.epochs=2", "train.max_steps_per_epoch=2",
              "train.deterministic=true", "train.amp=none"]  # fmt: skip
    train(load_config(DIGITS, [*common, f"train.output_dir={tmp_path / 'straight'}"]))  # in-process: one start less
    straight = capsys.readouterr().out
    assert "loss   bbn (alpha = 1 - (epoch / 2)^2, from 1 to 0.75; conventional branch" in straight
    assert "| alpha 1.0000 | conventional " in straight and "| alpha 0.7500 |" in straight
    proc = ltcl("train", "-c", DIGITS, *sets(*common, f"train.output_dir={tmp_path / 'stopped'}"),
                env={TEST_SIGNAL_AT_STEP: "3:TERM"}, check=False)  # fmt: skip
    assert proc.returncode == 128 + signal.SIGTERM
    ltcl("train", "--resume", str(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt"))
    want = torch.load(tmp_path / "straight" / "digits_lt" / "checkpoint_last.pt", weights_only=True)
    got = torch.load(tmp_path / "stopped" / "digits_lt" / "checkpoint_last.pt", weights_only=True)
    assert_same_checkpoints(want, got)  # the second (reversed) stream resumed mid-epoch too, or these would differ
    assert any(k.startswith("backbone.rebalancing.") for k in want["model"])
    with open(tmp_path / "straight" / "digits_lt" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["alpha"]) for r in rows] == [1.0, 0.75]
    assert all(float(r["loss_conventional"]) > 0 and float(r["loss_rebalancing"]) > 0 for r in rows)


SHARED_PROTOCOL = [  # configs/cifar10_lt_if100_acl.yaml -> BBN's CIFAR-10-LT row of the 20-epoch protocol
    "loss.objective=bbn", "model.backbone=bbn_resnet32", "views.num_views=1",
    "views.presets=[cifar_autoaugment_cutout]", "optim.epochs=20", "optim.warmup_epochs=1", "optim.schedule=cosine",
]  # fmt: skip


@pytest.mark.parametrize("name", ["cifar10_lt_if100_bbn", "cifar100_lt_if100_bbn", "imagenet_lt_x50_bbn"])
def test_the_rival_configs_resolve(name):
    cfg = resolve_config(load_config(DIGITS.replace("digits_lt.yaml", f"rivals/{name}.yaml")))
    assert cfg.loss.objective == "bbn" and cfg.views.num_views == 1 and cfg.data.sampler == "instance"
    assert cfg.model.backbone.startswith("bbn_") and cfg.model.classifier == "linear" and cfg.optim.nesterov


def test_every_value_of_the_rival_configs_has_its_source():
    for path in sorted((REPO / "configs" / "rivals").glob("*_bbn.yaml")):
        lines = path.read_text().splitlines()
        for before, line in zip(lines, lines[1:]):  # on its line or in the comment above
            if ":" in line and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
                assert "#" in line or before.lstrip().startswith("#"), (path.name, line)


def test_the_shared_protocol_overrides_resolve():
    cfg = resolve_config(load_config(DIGITS.replace("digits_lt.yaml", "cifar10_lt_if100_acl.yaml"), SHARED_PROTOCOL))
    assert cfg.loss.sections == {"bbn": {"schedule_epochs": 0}} and cfg.data.batch_size == 128


def test_the_objective_alone_trains_on_the_digits(tmp_path):
    """``--set loss.objective=bbn`` alone: the method puts in its own part of the network (bbn_resnet8)."""
    ltcl("train", "-c", DIGITS, *sets(*TINY, "loss.objective=bbn", "optim.epochs=1", "train.max_steps_per_epoch=1",
                                      f"train.output_dir={tmp_path}"))  # fmt: skip
    saved = (tmp_path / "digits_lt" / "config.yaml").read_text()
    assert "  backbone: bbn_resnet8\n" in saved and (tmp_path / "digits_lt" / "results.json").is_file()
