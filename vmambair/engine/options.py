"""Typed, validated BasicSR-style YAML options.

The schema is a tree of dataclasses. Every field carries a one-line description
(``metadata['help']``) and a type; :func:`load_options` turns a YAML file (plus
``key.sub=value`` overrides) into that tree and rejects, before any work starts, with one
paragraph naming the key:

* unknown or misspelt keys (with the closest valid key, via difflib),
* values of the wrong type,
* registry names that do not exist (``network_g.type``, ``train.optim_g.type``, losses,
  metrics, datasets, ``model_type``), with the closest valid names,
* constructor arguments that the named class does not take (checked with ``inspect``),
* dataset folders that do not exist.

Registry-typed sections (``{type: Name, **kwargs}``) stay plain dicts after validation so that
they can be passed straight to the constructor (see :func:`build_from_spec`).
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml


class OptionsError(ValueError):
    """An options file is invalid. The message names the key and how to fix it."""


def opt(default: Any = MISSING, help: str = "", registry: Optional[str] = None, factory=None) -> Any:
    """A schema field: default (or ``factory``), one-line description and optional registry kind."""
    meta = {"help": help, "registry": registry}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# A registry-typed section: {'type': <registered name>, **constructor kwargs}.
RegistrySpec = Dict[str, Any]


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class DatasetOptions:
    """One dataset: ``datasets.train``, ``datasets.val`` / ``val_<k>``, ``datasets.test_<k>``."""

    name: str = opt(help="Display name (used in logs, tables and result folders).")
    type: str = opt("PairedImageFolderDataset", "Dataset class in DATASET_REGISTRY.", registry="dataset")
    dataroot_gt: Optional[str] = opt(None, "Folder of ground-truth (target) images; relative paths resolve against "
                                     "path.data_root (omitted by input-only test sets, e.g. SingleImageFolderDataset).")
    dataroot_lq: Optional[str] = opt(None, "Folder of degraded (input) images, same file names as the GT folder "
                                     "(omitted by datasets that synthesise inputs, e.g. RealESRGANGTDataset).")
    meta_info_file: Optional[str] = opt(None, "Optional text file listing GT file names (first token per line), basicsr style.")
    filename_tmpl: str = opt("{}", "LQ file stem template from the GT stem, e.g. '{}_x4'.")
    io_backend: Dict[str, Any] = opt({"type": "disk"}, "basicsr FileClient backend; only {type: disk} is supported here.")
    use_hflip: bool = opt(True, "Random horizontal flips (training only).")
    use_rot: bool = opt(True, "Random vertical flips and 90-degree rotations (training only).")
    gt_size: Optional[int] = opt(None, "GT patch size for training crops (the largest one when training progressively).")
    mini_gt_sizes: Optional[List[int]] = opt(None, "Progressive training: GT patch size of each stage.")
    mini_batch_sizes: Optional[List[int]] = opt(None, "Progressive training: batch size per GPU of each stage.")
    iters: Optional[List[int]] = opt(None, "Progressive training: number of iterations of each stage.")
    batch_size_per_gpu: int = opt(1, "Batch size per GPU (when not training progressively).")
    num_worker_per_gpu: int = opt(4, "DataLoader worker processes per GPU.")
    use_shuffle: bool = opt(True, "Shuffle the training set every epoch.")
    dataset_enlarge_ratio: int = opt(1, "Repeat the training set this many times per epoch.")
    prefetch_mode: Optional[str] = opt(None, "basicsr compatibility; only null (plain DataLoader) is supported.")
    pin_memory: bool = opt(True, "Pin host memory for faster GPU copies.")
    phase: Optional[str] = opt(None, "Set automatically from the key (train / val / test).")
    scale: Optional[int] = opt(None, "Set automatically from the top-level scale.")
    degradation: Optional[Dict[str, Any]] = opt(None, "Settings of datasets that synthesise their inputs on the fly "
                                                "(Real-ESRGAN degradation parameters; see docs/sr.md).")


@dataclass(kw_only=True)
class PathOptions:
    root: Optional[str] = opt(None, "Folder holding experiments/, tb_logger/ and results/ (default: current directory).")
    data_root: Optional[str] = opt(None, "Base folder for relative dataset paths (set once, e.g. ./Datasets).")
    pretrain_network_g: Optional[str] = opt(None, "Initial / test weights of network_g (.pth or .safetensors).")
    param_key_g: str = opt("params", "Entry of the weight file to load for network_g (params or params_ema).")
    strict_load_g: bool = opt(True, "Require an exact parameter-name match when loading network_g.")
    pretrain_network_d: Optional[str] = opt(None, "Initial weights of network_d (GAN models).")
    param_key_d: str = opt("params", "Entry of the weight file to load for network_d.")
    strict_load_d: bool = opt(True, "Require an exact parameter-name match when loading network_d.")
    resume_state: Optional[str] = opt(None, "Explicit training-state file to resume from (default: the latest one).")
    experiments_root: Optional[str] = opt(None, "Set automatically: <root>/experiments/<name>.")
    results_root: Optional[str] = opt(None, "Set automatically: <root>/results/<name>.")


@dataclass(kw_only=True)
class TrainOptions:
    total_iter: int = opt(help="Total number of training iterations.")
    warmup_iter: int = opt(-1, "Linear learning-rate warm-up iterations (-1: none).")
    optim_g: RegistrySpec = opt(help="Optimizer of network_g: {type: <torch.optim class>, lr: ..., ...}.", registry="optim")
    optim_d: Optional[RegistrySpec] = opt(None, "Optimizer of network_d (GAN models).", registry="optim")
    scheduler: Optional[RegistrySpec] = opt(None, "Learning-rate scheduler: {type: <name>, ...}.", registry="scheduler")
    pixel_opt: Optional[RegistrySpec] = opt(None, "Pixel loss, e.g. {type: L1Loss, loss_weight: 1}.", registry="loss")
    perceptual_opt: Optional[RegistrySpec] = opt(None, "Perceptual loss (GAN models).", registry="loss")
    gan_opt: Optional[RegistrySpec] = opt(None, "Adversarial loss (GAN models).", registry="loss")
    net_d_iters: int = opt(1, "Update network_g every this many iterations (GAN models).")
    net_d_init_iters: int = opt(0, "Iterations that train only network_d at the start (GAN models).")
    ema_decay: float = opt(0.0, "Exponential moving average of network_g weights (0: off, e.g. 0.999).")
    clip_grad_norm: Optional[float] = opt(None, "Clip the gradient norm of network_g to this value (null: off).")
    bf16: bool = opt(True, "bf16 autocast on CUDA devices that support it (CPU always runs fp32).")
    deterministic: bool = opt(False, "Deterministic algorithms (bit-exact resume on CPU; slower on GPU).")
    compile: bool = opt(False, "torch.compile network_g for training on CUDA (the first iterations, and each new "
                                "patch size, spend time compiling).")
    cuda_graph: bool = opt(False, "On CUDA, record network_g's forward, loss and backward as a CUDA graph per batch "
                                  "shape and replay it (one launch instead of thousands; pairs well with compile). "
                                  "Single-network models only; each new patch size records anew.")


@dataclass(kw_only=True)
class ValOptions:
    val_freq: int = opt(5000, "Validate every this many iterations.")
    save_img: bool = opt(False, "Save restored validation / test images.")
    suffix: Optional[str] = opt(None, "Suffix of saved image names.")
    metrics: Dict[str, RegistrySpec] = opt({}, "Metrics: {name: {type: calculate_psnr, crop_border: 0, test_y_channel: true}}.", registry="metric")
    pad_multiple: int = opt(8, "Pad inputs to a multiple of this, and crop outputs back.")
    tile: Optional[int] = opt(None, "Restore in tiles of this size (input pixels) for large images (null: whole image).")
    tile_overlap: int = opt(32, "Overlap of neighbouring tiles, in input pixels.")
    self_ensemble: bool = opt(False, "x8 self-ensemble (flips and rotations) at test time.")
    use_ema: bool = opt(True, "Validate the EMA network when train.ema_decay > 0.")
    num_tb_images: int = opt(2, "How many validation images go to TensorBoard.")
    report_inputs: bool = opt(False, "At the end of training, print each validation image's metrics for the unrestored "
                              "input beside the restored output, and save input | restored | target images.")


@dataclass(kw_only=True)
class LoggerOptions:
    print_freq: int = opt(100, "Print a progress line every this many iterations.")
    save_checkpoint_freq: int = opt(5000, "Save weights and the training state every this many iterations.")
    use_tb_logger: bool = opt(True, "Write TensorBoard scalars and images to tb_logger/<name>.")
    keep_training_states: Optional[int] = opt(3, "Keep only the newest this many training states (null: all).")
    save_safetensors: bool = opt(False, "Also write .safetensors weights beside the .pth ones.")
    profile_iters: Optional[List[int]] = opt(None, "[first, last]: profile these training iterations with "
                                             "torch.profiler (rank 0) into experiments/<name>/profile_iters.md.")
    wandb: Optional[Dict[str, Any]] = opt(None, "basicsr compatibility; not used.")


@dataclass(kw_only=True)
class DistOptions:
    backend: Optional[str] = opt(None, "Process-group backend (default: nccl on GPU, gloo on CPU).")
    port: int = opt(29500, "basicsr compatibility; torchrun sets the address itself.")


@dataclass(kw_only=True)
class Options:
    name: str = opt(help="Experiment name: experiments/<name>, tb_logger/<name>, results/<name>.")
    model_type: str = opt("ImageRestorationModel", "Model class in MODEL_REGISTRY.", registry="model")
    scale: int = opt(1, "Upscaling factor (1 for deraining / denoising).")
    num_gpu: Union[int, str] = opt("auto", "GPUs per process: 'auto' (CUDA if available) or 0 for CPU.")
    manual_seed: int = opt(0, "Random seed (identical on every rank; data order is rank-aware).")
    datasets: Dict[str, DatasetOptions] = opt({}, "Datasets by phase: train, val / val_<k>, test_<k>.")
    network_g: RegistrySpec = opt(help="Restoration network: {type: <ARCH_REGISTRY name>, **kwargs}.", registry="arch")
    network_d: Optional[RegistrySpec] = opt(None, "Discriminator (GAN models).", registry="arch")
    path: PathOptions = opt(help="Paths.", factory=PathOptions)
    train: Optional[TrainOptions] = opt(None, "Training settings (required by train.py).")
    val: Optional[ValOptions] = opt(None, "Validation / test settings.")
    logger: LoggerOptions = opt(help="Logging and checkpointing.", factory=LoggerOptions)
    dist_params: DistOptions = opt(help="Distributed settings.", factory=DistOptions)
    is_train: bool = opt(False, "Set automatically (True under train.py).")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def describe_options(cls=Options, prefix: str = "") -> List[str]:
    """Lines ``key: type -- help`` for every option (for docs and ``train.py --help-options``)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        tp = hints[f.name]
        inner = _dataclass_in(tp)
        lines.append(f"{key}: {_type_name(tp)} -- {f.metadata.get('help', '')}")
        if inner is not None:
            sub_prefix = key + ("." if typing.get_origin(tp) is not dict else ".<name>.")
            lines += describe_options(inner, sub_prefix)
    return lines


