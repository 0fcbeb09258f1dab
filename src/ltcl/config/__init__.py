"""Configuration: one dataclass tree (:mod:`.schema`); YAML files hold the values; ``--set key=value`` overrides
them (:mod:`.parse`); :mod:`.checks` holds the value ranges, checked once at load; :mod:`.diff` compares two
configs.

Every hyperparameter of a run lives here, so that the resolved tree saved with each run is the whole definition
of that run: nothing that changes a result is hidden in code.
"""

from ltcl.config.checks import ConfigError, validate
from ltcl.config.diff import changed_keys, describe_changes, flatten
from ltcl.config.parse import apply_override, load_config, save_config
from ltcl.config.schema import (
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    ViewsConfig,
)
from ltcl.config.values import from_dict, migrate_renamed_keys, to_dict, unknown_key

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
    "migrate_renamed_keys",
    "save_config",
    "to_dict",
    "unknown_key",
    "validate",
]
