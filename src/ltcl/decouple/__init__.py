"""Two-stage re-fitters (``ltcl decouple``): a new classifier on the frozen backbone of a trained run.

One file per re-fitter, each registered in :data:`REFITTERS` (:func:`register_refitter`):

- ``crt``: classifier re-training, class-balanced (Kang et al., ICLR 2020);
- ``lws``: learnable weight scaling (Kang et al., ICLR 2020);
- ``tau_norm``: tau-normalised weights, tau chosen on the validation split (Kang et al., ICLR 2020);
- ``ncm``: nearest class mean (Kang et al., ICLR 2020);
- ``disalign``: adaptive calibration and generalized re-weighting (Zhang et al., CVPR 2021);
- ``mislas``: label-aware smoothing and shifted BatchNorm statistics (Zhong et al., CVPR 2021, stage 2).

This package sits above the engine (it builds the network, the loaders and the evaluation with
:mod:`ltcl.engine`), which never imports it; that is why it is not under :mod:`ltcl.methods`, the registry of
training objectives that the engine itself imports. The classifiers evaluation must rebuild (``ncm``,
``disalign``) are registered in :mod:`ltcl.models.refit_heads`, so ``ltcl eval`` needs nothing from here.
"""

from ltcl.decouple import crt, disalign, lws, mislas, ncm, tau_norm  # noqa: F401  (each registers itself)
from ltcl.decouple.base import REFITTERS, RefitSetup, Refitter, epoch_cosine, register_refitter
from ltcl.decouple.records import DecoupleResult
from ltcl.decouple.run import decouple

__all__ = ["REFITTERS", "DecoupleResult", "RefitSetup", "Refitter", "decouple", "epoch_cosine", "register_refitter"]
