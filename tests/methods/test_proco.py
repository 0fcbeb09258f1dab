"""ProCo (ltcl.losses.proco, ltcl.methods.proco): the Bessel functions against mpmath, the objective against a float64
loop over the paper's equations (loss and gradients, over steps and an epoch boundary), the estimates under a real
2-process gloo run, the training step's host synchronisations, and a CLI run that resumes bit-exactly."""

import csv
import json
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from ltcl.config import LossConfig, load_config
from ltcl.losses.proco import ProCoLoss, proco_logits
from ltcl.losses.proco_bessel import bessel_log_term, bessel_ratio, vmf_log_normalizer
from ltcl.methods import resolve_config
from ltcl.methods.base import ObjectiveSetup, StepRecord
from ltcl.methods.proco import ProCo, ProCoSection
from tests.engine.test_host_syncs import CountSyncs
from tests.engine.test_training import DIGITS, TINY, assert_reported, evaluated_again, straight_and_resumed
from tests.methods.proco_distributed import COUNTS, DIM, PER_RANK, WORLD, _worker, make_model, run_steps

# ------------------------------------------------------------------------------------------------------------
# The Bessel functions

DIMS = [2, 3, 4, 8, 32, 64, 128, 256, 1024]
KAPPAS = [0.0, 1e-6, 1e-3, 0.1, 1.0, 5.0, 10.0, 30.0, 63.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5]


