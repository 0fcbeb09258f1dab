"""Labels of the wrong dtype or out of [0, C) give one clear ValueError naming ``labels``, never a RuntimeError
from deep inside torch: in every loss module (dtype always, range while the labels are on the CPU) and in every
validating function of the functional API (dtype and range, on any device)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ltcl.losses import (
    AlignedContrastiveLoss,
    BalancedContrastiveLoss,
    BalancedSoftmaxLoss,
    GPaCoLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    SupConLoss,
    balanced_contrastive_loss,
    gpaco_loss,
    ldam_loss,
)
from ltcl.losses import functional as LF
from ltcl.losses.validation import check_labels

COUNTS = [100, 40, 10, 5, 2]
C, N, D = len(COUNTS), 6, 4
LABELS = torch.tensor([0, 0, 1, 1, 2, 4])


def _inputs():
    g = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(N, D, generator=g), dim=1)
    logits = torch.randn(N, C, generator=g)
    cosines = torch.empty(N, C).uniform_(-1, 1, generator=g)
    rows = F.normalize(torch.randn(C, D, generator=g), dim=1)  # centres or prototypes
    return features, logits, cosines, rows


def _modules():
    """(id, call(labels) -> loss, C or None when the loss has no number of classes); the modules are built here,
    outside the calls, so that a call runs the forward pass only."""
    z, logits, cosines, rows = _inputs()
    bs, la = BalancedSoftmaxLoss(COUNTS), LogitAdjustedLoss(COUNTS, tau=1.0)
    acl = AlignedContrastiveLoss(COUNTS, D, temperature=0.1)
    acl_plain = AlignedContrastiveLoss(COUNTS, D, use_centers=False, negative_weighting="none")
    scl, gpaco, bcl, ldam = SupConLoss(0.1), GPaCoLoss(COUNTS), BalancedContrastiveLoss(C, 0.1), LDAMLoss(COUNTS)
    return [
        ("BalancedSoftmaxLoss", lambda y: bs(logits, y), C),
        ("LogitAdjustedLoss", lambda y: la(logits, y), C),
        ("AlignedContrastiveLoss", lambda y: acl(z, y), C),
        ("AlignedContrastiveLoss-plain", lambda y: acl_plain(z, y), C),
        ("SupConLoss", lambda y: scl(z, y), None),
        ("GPaCoLoss", lambda y: gpaco(z, y, logits), C),
        ("BalancedContrastiveLoss", lambda y: bcl(z, y, rows), C),
        ("LDAMLoss", lambda y: ldam(cosines, y), C),
    ]


def _functions():
    """The functional API's validating functions, as (id, call(labels), C or None)."""
    z, logits, cosines, rows = _inputs()
    return [
        ("aligned_contrastive_loss", lambda y: LF.aligned_contrastive_loss(z, y, temperature=0.1, centers=rows), C),
        (
            "aligned_contrastive_per_anchor",
            lambda y: LF.aligned_contrastive_per_anchor(z, y, temperature=0.1, negative_weights=torch.ones(C)),
            C,
        ),
        ("aligned_contrastive_loss-plain", lambda y: LF.aligned_contrastive_loss(z, y, temperature=0.1), None),
        ("supervised_contrastive_loss", lambda y: LF.supervised_contrastive_loss(z, y, temperature=0.1), None),
        (
            "supervised_contrastive_per_anchor",
            lambda y: LF.supervised_contrastive_per_anchor(z, y, temperature=0.1),
            None,
        ),
        (
            "gradient_conflict_counts",
            lambda y: LF.gradient_conflict_counts(z, y, temperature=0.1, num_classes=C),
            C,
        ),
        ("balanced_softmax_loss", lambda y: LF.balanced_softmax_loss(logits, y, COUNTS), C),
        ("logit_adjusted_loss", lambda y: LF.logit_adjusted_loss(logits, y, COUNTS), C),
        ("gpaco_loss", lambda y: gpaco_loss(z, y, logits, COUNTS), C),
        ("ldam_loss", lambda y: ldam_loss(cosines, y, COUNTS), C),
        ("balanced_contrastive_loss", lambda y: balanced_contrastive_loss(z, y, rows, temperature=0.1), C),
    ]


