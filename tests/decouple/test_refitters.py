"""Float64 references of the re-fitters, written from the papers' equations as slow loops, and known solutions.

- tau-normalisation (Kang et al., ICLR 2020): ``w_j / ||w_j||^tau``, tau chosen on the validation split;
- LWS and cRT on a tiny separable set: the minimiser of cross-entropy plus weight decay, solved by bisection;
- NCM: class means of the centred, normalised features, and ``-||x - m_j||^2``, against loops;
- DisAlign (Zhang et al., CVPR 2021, Eq. 4): ``(1 - sigma) z_j + sigma (a_j z_j + beta_j)`` and the generalized
  re-weighted cross-entropy;
- MiSLAS's label-aware smoothing (Zhong et al., CVPR 2021, Eqs. 6-7): the per-class epsilons and the loss.
"""

from __future__ import annotations

import math

import pytest
import torch

from ltcl.config import ConfigError, load_config
from ltcl.decouple import REFITTERS, RefitSetup, epoch_cosine
from ltcl.decouple.base import linear_weights
from ltcl.decouple.crt import ClassifierRetraining, CRTSection
from ltcl.decouple.disalign import DisAlignSection, DistributionAlignment
from ltcl.decouple.lws import LearnableWeightScaling, LWSSection
from ltcl.decouple.mislas import MiSLASSection, MiSLASStageTwo
from ltcl.decouple.ncm import class_means
from ltcl.decouple.run import split_overrides
from ltcl.decouple.stage import build_optimizer, train_epoch
from ltcl.decouple.tau_norm import TauNormalization, TauNormSection, tau_normalized
from ltcl.engine.evaluate import accuracy_from_counts
from ltcl.losses.grw import GeneralizedReweightedCE
from ltcl.losses.label_aware_smoothing import LabelAwareSmoothing, label_aware_epsilons
from ltcl.models import CosineClassifier, DisAlignClassifier, LinearClassifier, NearestClassMeanClassifier

F64 = torch.float64


def linear(weight, bias) -> LinearClassifier:
    head = LinearClassifier(weight.shape[1], weight.shape[0]).to(weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head


def setup_of(classifier, counts=(30, 10)) -> RefitSetup:
    return RefitSetup(tuple(counts), classifier.weight.shape[1], classifier, torch.device("cpu"))


def bisect(f, low, high, steps=200) -> float:
    """The root of an increasing ``f`` in [low, high]."""
    for _ in range(steps):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if f(middle) < 0 else (low, middle)
    return 0.5 * (low + high)


# ------------------------------------------------------------------------------------------------------------
# tau-normalisation


def test_tau_normalized_rows_match_a_loop():
    weight = torch.randn(6, 5, dtype=F64) * torch.linspace(3.0, 0.2, 6, dtype=F64)[:, None]
    weight[3] = 0.0  # a dead class keeps its zero row instead of 0 / 0
    for tau in (0.0, 0.3, 1.0, 1.7, 2.0):
        expected = torch.zeros_like(weight)
        for j in range(weight.shape[0]):
            norm = math.sqrt(sum(float(x) ** 2 for x in weight[j]))
            for k in range(weight.shape[1]):
                expected[j, k] = weight[j, k] / norm**tau if norm > 0 else 0.0
        torch.testing.assert_close(tau_normalized(weight, tau), expected, rtol=1e-13, atol=0)


def test_tau_norm_logits_drop_the_bias_as_the_authors_script_or_keep_it():
    weight, bias = torch.randn(4, 3, dtype=F64), torch.randn(4, dtype=F64)
    features = torch.randn(5, 3, dtype=F64)
    for choice, with_bias in (("drop", False), ("keep", True)):
        refit = TauNormalization(TauNormSection(bias=choice), setup_of(linear(weight, bias), (5, 4, 3, 2)))
        logits = refit.classifier_for(0.5).eval()(features)
        expected = features @ tau_normalized(weight, 0.5).t() + (bias if with_bias else 0.0)
        torch.testing.assert_close(logits, expected, rtol=1e-13, atol=1e-13)


class GridContext:
    """What tau_norm's fit reads of a run: the validation features, and a top-1 score of a classifier."""

    def __init__(self, features, labels, run_dir):
        self.val, self.run_dir = (features, labels), run_dir

    def split(self, name):
        return self.val if name == "val" else None

    def loader(self, dataset):
        return dataset

    def features(self, loader):
        return loader

    def score(self, classifier, features, labels):
        hits = (classifier.eval()(features).argmax(1) == labels).double()
        correct = torch.zeros(2, dtype=F64).index_add_(0, labels, hits)
        return accuracy_from_counts(correct, torch.bincount(labels, minlength=2).double(), [200, 10])


def test_tau_norm_takes_the_tau_that_is_best_on_validation(tmp_path):
    # The head class's row is 4x longer: tau 0 gives the tail image to the head, tau 2 the head image to the tail;
    # only tau 1 classifies both (the validation top-1 of each tau is known).
    weight, bias = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=F64), torch.zeros(2, dtype=F64)
    features, labels = torch.tensor([[1.0, 0.8], [0.5, 1.0]], dtype=F64), torch.tensor([0, 1])
    refit = TauNormalization(TauNormSection(tau_grid=[0.0, 1.0, 2.0]), setup_of(linear(weight, bias), (200, 10)))
    classifier, info = refit.fit(GridContext(features, labels, tmp_path))
    assert info["tau"] == 1.0 and [r["all"] for r in info["grid"]] == [50.0, 100.0, 50.0]
    torch.testing.assert_close(classifier.weight.detach(), tau_normalized(weight, 1.0))
    assert (tmp_path / "tau_grid.csv").read_text().splitlines()[0] == "tau,many,medium,few,all"


