"""Configs: YAML files become dataclasses; `--set a.b=c` overrides any field; errors name the field.

    cfg = load_config("configs/skd.yaml", overrides=["train.max_steps=10", "rollout.skd_top_k=5"])

Every field is typed. Loading checks types and allowed values, and an unknown key is an error that suggests
the closest valid key; a renamed key is an error that names its new key (RENAMED).

schema.py: the sections and their defaults; building.py: dicts to dataclasses; validation.py: range checks;
stages.py: rollout.schedule's stages; loading.py: files, overrides and saving. Config imports nothing of the
package but errors: the task names and devices it holds are checked where they are looked up.
"""

from .building import RENAMED, build
from .loading import (PACKAGED_CONFIGS, apply_override, load_config, load_prompt_config, resolve_config_path,
                      save_config, to_dict, yaml_reason)
from .schema import (DEFAULT_CHUNK_SIZE, Config, ConfigError, DataConfig, DatasetConfig, FieldMap, LoraConfig,
                     LossConfig, MixtureStage, ModelConfig, RolloutConfig, TrainConfig, ViewConfig)
from .stages import rollout_at, rollout_stages, stage_step
from .validation import validate

__all__ = [
    "DEFAULT_CHUNK_SIZE", "PACKAGED_CONFIGS", "RENAMED", "Config", "ConfigError", "DataConfig", "DatasetConfig",
    "FieldMap", "LoraConfig", "LossConfig", "MixtureStage", "ModelConfig", "RolloutConfig", "TrainConfig",
    "ViewConfig", "apply_override", "build", "load_config", "load_prompt_config", "resolve_config_path",
    "rollout_at", "rollout_stages", "save_config", "stage_step", "to_dict", "validate", "yaml_reason",
]
