"""Run configs: the shared sections (sections.py), the checks every field goes through (checks.py), and building,
loading and saving a RunConfig (loading.py). Each method's own section is in engine/methods/<name>/config.py."""

from engine.config.checks import (  # noqa: F401
                                  ConfigError,
                                  check_data_ref,
                                  check_model_ref,
                                  is_local_ref,
                                  resolve_path,
                                  resolve_source,
)
from engine.config.loading import (  # noqa: F401
                                  RunConfig,
                                  config_fields,
                                  config_from_dict,
                                  config_to_dict,
                                  default_config,
                                  field_help,
                                  load_config,
                                  save_config,
)
from engine.config.sections import DataSection, LoggingSection, LoraSection, ModelSection, TrainingSection  # noqa: F401
