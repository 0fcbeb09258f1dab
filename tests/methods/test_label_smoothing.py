"""``loss.label_smoothing`` on the classification losses that take it (ce, bs, la), against a float64 reference
written here: the cross-entropy of the target ``(1 - eps) one_hot(y) + eps / C`` with the softmax of the logits the
loss fits (for Balanced Softmax and logit adjustment the adjusted ones), as torch's
``CrossEntropyLoss(label_smoothing=eps)`` defines it. Values and gradients."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ltcl.config import Config, ConfigError, LossConfig
from ltcl.methods import StepRecord, resolve_config
from ltcl.methods.balanced_softmax import BalancedSoftmax
from ltcl.methods.base import ObjectiveSetup
from ltcl.methods.cross_entropy import CrossEntropy
from ltcl.methods.logit_adjusted import LogitAdjusted, LogitAdjustSection

COUNTS = (40, 10, 5, 1)


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, offsets: list[float], eps: float):
    """mean_i sum_j -q_ij log softmax(z_i + offsets)_j, q = (1 - eps) one_hot + eps / C, in float64."""
    c = logits.shape[1]
    adjusted = logits.double() + torch.tensor(offsets, dtype=torch.float64)
    log_p = adjusted - adjusted.logsumexp(1, keepdim=True)
    q = (1 - eps) * F.one_hot(labels, c).double() + eps / c
    return -(q * log_p).sum(1).mean()


def methods(eps: float):
    loss = LossConfig(label_smoothing=eps)
    log_n = [math.log(n) for n in COUNTS]
    tau = 0.5
    log_prior = [tau * math.log(n / sum(COUNTS)) for n in COUNTS]
    return [
        (CrossEntropy(ObjectiveSetup(COUNTS, loss=loss)), [0.0] * len(COUNTS)),
        (BalancedSoftmax(ObjectiveSetup(COUNTS, loss=loss)), log_n),
        (LogitAdjusted(ObjectiveSetup(COUNTS, loss=loss, section=LogitAdjustSection(tau=tau))), log_prior),
    ]


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.4])
def test_smoothing_matches_the_reference_on_the_adjusted_logits(eps):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(12, len(COUNTS), generator=g, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, len(COUNTS), (12,), generator=g)
    step = StepRecord(logits, labels, None, torch.zeros(12, dtype=torch.bool), 1, 12, None)
    for method, offsets in methods(eps):
        got = method(step).loss
        (grad,) = torch.autograd.grad(got, logits)
        want = smoothed_cross_entropy(logits, labels, offsets, eps)
        (want_grad,) = torch.autograd.grad(want, logits)
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7, msg=method.name)
        torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-7, msg=method.name)


def test_a_method_that_would_ignore_smoothing_refuses_it():
    cfg = Config()
    cfg = replace(cfg, loss=replace(cfg.loss, objective="ldam+acl", label_smoothing=0.1))
    with pytest.raises(ConfigError, match="loss.label_smoothing 0.1 applies to the classification losses"):
        resolve_config(cfg)
    resolve_config(replace(cfg, loss=replace(cfg.loss, objective="la+acl")))  # takes it