CASES = [pytest.param(call, c, id=f"module-{name}") for name, call, c in _modules()] + [
    pytest.param(call, c, id=f"functional-{name}") for name, call, c in _functions()
]

WRONG_DTYPES = [
    pytest.param(lambda y: y.float(), "torch.float32", id="float32"),
    pytest.param(lambda y: y.double(), "torch.float64", id="float64"),
    pytest.param(lambda y: y > 0, "torch.bool", id="bool"),
    pytest.param(lambda y: y.int(), "torch.int32", id="int32"),
    pytest.param(lambda y: y.to(torch.uint8), "torch.uint8", id="uint8"),  # would index as a mask
]


def test_every_loss_accepts_good_labels():
    for _, call, _ in _modules() + _functions():
        loss = call(LABELS)
        assert bool(torch.isfinite(loss if isinstance(loss, torch.Tensor) else loss[0]).all())


@pytest.mark.parametrize("cast, given", WRONG_DTYPES)
@pytest.mark.parametrize("call, num_classes", CASES)
def test_labels_of_another_dtype_raise_a_value_error_naming_labels_and_both_dtypes(call, num_classes, cast, given):
    message = rf"^labels must hold integer class indices of dtype torch\.int64, got {given}\.$"
    with pytest.raises(ValueError, match=message):
        call(cast(LABELS))


@pytest.mark.parametrize("call, num_classes", CASES)
def test_negative_labels_raise_a_value_error_naming_labels(call, num_classes):
    labels = LABELS.clone()
    labels[3] = -1
    with pytest.raises(ValueError, match=r"^labels must be >= 0, got -1"):
        call(labels)


@pytest.mark.parametrize("call, num_classes", [case for case in CASES if case.values[1] is not None])
def test_labels_not_below_the_number_of_classes_raise_a_value_error_naming_labels(call, num_classes):
    labels = LABELS.clone()
    labels[2] = num_classes
    with pytest.raises(ValueError, match=rf"^labels must be < the number of classes {num_classes}, got {num_classes}"):
        call(labels)


def test_labels_that_are_not_a_tensor_raise_a_value_error():
    for _, call, _ in _modules():
        with pytest.raises(ValueError, match="^labels must be a 1-D tensor"):
            call(LABELS.tolist())


class _CountSyncs(TorchDispatchMode):
    """Records the ops whose result the host must read (the list of tests/engine/test_host_syncs.py)."""

    OPS = {"_local_scalar_dense", "nonzero", "bincount", "unique", "_unique2", "unique_dim", "masked_select", "item"}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in self.OPS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_module_checks_add_no_host_synchronisation():
    """The modules' label checks read no tensor value through torch (the CPU range check reads the labels'
    memory directly, which waits for no device), so the training step's synchronisation count stays as it was."""
    for name, call, _ in _modules():
        with _CountSyncs() as mode:
            call(LABELS)
        assert mode.calls == [], (name, mode.calls)


def test_off_the_cpu_the_module_check_looks_at_metadata_only():
    """On an accelerator the module path checks shape and dtype, never values (a read would wait for the device);
    meta tensors have no values, so any read would fail here."""
    labels = torch.tensor([0, 9, -3], device="meta")
    check_labels(labels, 3, C, sync=False)  # out of range, but not read
    with pytest.raises(ValueError, match="^labels must hold integer class indices of dtype torch.int64"):
        check_labels(labels.float(), 3, C, sync=False)
    with pytest.raises(ValueError, match=r"^labels must have shape \(4,\): it has 3 entries but there are 4 rows"):
        check_labels(labels, 4, C, sync=False)
    # On the CPU the same call checks the range.
    with pytest.raises(ValueError, match="^labels must be >= 0, got -3"):
        check_labels(torch.tensor([0, 9, -3]), 3, C, sync=False)