# --------------------------------------------------------------------------------------------
# YAML loading with overrides
# --------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``3e-4`` as a float (YAML 1.1 needs a dot: ``3.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+][0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def read_yaml(path: str | os.PathLike) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise OptionsError(f"Options file '{path}' does not exist.")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as err:
        raise OptionsError(f"Options file '{path}' is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise OptionsError(f"Options file '{path}' must hold a mapping of keys at top level.")
    return data


def apply_overrides(raw: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to the raw option dict."""
    for item in overrides or []:
        if "=" not in item:
            raise OptionsError(f"Override '{item}' must look like key.subkey=value, e.g. train.total_iter=1000.")
        key, text = item.split("=", 1)
        value = yaml.load(text, Loader=_Loader) if text != "" else None
        node = raw
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise OptionsError(f"Override '{item}': '{'.'.join(parts[:i + 1])}' is not a section.")
            node = node[part]
        node[parts[-1]] = value
    return raw


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _dataclass_in(tp) -> Optional[type]:
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, List):
        return f"list of {_type_name(args[0])}"
    if origin in (dict, Dict):
        return "mapping" if args[1] is Any else f"mapping of {_type_name(args[1])}"
    return str(tp)


def _close(word: str, choices) -> str:
    choices = sorted(str(c) for c in choices)
    match = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.5)
    if match:
        return f"Did you mean '{match[0]}'?"
    shown = ", ".join(choices[:40]) + (", ..." if len(choices) > 40 else "")
    return f"Valid choices: {shown}."


def _coerce(value: Any, tp, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it (ints widened to floats)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except OptionsError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise OptionsError(f"Option '{key}' must be {_type_name(tp)}, got {value!r}.")
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, key)
    if origin in (list, List):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise OptionsError(f"Option '{key}' must be a {_type_name(tp)}, got {value!r}.")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise OptionsError(f"Option '{key}' must be a mapping, got {value!r}.")
        _, val_tp = typing.get_args(tp)
        return {k: _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # basicsr files write !!float 5e3
            return int(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise OptionsError(f"Option '{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__}).")


def _build_dataclass(cls, raw: Any, key: str):
    where = f"'{key}'" if key else "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise OptionsError(f"Option {where} must be a mapping of keys, got {raw!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in fields:
            full = f"{key}.{name}" if key else str(name)
            raise OptionsError(f"Unknown option '{full}'. {_close(name, fields)} "
                               f"(run `python train.py --help-options` for the full list).")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        full = f"{key}.{name}" if key else name
        if name in raw:
            value = _coerce(raw[name], hints[name], full)
            registry = f.metadata.get("registry")
            if registry and value is not None:
                if name == "metrics":
                    value = {k: validate_registry_spec(v, registry, f"{full}.{k}") for k, v in value.items()}
                elif isinstance(value, str):
                    _check_registry_name(value, registry, full)
                else:
                    value = validate_registry_spec(value, registry, full)
            values[name] = value
        elif f.default is MISSING and f.default_factory is MISSING:  # type: ignore[misc]
            raise OptionsError(f"Option '{full}' is required ({f.metadata.get('help', '')}).")
    return cls(**values)


# ---------------------------------------------------------------- registries
def _registry(kind: str) -> Dict[str, Any]:
    """``{name: class or function}`` of one registry kind, with all providers imported."""
    import vmambair  # noqa: F401  (compat shim before basicsr)
    if kind == "arch":
        import basicsr.archs  # noqa: F401
        from basicsr.utils.registry import ARCH_REGISTRY
        import vmambair.archs  # noqa: F401
        return dict(ARCH_REGISTRY._obj_map)
    if kind == "loss":
        import basicsr.losses  # noqa: F401
        from basicsr.utils.registry import LOSS_REGISTRY
        return dict(LOSS_REGISTRY._obj_map)
    if kind == "metric":
        import basicsr.metrics  # noqa: F401
        from basicsr.utils.registry import METRIC_REGISTRY
        import vmambair.metrics  # noqa: F401
        return dict(METRIC_REGISTRY._obj_map)
    if kind == "dataset":
        from basicsr.utils.registry import DATASET_REGISTRY
        import vmambair.data  # noqa: F401
        from vmambair.data.paired_dataset import TrainableDataset
        # Only datasets that follow our sampler protocol (resumable, seeded per item) work here.
        return {k: v for k, v in DATASET_REGISTRY._obj_map.items()
                if isinstance(v, type) and issubclass(v, TrainableDataset)}
    if kind == "model":
        from basicsr.utils.registry import MODEL_REGISTRY
        import vmambair.models  # noqa: F401
        from vmambair.models.base_model import BaseModel
        return {k: v for k, v in MODEL_REGISTRY._obj_map.items()
                if isinstance(v, type) and issubclass(v, BaseModel)}
    if kind == "optim":
        import torch
        return {k: v for k, v in vars(torch.optim).items()
                if isinstance(v, type) and issubclass(v, torch.optim.Optimizer) and v is not torch.optim.Optimizer}
    if kind == "scheduler":
        from vmambair.engine.lr_scheduler import SCHEDULERS
        return dict(SCHEDULERS)
    raise KeyError(kind)


# Constructor arguments supplied by the framework, not by the options file.
_SUPPLIED_ARGS = {"optim": {"params"}, "scheduler": {"optimizer", "last_epoch", "verbose"},
                  "metric": {"img", "img2", "input_order"}, "arch": set(), "loss": set(),
                  "dataset": {"opt"}, "model": {"opt"}}


def _check_registry_name(name: str, kind: str, key: str) -> Any:
    table = _registry(kind)
    if name not in table:
        raise OptionsError(f"Option '{key}' names '{name}', which is not a registered {kind}. "
                           f"{_close(name, table)}")
    return table[name]


def _kwarg_type_ok(value: Any, param: inspect.Parameter) -> bool:
    default = param.default
    if default is inspect.Parameter.empty or default is None or value is None:
        return True
    # An argument annotated as a Union of plain types (e.g. Union[bool, str]) takes any of them.
    if typing.get_origin(param.annotation) is Union:
        kinds = tuple(a for a in typing.get_args(param.annotation) if isinstance(a, type))
        if kinds:
            return isinstance(value, kinds)
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return True


def validate_registry_spec(spec: Any, kind: str, key: str) -> Dict[str, Any]:
    """Check ``{type: Name, **kwargs}`` against registry ``kind`` and the constructor signature."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise OptionsError(f"Option '{key}' must be a mapping with a 'type' key naming a registered {kind}, "
                           f"got {spec!r}.")
    target = _check_registry_name(spec["type"], kind, f"{key}.type")
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return dict(spec)
    params = {n: p for n, p in sig.parameters.items() if n not in ("self",)}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    supplied = _SUPPLIED_ARGS.get(kind, set())
    for name, value in spec.items():
        if name == "type":
            continue
        if name not in params:
            if takes_any:
                continue
            valid = [n for n, p in params.items() if n not in supplied
                     and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
            raise OptionsError(f"Option '{key}.{name}': {spec['type']} takes no argument '{name}'. "
                               f"{_close(name, valid)}")
        if not _kwarg_type_ok(value, params[name]):
            raise OptionsError(f"Option '{key}.{name}' must be like its default "
                               f"{params[name].default!r} ({type(params[name].default).__name__}), "
                               f"got {value!r}.")
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in spec
               and n not in supplied and p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                        inspect.Parameter.VAR_KEYWORD)]
    if missing:
        raise OptionsError(f"Option '{key}': {spec['type']} needs argument(s) {missing}.")
    return dict(spec)