def mpmath_values(dim, kappas):
    """(B, A) = (log I_nu(k) - nu log k, I_{nu+1}(k) / I_nu(k)), nu = p/2 - 1, at 40 digits."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    nu = mpmath.mpf(dim) / 2 - 1
    log_terms, ratios = [], []
    for k in kappas:
        if k == 0:
            log_terms.append(float(-nu * mpmath.log(2) - mpmath.loggamma(nu + 1)))
            ratios.append(0.0)
            continue
        i0, i1 = mpmath.besseli(nu, k), mpmath.besseli(nu + 1, k)
        log_terms.append(float(mpmath.log(i0) - nu * mpmath.log(k)))
        ratios.append(float(i1 / i0))
    return torch.tensor(log_terms, dtype=torch.float64), torch.tensor(ratios, dtype=torch.float64)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 5e-14), (torch.float32, 2e-7)])
def test_the_log_term_and_the_ratio_match_mpmath_at_every_dimension_and_concentration(dtype, tolerance):
    kappa = torch.tensor(KAPPAS, dtype=dtype)
    for dim in DIMS:
        want_log, want_ratio = mpmath_values(dim, KAPPAS)
        got_log, got_ratio = bessel_log_term(kappa, dim), bessel_ratio(kappa, dim)
        assert got_log.dtype == got_ratio.dtype == dtype
        # B reaches 1e5 in size: its error relative to max(1, |B|); the ratio's relative to itself.
        log_error = ((got_log.double() - want_log).abs() / want_log.abs().clamp(min=1)).max().item()
        ratio_error = ((got_ratio.double() - want_ratio).abs() / want_ratio.clamp(min=1e-300)).max().item()
        assert log_error < tolerance and ratio_error < tolerance, (dim, log_error, ratio_error)
        assert bool((got_ratio < 1).all())


def test_the_log_normaliser_on_the_two_sphere_has_its_closed_form():
    # p = 3: C_3(k) = k / (4 pi sinh k); log sinh k = k - log 2 + log1p(-exp(-2k)).
    k = torch.tensor([1e-4, 0.01, 0.5, 2.0, 20.0, 700.0, 1e4, 1e5], dtype=torch.float64)
    want = k.log() - math.log(4 * math.pi) - (k - math.log(2) + torch.log1p(-torch.exp(-2 * k)))
    torch.testing.assert_close(vmf_log_normalizer(k, 3), want, rtol=1e-14, atol=1e-13)


@pytest.mark.parametrize("dim", [3, 8, 128, 1024])
def test_the_gradient_of_the_log_term_is_the_ratio(dim):
    kappa = torch.tensor([0.5, 5.0, 50.0, 500.0, 5e4], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(bessel_log_term(kappa, dim).sum(), kappa)
    h = 1e-4 * kappa.detach().clamp(min=10.0)  # central differences, the step relative to k (B reaches 5e4)
    numerical = (bessel_log_term(kappa.detach() + h, dim) - bessel_log_term(kappa.detach() - h, dim)) / (2 * h)
    torch.testing.assert_close(grad, numerical, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(grad, bessel_ratio(kappa.detach(), dim), rtol=0, atol=0)
    torch.testing.assert_close(grad, bessel_ratio(kappa.detach(), dim), rtol=0, atol=0)


def test_the_authors_miller_routine_is_exact_at_small_kappa_and_departs_above_its_order():
    small = torch.tensor([1e-3, 1.0, 10.0, 60.0, 100.0, 300.0], dtype=torch.float64)
    for dim in (128, 1024):
        torch.testing.assert_close(bessel_log_term(small, dim, "authors"), bessel_log_term(small, dim), rtol=1e-13,
                                   atol=1e-11)  # fmt: skip
        torch.testing.assert_close(bessel_ratio(small, dim, "authors"), bessel_ratio(small, dim), rtol=1e-11, atol=0)
    # p = 128 (CIFAR): above k ~ 1e3 the routine's ratio leaves (0, 1); the backward pass clips it at 1.
    large = torch.tensor([1e3, 1e4, 1e5], dtype=torch.float64)
    authors, exact = bessel_ratio(large, 128, "authors"), bessel_ratio(large, 128)
    assert authors[0].item() == pytest.approx(0.938495, abs=1e-6) and exact[0].item() == pytest.approx(0.938484, 1e-6)
    assert 1.8 < authors[1].item() < 1.9 and 16 < authors[2].item() < 17
    assert exact[1].item() == pytest.approx(0.99367, abs=1e-5) and exact[2].item() == pytest.approx(0.999365, 1e-6)
    k = large.clone().requires_grad_()
    (grad,) = torch.autograd.grad(bessel_log_term(k, 128, "authors").sum(), k)
    assert grad[1:].tolist() == [1.0, 1.0]
    # Its contrastive logits stay within 1e-3 of the exact ones (tau 0.1, all kappa and alignments).
    directions = torch.eye(128, dtype=torch.float64)[:6]
    kappa = torch.tensor([100.0, 1e3, 3e3, 1e4, 3e4, 1e5], dtype=torch.float64)
    z = F.normalize(torch.randn(50, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=1)
    z = torch.cat([z, directions, -directions])
    gap = proco_logits(z, directions, kappa, 0.1, "authors") - proco_logits(z, directions, kappa, 0.1)
    assert 1e-4 < gap.abs().max().item() < 1e-3
    # p = 1024 (ImageNet-LT): the routine starts at order 1022 and agrees far higher up.
    mid = torch.tensor([1e3, 1e4, 3e4], dtype=torch.float64)
    torch.testing.assert_close(bessel_ratio(mid, 1024, "authors"), bessel_ratio(mid, 1024), rtol=1e-9, atol=0)


# ------------------------------------------------------------------------------------------------------------
# The objective against the paper's equations


class _LogNormaliser(torch.autograd.Function):
    """log C_p(k) from scipy's exponentially scaled I (float64), d/dk log C_p(k) = -I_{p/2}(k) / I_{p/2-1}(k)."""

    @staticmethod
    def forward(ctx, k, dim):
        from scipy.special import ive

        nu, value = dim / 2 - 1, k.item()
        ctx.ratio = ive(nu + 1, value) / ive(nu, value)
        return k.new_tensor(nu * math.log(value) - dim / 2 * math.log(2 * math.pi) - math.log(ive(nu, value)) - value)

    @staticmethod
    def backward(ctx, grad):
        return -grad * ctx.ratio, None