def test_tau_norm_without_a_validation_split_says_what_to_do(tmp_path):
    refit = TauNormalization(TauNormSection(), setup_of(linear(torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64))))
    context = GridContext(None, None, tmp_path)
    context.val = None
    with pytest.raises(ValueError, match="data.val_per_class=N.*decouple.tau=T.*never chosen on the test set"):
        refit.fit(context)
    fixed, info = TauNormalization(TauNormSection(tau=0.5), refit.setup).fit(context)
    assert info["tau"] == 0.5


def test_the_rescaling_refits_refuse_a_cosine_classifier():
    with pytest.raises(ValueError, match="use --method crt or ncm"):
        linear_weights(CosineClassifier(4, 3), "lws")


# ------------------------------------------------------------------------------------------------------------
# LWS and cRT: trained through ltcl's own epoch loop to the minimiser of CE + weight decay


def two_points(dim=2):
    """Class 0 at e1, class 1 at -e1: a separable set whose regularised CE minimiser is known."""
    features = torch.zeros(2, dim, dtype=F64)
    features[0, 0], features[1, 0] = 1.0, -1.0
    return features, torch.tensor([0, 1])


def train_full_batch(refit, steps=110):
    """Full-batch steps at the full rate (epoch 0 of the cosine); lr 1, momentum 0.5 and weight decay 0.5 reach
    the minimiser to 1e-12 in about 80 steps."""
    optimizer = build_optimizer(refit)
    features, labels = two_points(refit.setup.feature_dim)
    for _ in range(steps):
        train_epoch(refit, optimizer, [(features, None, labels)], 0)
    return refit


