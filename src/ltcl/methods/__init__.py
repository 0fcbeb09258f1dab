"""Training methods: one file each, registered by name (``loss.objective``), on one interface.

``from ltcl.methods import Objective, register_objective`` is all a new method needs (see the README's "Add your
own method"); ``ltcl methods`` lists what is registered. Importing this package imports each of its modules, so the
built-in methods and the mixing strategies of the classification term (``loss.mixing``: ``mixup``, ``cutmix``,
``remix``, :mod:`ltcl.methods.mixing`) register themselves.
"""

import importlib
import pkgutil

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

# Every module of this package is imported, so that each method registers itself: a new method is one new file
# here (with its config and its test), and no list of methods has to be edited.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

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