def reference_objective(steps, counts, *, dim, tau, alpha, cls_weight, la_tau, max_kappa, initial):
    """The whole objective at every step, from the paper's equations with one Python loop per sum.

    ``steps``: (epoch, logits of view 1, [projections of views 2 and 3], labels). The class estimate read at a view
    is the mean of the class's rows of the previous epoch and of this epoch so far (this view's rows included);
    a class without rows keeps ``initial(epoch)``. kappa = p R / (1 - R^2), clipped; the contrastive logit of
    class j is log E_{x ~ vMF(mu_j, kappa_j)} exp(z . x / tau) = log C_p(kappa_j) - log C_p(|kappa_j mu_j + z/tau|);
    each view's loss is the mean over rows of -log(pi_y^t e^{g_y} / sum_j pi_j^t e^{g_j}), t the adjustment's tau.
    """
    prior = [(c / sum(counts)) ** la_tau for c in counts]
    num_classes = len(counts)

    def adjusted_ce(scores, y):
        total = scores.sum() * 0.0
        for i in range(scores.shape[0]):
            weighted = [prior[j] * torch.exp(scores[i, j]) for j in range(num_classes)]
            total = total - torch.log(weighted[int(y[i])] / sum(weighted))
        return total / scores.shape[0]

    previous, current, epoch_now, losses = {}, {}, None, []
    for epoch, logits, views, labels in steps:
        if epoch != epoch_now:
            previous, current, epoch_now = current, {}, epoch
        terms = []
        for z in views:
            for i, y in enumerate(labels.tolist()):
                current.setdefault(y, []).append(z[i].detach())
            loss = z.sum() * 0.0
            per_row = []
            for i in range(z.shape[0]):
                scores = []
                for j in range(num_classes):
                    rows = previous.get(j, []) + current.get(j, [])
                    mean = torch.stack(rows).mean(0) if rows else initial(epoch)[j]
                    length = mean.norm().item()
                    kappa = dim * length / (1 - length**2) if length < 1 else max_kappa
                    kappa = min(kappa, max_kappa)
                    mu = mean / mean.norm()
                    tilde = torch.linalg.vector_norm(kappa * mu + z[i] / tau)
                    scores.append(_LogNormaliser.apply(mean.new_tensor(kappa), dim) - _LogNormaliser.apply(tilde, dim))
                per_row.append(torch.stack(scores))
            loss = adjusted_ce(torch.stack(per_row), labels)
            terms.append(loss)
        losses.append(cls_weight * adjusted_ce(logits, labels) + alpha * (terms[0] + terms[1]) / 2)
    return losses


# COUNTS = [40, 15, 6, 3, 2, 1]: class 5 never appears in a batch, it keeps its initial mean
PATTERNS = [  # (epoch, labels): a mix, every class alone, one class only (the others absent), and a mix again
    (0, [0, 0, 1, 1, 1, 2, 3, 0, 2, 4]),
    (0, [0, 1, 2, 3, 4]),
    (1, [2, 2, 2, 2]),
    (1, [4, 3, 0, 0, 1, 2]),
]


def make_step(labels, dim, seed, num_views=4, spread=0.3):
    """A record with ``num_views`` views: view 1's logits and views 2-3's projections are the ones that count."""
    centres = F.normalize(torch.randn(len(COUNTS), dim, generator=torch.Generator().manual_seed(99),
                                      dtype=torch.float64), dim=1)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels, dtype=torch.int64)
    b = len(labels)
    z = F.normalize(centres[y].repeat(num_views, 1) + spread * torch.randn(num_views * b, dim, generator=g,
                                                                           dtype=torch.float64), dim=1)  # fmt: skip
    z = z.detach().requires_grad_()
    logits = (2 * torch.randn(num_views * b, len(COUNTS), generator=g, dtype=torch.float64)).requires_grad_()
    record = StepRecord(logits=logits, labels=y.repeat(num_views), projections=z,
                        contrastive_mask=torch.ones(num_views * b, dtype=torch.bool), num_views=num_views,
                        batch_size=b, model=None)  # fmt: skip
    return record, z, logits


