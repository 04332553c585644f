"""The options layer: schema, errors, registries and loading. It imports nothing above it."""
from .errors import OptionsError, close_match  # noqa: F401
from .schema import (DatasetOptions, DistOptions, LoggerOptions, Options, PathOptions,  # noqa: F401
                     TrainOptions, ValOptions, describe_options, opt)
from .registry import (ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY,  # noqa: F401
                       MODEL_REGISTRY, SCHEDULER_REGISTRY, build_from_spec, check_registry_name, registry,  # noqa: F401
                       validate_registry_spec)
from .bundled import bundled_options, options_dir  # noqa: F401
from .loading import apply_overrides, build_dataclass, dataset_phase, load_options, read_yaml, resolve_data_path  # noqa: F401