def test_lws_reaches_the_known_scales():
    # Frozen rows w_0 = 2 e1, w_1 = -e1: both images give CE log(1 + exp(-(2 s_0 + s_1))); with weight decay lam on
    # the scales the minimiser has s_0 = 2 s_1 and s_1 = sigmoid(-5 s_1) / lam.
    lam = 0.5
    weight = torch.tensor([[2.0, 0.0], [-1.0, 0.0]], dtype=F64)
    section = LWSSection(lr=1.0, momentum=0.5, weight_decay=lam, epochs=1)
    refit = train_full_batch(LearnableWeightScaling(section, setup_of(linear(weight, torch.zeros(2, dtype=F64)))))
    s1 = bisect(lambda s: lam * s - 1.0 / (1.0 + math.exp(5.0 * s)), 0.0, 10.0)
    torch.testing.assert_close(refit.head.scales.detach(), torch.tensor([2.0 * s1, s1], dtype=F64), rtol=1e-9, atol=0)
    # what is saved: the same logits from a plain linear classifier
    features = torch.randn(7, 2, dtype=F64)
    torch.testing.assert_close(refit.export().eval()(features), refit.head(features).detach(), rtol=1e-13, atol=1e-13)
    assert torch.equal(refit.head.weight, weight)  # the first stage's weights never move


def test_crt_reaches_the_known_classifier_from_any_start():
    # The symmetric minimiser of CE + (lam / 2) ||W, b||^2 on the two points: W = [[a, 0], [-a, 0]], b = 0 with
    # a = sigmoid(-2 a) / lam (the problem is strictly convex, so the random initialisation does not matter).
    lam = 0.5
    source = linear(torch.randn(2, 2, dtype=F64), torch.randn(2, dtype=F64))
    section = CRTSection(lr=1.0, momentum=0.5, weight_decay=lam, epochs=1)
    refit = ClassifierRetraining(section, setup_of(source))
    refit.head.to(F64)
    train_full_batch(refit)
    a = bisect(lambda v: lam * v - 1.0 / (1.0 + math.exp(2.0 * v)), 0.0, 10.0)
    torch.testing.assert_close(
        refit.head.weight.detach(), torch.tensor([[a, 0.0], [-a, 0.0]], dtype=F64), atol=1e-9, rtol=0
    )
    torch.testing.assert_close(refit.head.bias.detach(), torch.zeros(2, dtype=F64), atol=1e-9, rtol=0)


def test_the_second_stage_steps_its_cosine_once_per_epoch_from_the_full_rate():
    assert [round(epoch_cosine(0.2, e, 4), 12) for e in range(4)] == [
        0.2,
        round(0.1 * (1 + math.cos(math.pi / 4)), 12),
        0.1,
        round(0.1 * (1 + math.cos(3 * math.pi / 4)), 12),
    ]


def test_mislas_trains_the_classifier_at_lr_factor_and_the_scales_at_the_full_rate():
    section = MiSLASSection(lr=0.1, lr_factor=0.5, epochs=1)
    refit = MiSLASStageTwo(section, setup_of(linear(torch.randn(2, 2, dtype=F64), torch.zeros(2, dtype=F64))))
    optimizer = build_optimizer(refit)
    train_epoch(refit, optimizer, [], 0)
    assert [g["lr"] for g in optimizer.param_groups] == [0.05, 0.1]


# ------------------------------------------------------------------------------------------------------------
# NCM


def test_ncm_means_and_logits_match_loops():
    torch.manual_seed(0)
    features, labels = torch.relu(torch.randn(40, 6, dtype=F64)), torch.arange(40) % 3
    queries = torch.randn(9, 6, dtype=F64)
    for centred in (True, False):
        center = [sum(float(features[i, k]) for i in range(40)) / 40 if centred else 0.0 for k in range(6)]

        def transform(row, center=center):
            x = [float(row[k]) - center[k] for k in range(6)]
            norm = math.sqrt(sum(v * v for v in x))
            return [v / norm for v in x]

        rows = [transform(features[i]) for i in range(40)]
        means = [[sum(rows[i][k] for i in range(40) if labels[i] == c) / int((labels == c).sum()) for k in range(6)]
                 for c in range(3)]  # fmt: skip
        expected = [[-sum((x - m) ** 2 for x, m in zip(transform(q), means[c])) for c in range(3)] for q in queries]
        got_means, got_center = class_means(features, labels, 3, centred)
        torch.testing.assert_close(got_means, torch.tensor(means, dtype=F64), rtol=1e-12, atol=1e-14)
        head = NearestClassMeanClassifier(6, 3).to(F64)
        head.weight.copy_(got_means)
        head.center.copy_(got_center)
        torch.testing.assert_close(head.eval()(queries), torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)