def build(dim, tau, alpha=1.0, cls_weight=1.0, **section):
    setup = ObjectiveSetup(class_counts=tuple(COUNTS), loss=LossConfig(alpha=alpha, temperature=tau,
                           cls_weight=cls_weight), section=ProCoSection(**section), projection_dim=dim)  # fmt: skip
    return ProCo(setup)


@pytest.mark.parametrize(
    "dim, tau, alpha, cls_weight, la_tau, spread",
    [(8, 0.2, 1.0, 1.0, 1.0, 0.3), (16, 0.07, 0.3, 0.5, 0.7, 0.05), (32, 0.1, 1.0, 1.0, 1.0, 0.002)],
)
def test_loss_and_gradients_match_the_equations_over_steps_and_an_epoch(dim, tau, alpha, cls_weight, la_tau, spread):
    # spread 0.002: classes tight enough that the concentration reaches its 1e5 ceiling.
    objective = build(dim, tau, alpha, cls_weight, logit_adjust_tau=la_tau)
    records, got = [], []
    for n, (epoch, labels) in enumerate(PATTERNS):
        objective.set_epoch(epoch)
        record, z, logits = make_step(labels, dim, seed=n, spread=spread)
        out = objective(record)
        got.append((out, torch.autograd.grad(out.loss, (z, logits))))
        b = record.batch_size
        records.append((epoch, logits[:b], [z[b : 2 * b], z[2 * b : 3 * b]], record.labels[:b], z, logits))
    steps = [r[:4] for r in records]
    want = reference_objective(steps, COUNTS, dim=dim, tau=tau, alpha=alpha, cls_weight=cls_weight, la_tau=la_tau,
                               max_kappa=1e5, initial=objective.contrastive.initial_means)  # fmt: skip
    for (out, (got_z, got_logits)), loss, record in zip(got, want, records):
        want_z, want_logits = torch.autograd.grad(loss, (record[4], record[5]))
        assert out.loss.item() == pytest.approx(loss.item(), rel=1e-11)
        torch.testing.assert_close(got_z, want_z, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(got_logits, want_logits, rtol=1e-9, atol=1e-12)
        b = len(record[3])
        assert got_z[:b].abs().sum() == 0 and got_z[3 * b :].abs().sum() == 0  # views 1 and 4 feed no projection
        assert got_z[b : 3 * b].abs().sum() > 0
        assert got_logits[b:].abs().sum() == 0  # views 2-4 feed no classifier term
        assert set(out.parts) == {"loss_cls", "loss_proco", "kappa_min", "kappa_max"}
    kappa_max = got[-1][0].parts["kappa_max"].item()
    assert (kappa_max == 1e5) == (spread < 0.01)


def test_the_estimates_swap_once_per_epoch_and_start_from_fixed_directions():
    loss = ProCoLoss(COUNTS, 8, 0.1)
    assert torch.equal(loss.initial_means(3), ProCoLoss(COUNTS, 8, 0.1).initial_means(3))
    torch.testing.assert_close(loss.initial_means(0).norm(dim=1), torch.full((6,), 0.9, dtype=torch.float64))
    loss.begin_epoch(0)
    z = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 0, 1, 2, 2])
    loss(z, y)
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.begin_epoch(0)  # a resumed run calls it again for the same epoch: nothing changes
    assert all(torch.equal(state[k], v) for k, v in loss.state_dict().items())
    torch.testing.assert_close(loss.mean[0], z[:2].mean(0), rtol=1e-15, atol=1e-15)
    assert loss.count.tolist() == [2, 1, 2, 0, 0, 0] and torch.equal(loss.count, loss.epoch_count)
    loss.begin_epoch(1)
    assert torch.equal(loss.mean, state["epoch_mean"]) and torch.equal(loss.count, state["epoch_count"])
    assert torch.equal(loss.epoch_mean, loss.initial_means(2)) and loss.epoch_count.sum() == 0
    # kappa = p R / (1 - R^2), the ceiling for R >= 1
    loss.mean.copy_(torch.zeros(6, 8, dtype=torch.float64))
    loss.mean[:, 0] = torch.tensor([0.0, 0.5, 0.9, 0.99999, 1.0, 1.0 + 1e-12])
    assert loss.estimates()[1].tolist() == pytest.approx([0.0, 8 * 0.5 / 0.75, 8 * 0.9 / 0.19, 1e5, 1e5, 1e5])


