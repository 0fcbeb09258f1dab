"""Training methods: one file each, registered by name (``loss.objective``), on one interface.

``from ltcl.methods import Objective, register_objective`` is all a new method needs (see the README's "Add your
own method"); ``ltcl methods`` lists what is registered. Importing this package registers the built-in methods and
the mixing strategies of the classification term (``loss.mixing``: ``mixup``, ``cutmix``, ``remix``,
:mod:`ltcl.methods.mixing`).
"""

from ltcl.methods import (  # noqa: F401  (each registers itself)
    aligned,
    balanced_contrastive,
    balanced_softmax,
    bbn,
    cb_ce,
    cb_focal,
    cb_sigmoid,
    cross_entropy,
    cutmix,
    dscl,
    focal,
    gml,
    gpaco,
    kcl,
    lade,
    ldam_drw,
    logit_adjusted,
    mixup,
    paco,
    pc_softmax,
    proco,
    remix,
    supcon,
    tde,
)
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.mixing import Mixing
from ltcl.methods.registry import (
    MIXINGS,
    OBJECTIVES,
    balanced_logits,
    build_objective,
    method_parts,
    mixing_strategy,
    register_mixing,
    register_objective,
    resolve_config,
    second_sampler,
    uses_features,
    uses_projections,
)

__all__ = [
    "MIXINGS",
    "OBJECTIVES",
    "balanced_logits",
    "LossOutput",
    "Mixing",
    "Objective",
    "ObjectiveSetup",
    "StepRecord",
    "build_objective",
    "method_parts",
    "mixing_strategy",
    "register_mixing",
    "register_objective",
    "resolve_config",
    "second_sampler",
    "uses_features",
    "uses_projections",
]