def test_ncm_with_normalised_means_ranks_by_the_cosine_to_the_means():
    torch.manual_seed(1)
    features, labels = torch.randn(30, 5, dtype=F64), torch.arange(30) % 4
    means, center = class_means(features, labels, 4, centred=True)
    head = NearestClassMeanClassifier(5, 4).to(F64)
    head.weight.copy_(torch.nn.functional.normalize(means, dim=1))
    head.center.copy_(center)
    queries = torch.randn(50, 5, dtype=F64)
    cosines = torch.nn.functional.cosine_similarity((queries - center)[:, None, :], means[None], dim=2)
    assert torch.equal(head.eval()(queries).argmax(1), cosines.argmax(1))


# ------------------------------------------------------------------------------------------------------------
# DisAlign


def test_disalign_layer_matches_the_papers_calibration_and_its_gradient():
    torch.manual_seed(2)
    layer = DisAlignClassifier(5, 4).to(F64)
    with torch.no_grad():
        layer.logit_scale.copy_(torch.randn(4, dtype=F64))
        layer.logit_bias.copy_(torch.randn(4, dtype=F64))
        layer.confidence.weight.copy_(torch.randn(1, 5, dtype=F64))
    features = torch.randn(6, 5, dtype=F64)
    params = [layer.logit_scale, layer.logit_bias, layer.confidence.weight, layer.confidence.bias]

    def reference(alpha, beta, v, c):  # Eq. 4: (1 - sigma) z + sigma (a z + beta), a = 1 + alpha
        out = []
        for f in features:
            sigma = 1.0 / (1.0 + torch.exp(-(v[0] @ f + c[0])))
            z = [layer.weight[j].detach() @ f + layer.bias[j].detach() for j in range(4)]
            out.append(torch.stack([(1 - sigma) * z[j] + sigma * ((1 + alpha[j]) * z[j] + beta[j]) for j in range(4)]))
        return torch.stack(out)

    expected = reference(*params)
    torch.testing.assert_close(layer.train()(features), expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn(6, 4, dtype=F64)
    got = torch.autograd.grad((layer(features) * weights).sum(), params)
    want = torch.autograd.grad((reference(*params) * weights).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_disalign_trains_only_the_calibration():
    source = linear(torch.randn(3, 4), torch.randn(3))
    refit = DistributionAlignment(DisAlignSection(), setup_of(source, (50, 20, 5)))
    trained = {n for n, p in refit.head.named_parameters() if p.requires_grad}
    assert trained == {"logit_scale", "logit_bias", "confidence.weight", "confidence.bias"}
    assert torch.equal(refit.head.weight, source.weight) and bool((refit.head.confidence.weight == 0.1).all())


def test_generalized_reweighting_matches_a_loop():
    counts, rho = [500, 120, 30, 7], 1.2
    total = sum(counts)
    raw = [(total / n) ** rho for n in counts]
    weights = [len(counts) * r / sum(raw) for r in raw]
    loss = GeneralizedReweightedCE(counts, rho)
    torch.testing.assert_close(loss.weights, torch.tensor(weights, dtype=F64), rtol=1e-14, atol=0)
    logits = torch.randn(9, 4, dtype=F64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 0, 0, 1])

    def reference(z):
        terms = [weights[y] * (torch.logsumexp(z[i], 0) - z[i, y]) for i, y in enumerate(labels.tolist())]
        return sum(terms) / sum(weights[y] for y in labels.tolist())

    torch.testing.assert_close(loss(logits, labels), reference(logits), rtol=1e-13, atol=0)
    (got,) = torch.autograd.grad(loss(logits, labels), logits)
    (want,) = torch.autograd.grad(reference(logits), logits)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------------------------
# MiSLAS: label-aware smoothing


def test_label_aware_epsilons_match_the_papers_shapes():
    counts, head, tail = [5000, 1200, 300, 50], 0.4, 0.1
    n1, nk = max(counts), min(counts)
    shapes = {
        "concave": lambda t: tail + (head - tail) * math.sin(math.pi * t / 2),
        "linear": lambda t: tail + (head - tail) * t,
        "convex": lambda t: head + (head - tail) * math.sin(1.5 * math.pi + math.pi * t / 2),
        "exp": lambda t: tail + (head - tail) * t**2.0,
    }
    for shape, f in shapes.items():
        expected = [f((n - nk) / (n1 - nk)) for n in counts]
        got = label_aware_epsilons(counts, head, tail, shape, power=2.0)
        torch.testing.assert_close(got, torch.tensor(expected, dtype=F64), rtol=1e-14, atol=1e-15)
        assert math.isclose(got[0], head) and math.isclose(got[-1], tail, abs_tol=1e-15)
    with pytest.raises(ValueError, match="every class has 7 training images"):
        label_aware_epsilons([7, 7, 7], head, tail)


def test_label_aware_smoothing_loss_and_gradient_match_a_loop():
    counts = [400, 90, 20, 5, 5]  # two classes of the rarest size
    loss = LabelAwareSmoothing(counts, 0.3, 0.05)
    logits = torch.randn(8, 5, dtype=F64, requires_grad=True)
    labels = torch.tensor([0, 4, 3, 1, 2, 0, 0, 3])  # class 4 alone in the batch
    eps = label_aware_epsilons(counts, 0.3, 0.05).tolist()

    def reference(z):
        total = 0
        for i, y in enumerate(labels.tolist()):
            log_p = [z[i, j] - torch.logsumexp(z[i], 0) for j in range(5)]
            total = total + (1 - eps[y]) * -log_p[y] + eps[y] * sum(-v for v in log_p) / 5
        return total / len(labels)

    torch.testing.assert_close(loss(logits, labels), reference(logits), rtol=1e-13, atol=0)
    (got,) = torch.autograd.grad(loss(logits, labels), logits)
    (want,) = torch.autograd.grad(reference(logits), logits)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------------------------
# Sections: defaults, the authors' values for a dataset, --set


def test_each_refitter_takes_its_authors_values_for_the_dataset_and_the_sets_over_them():
    cfg = load_config("configs/cifar10_lt_if100_acl.yaml")
    mislas = REFITTERS.get("mislas")
    section, note = mislas.resolve_section(cfg, {})
    # config/cifar10/cifar10_imb001_stage2_mislas.yaml: shift_bn False, lr_factor 0.5, batch 128, wd 2e-4
    assert (section.bn, section.lr_factor, section.batch_size, section.weight_decay) == ("frozen", 0.5, 128, 2e-4)
    assert "cifar10_lt@100" in note
    section, _ = mislas.resolve_section(cfg, {"bn": "shift", "smooth_head": "0.2"})
    assert section.bn == "shift" and section.smooth_head == 0.2
    crt, _ = REFITTERS.get("crt").resolve_section(cfg, {})
    assert (crt.epochs, crt.lr, crt.batch_size, crt.sampler, crt.bn) == (10, 0.2, 512, "class_balanced", "shift")
    with pytest.raises(ConfigError, match="decouple.epoch.*Did you mean 'epochs'"):
        REFITTERS.get("crt").resolve_section(cfg, {"epoch": "3"})
    with pytest.raises(ConfigError, match="decouple.sampler"):
        REFITTERS.get("crt").resolve_section(cfg, {"sampler": "balanced"})
    with pytest.raises(ValueError, match="one key of the method's section"):
        split_overrides(["decouple.crt.lr=0.1"])
    assert split_overrides(["decouple.lr=0.1", "data.root=x"]) == ({"lr": "0.1"}, ["data.root=x"])


def test_every_refitter_is_registered_with_its_paper():
    assert set(REFITTERS) >= {"crt", "lws", "tau_norm", "ncm", "disalign", "mislas"}
    for name, cls in REFITTERS.items():
        assert cls.paper and cls.code and isinstance(cls.Section(), object), name