def build_from_spec(kind: str, spec: Dict[str, Any], *args, **extra) -> Any:
    """Instantiate a validated ``{type: Name, **kwargs}`` spec: ``Name(*args, **kwargs, **extra)``."""
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    kwargs.update(extra)
    try:
        return _registry(kind)[spec["type"]](*args, **kwargs)
    except ValueError as err:
        if kind != "arch":
            raise
        # a network refusing a value its signature lets through
        raise OptionsError(f"Network {spec['type']} rejected its options: {err}") from err


# ---------------------------------------------------------------- whole-file checks
def dataset_phase(key: str) -> str:
    return key.split("_")[0]


def resolve_data_path(path: Optional[str], opts: Options) -> Optional[str]:
    if path is None:
        return None
    p = Path(os.path.expanduser(path))
    if not p.is_absolute() and opts.path.data_root:
        p = Path(os.path.expanduser(opts.path.data_root)) / p
    return str(p)


def _check_semantics(opts: Options, is_train: bool, missing_test_sets: List[str]) -> None:
    for key in list(opts.datasets):
        phase = dataset_phase(key)
        if phase not in ("train", "val", "test"):
            raise OptionsError(f"Dataset key 'datasets.{key}' must start with train, val or test "
                               f"(e.g. val_1, test_rain100h). {_close(key, ['train', 'val', 'test'])}")
        ds = opts.datasets[key]
        ds.phase, ds.scale = phase, opts.scale
        if ds.io_backend.get("type", "disk") != "disk":
            raise OptionsError(f"Option 'datasets.{key}.io_backend.type' is {ds.io_backend.get('type')!r}; "
                               f"only 'disk' is supported.")
        if ds.prefetch_mode not in (None, "cpu"):
            raise OptionsError(f"Option 'datasets.{key}.prefetch_mode' must be null.")
        ds.dataroot_gt = resolve_data_path(ds.dataroot_gt, opts)
        ds.dataroot_lq = resolve_data_path(ds.dataroot_lq, opts)
        ds.meta_info_file = resolve_data_path(ds.meta_info_file, opts)
        ds_cls = _registry("dataset").get(ds.type)
        if ds.dataroot_lq is None and not getattr(ds_cls, "synthesizes_lq", False):
            raise OptionsError(f"Option 'datasets.{key}.dataroot_lq' is required by {ds.type} (folder of input images).")
        if ds.dataroot_gt is None and not getattr(ds_cls, "lq_only", False):
            raise OptionsError(f"Option 'datasets.{key}.dataroot_gt' is required by {ds.type} (folder of ground-truth "
                               f"images); for a test set without ground truth use type SingleImageFolderDataset.")
        # Datasets that generate their data on first use (builds_data, e.g. the quick start's
        # QuickstartRainDataset) create their folders themselves.
        builds = getattr(ds_cls, "builds_data", False)
        missing = [(k, getattr(ds, k)) for k in ("dataroot_gt", "dataroot_lq")
                   if getattr(ds, k) is not None and not builds and not Path(getattr(ds, k)).is_dir()]
        if ds.meta_info_file and not Path(ds.meta_info_file).is_file():
            missing.append(("meta_info_file", ds.meta_info_file))
        if missing:
            if phase == "test" and not is_train:
                missing_test_sets.append(f"{ds.name} ({missing[0][1]})")
                del opts.datasets[key]
                continue
            k, v = missing[0]
            raise OptionsError(f"Option 'datasets.{key}.{k}': folder '{v}' does not exist. Fix the path, or set "
                               f"path.data_root (now {opts.path.data_root!r}) to the folder that holds your datasets.")
        if phase == "train":
            prog = [ds.mini_gt_sizes, ds.mini_batch_sizes, ds.iters]
            if any(p is not None for p in prog):
                if any(p is None for p in prog) or len({len(p) for p in prog}) != 1:
                    raise OptionsError(f"Options 'datasets.{key}.mini_gt_sizes', 'mini_batch_sizes' and 'iters' "
                                       f"must all be given, with the same length (one entry per stage).")
                if ds.gt_size is None:
                    ds.gt_size = max(ds.mini_gt_sizes)
                if max(ds.mini_gt_sizes) > ds.gt_size:
                    raise OptionsError(f"Option 'datasets.{key}.mini_gt_sizes' exceeds gt_size {ds.gt_size}.")
            elif ds.gt_size is None:
                raise OptionsError(f"Option 'datasets.{key}.gt_size' is required for training crops.")
            for name in ("gt_size", "batch_size_per_gpu"):
                if getattr(ds, name) <= 0:
                    raise OptionsError(f"Option 'datasets.{key}.{name}' must be positive.")
    if is_train:
        if opts.train is None:
            raise OptionsError("Section 'train' is required for training (total_iter, optim_g, ...).")
        if "train" not in opts.datasets:
            raise OptionsError(f"Section 'datasets.train' is required for training. "
                               f"{_close('train', opts.datasets) if opts.datasets else ''}")
        if opts.train.total_iter <= 0:
            raise OptionsError("Option 'train.total_iter' must be positive.")
        if opts.val and any(dataset_phase(k) == "val" for k in opts.datasets) and opts.val.val_freq <= 0:
            raise OptionsError("Option 'val.val_freq' must be positive.")
    pi = opts.logger.profile_iters
    if pi is not None and (len(pi) != 2 or not 1 <= pi[0] <= pi[1]):
        raise OptionsError(f"Option 'logger.profile_iters' is {pi}; give [first, last] iteration numbers with "
                           f"1 <= first <= last (e.g. [200, 210]), or null.")
    if isinstance(opts.num_gpu, str) and opts.num_gpu != "auto":
        raise OptionsError(f"Option 'num_gpu' must be an integer or 'auto', got {opts.num_gpu!r}.")


def load_options(path: str | os.PathLike, overrides: Optional[List[str]] = None, is_train: bool = True,
                 missing_test_sets: Optional[List[str]] = None) -> Options:
    """Read, override and validate an options file.

    Args:
        path: YAML file.
        overrides: ``["train.total_iter=100", ...]`` (values parsed as YAML).
        is_train: training (all dataset folders must exist) or testing (test sets whose folders
            are missing are dropped and listed in ``missing_test_sets``).

    Returns:
        The validated :class:`Options` tree, with dataset paths resolved and experiment paths set.

    Raises:
        OptionsError: with one paragraph naming the offending key.
    """
    raw = apply_overrides(read_yaml(path), overrides or [])
    raw.pop("is_train", None)
    opts = _build_dataclass(Options, raw, "")
    opts.is_train = is_train
    missing = missing_test_sets if missing_test_sets is not None else []
    _check_semantics(opts, is_train, missing)
    root = Path(os.path.expanduser(opts.path.root)) if opts.path.root else Path.cwd()
    opts.path.root = str(root)
    opts.path.experiments_root = str(root / "experiments" / opts.name)
    opts.path.results_root = str(root / "results" / opts.name)
    return opts
