"""Configuration: one dataclass tree (:mod:`.schema`); YAML files hold the values; ``--set key=value`` overrides
them (:mod:`.parse`); :mod:`.diff` compares two configs.

Every hyperparameter of a run lives here, so that the resolved tree saved with each run is the whole definition
of that run (reference.md, trap 7).
"""

from ltcl.config.diff import changed_keys, describe_changes, flatten
from ltcl.config.parse import (
    ConfigError,
    apply_override,
    from_dict,
    load_config,
    save_config,
    to_dict,
    to_yaml,
)
from ltcl.config.schema import (
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    ViewsConfig,
)

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "ViewsConfig",
    "apply_override",
    "changed_keys",
    "describe_changes",
    "flatten",
    "from_dict",
    "load_config",
    "save_config",
    "to_dict",
    "to_yaml",
]