def test_a_training_step_does_not_wait_for_the_host():
    objective = build(8, 0.1)
    objective.set_epoch(0)
    record, _, _ = make_step([0, 1, 1, 2, 4, 4], 8, seed=0)
    with CountSyncs() as mode:
        out = objective(record)
        out.loss.backward()
    assert mode.calls == []


def test_configs_resolve_and_settings_it_cannot_train_are_refused():
    from ltcl.config import ConfigError

    for name in ("cifar10_lt_if100", "cifar100_lt_if100", "imagenet_lt_x50"):
        cfg = resolve_config(load_config(os.path.join("configs", "rivals", f"{name}_proco.yaml")))
        assert cfg.loss.objective == "proco" and cfg.loss.alpha == 1.0 and cfg.views.num_views == 3
        assert cfg.loss.sections["proco"] == {"bessel": "exact", "max_kappa": 1e5, "logit_adjust_tau": 1.0}
    with pytest.raises(ConfigError, match="views.num_views"):
        resolve_config(load_config(DIGITS, ["loss.objective=proco", "views.num_views=2", "views.sizes=[32]"]))
    with pytest.raises(ConfigError, match="loss.proco.bessel"):
        resolve_config(load_config(DIGITS, ["loss.objective=proco", "loss.proco.bessel=authors",
                                            "model.projection_dim=33"]))  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# Two processes (gloo): identical estimates on both, the loss and gradients of one process on the global batch


def test_two_processes_keep_identical_estimates_and_equal_one_process_on_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single = run_steps(make_model(), ProCoLoss(COUNTS, DIM, 0.2), slice(None))
    for step, want in enumerate(single):
        for rank, records in enumerate(ranks):
            got = records[step]
            for key, value in got["state"].items():  # the same estimates on both processes, bit for bit
                assert torch.equal(value, ranks[0][step]["state"][key]), (step, key)
                torch.testing.assert_close(value, want["state"][key], rtol=1e-12, atol=1e-14)
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-10)
            own = torch.cat([want["z_grad"].view(2, -1, DIM)[v, rank * PER_RANK : (rank + 1) * PER_RANK]
                             for v in range(2)])  # fmt: skip
            torch.testing.assert_close(got["z_grad"], WORLD * own, rtol=1e-9, atol=1e-12)
            for key, grad in want["params"].items():
                torch.testing.assert_close(got["params"][key], grad, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# The command line: one run on the digits, and an interrupted one that resumes to the same weights and estimates


def test_proco_trains_from_the_cli_and_resumes_to_the_same_weights_and_estimates(tmp_path):
    common = [*TINY, "loss.objective=proco", "optim.epochs=2", "train.max_steps_per_epoch=3",
              "train.deterministic=true", "train.amp=none"]  # fmt: skip
    proc, want, run = straight_and_resumed(tmp_path, common, stop_at=4)
    assert ("loss   proco (view 1 classified, views 2-3 contrasted; alpha 0.1, tau 0.1, logit adjustment tau 1.0, "
            "vMF on S^31, kappa <= 100000, bessel exact)") in proc.stdout  # fmt: skip
    assert {"contrastive.mean", "contrastive.epoch_mean", "contrastive.count", "contrastive.epoch"} <= set(
        want["objective"]
    )
    assert int(want["objective"]["contrastive.epoch"]) == 1
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    for row in rows:
        assert 0 < float(row["kappa_min"]) <= float(row["kappa_max"]) <= 1e5
        assert float(row["loss_proco"]) > 0 and float(row["loss_cls"]) > 0
    # the reported accuracy is the saved model's own
    results = json.loads((run / "results.json").read_text())
    assert_reported(results["test"], evaluated_again(run / "checkpoint_last.pt"))
