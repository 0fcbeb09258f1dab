"""Training methods: one file each, registered by name (``loss.objective``), on one interface.

``from ltcl.methods import Objective, register_objective`` is all a new method needs (see the README's "Add your
own method"); ``ltcl methods`` lists what is registered. Importing this package registers the built-in methods.
"""

from ltcl.methods import (  # noqa: F401  (each registers itself)
    aligned,
    balanced_contrastive,
    balanced_softmax,
    bbn,
    cross_entropy,
    dscl,
    gml,
    gpaco,
    kcl,
    ldam_drw,
    logit_adjusted,
    paco,
    proco,
    supcon,
    tde,
)
from ltcl.methods.base import LossOutput, Objective, ObjectiveSetup, StepRecord
from ltcl.methods.registry import (
    OBJECTIVES,
    build_objective,
    method_parts,
    register_objective,
    resolve_config,
    second_sampler,
    uses_features,
    uses_projections,
)

__all__ = [
    "OBJECTIVES",
    "LossOutput",
    "Objective",
    "ObjectiveSetup",
    "StepRecord",
    "build_objective",
    "method_parts",
    "register_objective",
    "resolve_config",
    "second_sampler",
    "uses_features",
    "uses_projections",
]
