"""Reading an options file: YAML (with ``key.sub=value`` overrides), type checks against the
schema, registry checks, and whole-file checks (dataset folders, progressive stages).

:func:`load_options` rejects, before any work starts, with one paragraph naming the key:
unknown or misspelt keys (with the closest valid key), values of the wrong type, registry
names that do not exist, constructor arguments the named class does not take, and dataset
folders that do not exist.
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import MISSING
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from .. import runtime
from .errors import OptionsError, close_match
from .registry import check_registry_name, dataset_class, validate_registry_spec
from .schema import DatasetOptions, Options, _type_name


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
        return build_dataclass(tp, value, key)
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


def build_dataclass(cls, raw: Any, key: str, _plain: bool = False):
    """Build dataclass ``cls`` from the mapping ``raw`` (the options at ``key``), checking every
    key and type against the fields' annotations; unknown keys are refused with the closest one.
    Packages use it for the typed settings they declare next to their classes. A dataset section
    (DatasetOptions) also takes its class's own options (``_plain``: the common ones only)."""
    where = f"'{key}'" if key else "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise OptionsError(f"Option {where} must be a mapping of keys, got {raw!r}.")
    if cls is DatasetOptions and not _plain:
        return _build_dataset_options(raw, key)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in fields:
            full = f"{key}.{name}" if key else str(name)
            raise OptionsError(f"Unknown option '{full}'. {close_match(name, fields)} "
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
                    check_registry_name(value, registry, full)
                else:
                    value = validate_registry_spec(value, registry, full)
            values[name] = value
        elif f.default is MISSING and f.default_factory is MISSING:  # type: ignore[misc]
            raise OptionsError(f"Option '{full}' is required ({f.metadata.get('help', '')}).")
    return cls(**values)


def _build_dataset_options(raw: Dict[str, Any], key: str) -> DatasetOptions:
    """A ``datasets.<key>`` section: the options every dataset takes (DatasetOptions), plus the two
    kinds of typed settings a dataset class declares next to itself, built and checked by the same
    engine: its own keys (``dataset_options``, kept in ``.own``; so a new dataset with new options
    is one file) and, for datasets that synthesise their inputs, the ``degradation`` key
    (``degradation_options``, with its ``check(settings, key)`` for consistency)."""
    name = raw.get("type", "PairedImageFolderDataset")
    own_cls = getattr(dataset_class(name), "dataset_options", None) if isinstance(name, str) else None
    own_names = {f.name for f in dataclasses.fields(own_cls)} if own_cls is not None else set()
    valid = own_names | {f.name for f in dataclasses.fields(DatasetOptions)}
    for k in raw:
        if k not in valid:
            raise OptionsError(f"Unknown option '{key}.{k}'. {close_match(k, valid)} (run `python train.py "
                               f"--help-options` for the common keys; {name}'s own keys: "
                               f"{', '.join(sorted(own_names)) or 'none'}).")
    opts = build_dataclass(DatasetOptions, {k: v for k, v in raw.items() if k not in own_names}, key, _plain=True)
    if own_cls is not None:
        opts.own = build_dataclass(own_cls, {k: v for k, v in raw.items() if k in own_names}, key)
    settings_cls = getattr(dataset_class(opts.type), "degradation_options", None)
    if opts.degradation is not None and settings_cls is None:
        raise OptionsError(f"Option '{key}.degradation': {opts.type} takes no degradation settings; remove the key "
                           f"(datasets that synthesise their inputs, e.g. RealESRGANGTDataset or "
                           f"QuickstartRainDataset, take one).")
    if settings_cls is not None:
        opts.degradation = build_dataclass(settings_cls, opts.degradation, f"{key}.degradation")
        check = getattr(settings_cls, "check", None)
        if check is not None:
            check(opts.degradation, f"{key}.degradation")
    return opts


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
                               f"(e.g. val_1, test_rain100h). {close_match(key, ['train', 'val', 'test'])}")
        ds = opts.datasets[key]
        ds.phase, ds.scale = phase, opts.scale
        backend = ds.io_backend.get("type", "disk")
        if backend not in ("disk", "lmdb"):
            raise OptionsError(f"Option 'datasets.{key}.io_backend.type' is {backend!r}; use 'disk' (image folders) "
                               f"or 'lmdb' (databases written by scripts/create_lmdb.py).")
        if ds.prefetch_mode not in (None, "cpu"):
            raise OptionsError(f"Option 'datasets.{key}.prefetch_mode' must be null.")
        ds.dataroot_gt = resolve_data_path(ds.dataroot_gt, opts)
        ds.dataroot_lq = resolve_data_path(ds.dataroot_lq, opts)
        ds.meta_info_file = resolve_data_path(ds.meta_info_file, opts)
        ds_cls = dataset_class(ds.type)
        if ds.dataroot_lq is None and not ds_cls.synthesizes_lq:
            raise OptionsError(f"Option 'datasets.{key}.dataroot_lq' is required by {ds.type} (folder of input images).")
        if ds.dataroot_gt is None and not ds_cls.lq_only:
            raise OptionsError(f"Option 'datasets.{key}.dataroot_gt' is required by {ds.type} (folder of ground-truth "
                               f"images); for a test set without ground truth use type SingleImageFolderDataset.")
        # Datasets that generate their data on first use (builds_data, e.g. the quick start's
        # QuickstartRainDataset) create their folders themselves.
        builds = ds_cls.builds_data
        missing = [(k, getattr(ds, k)) for k in ("dataroot_gt", "dataroot_lq")
                   if getattr(ds, k) is not None and not builds and not Path(getattr(ds, k)).is_dir()]
        if ds.meta_info_file and not Path(ds.meta_info_file).is_file():
            missing.append(("meta_info_file", ds.meta_info_file))
        if backend == "lmdb" and not missing:
            for k in ("dataroot_gt", "dataroot_lq"):
                root = getattr(ds, k)
                if root is not None and not builds and not (Path(root) / "data.mdb").is_file():
                    raise OptionsError(f"Option 'datasets.{key}.{k}': '{root}' is not an LMDB folder (no data.mdb) "
                                       f"but io_backend.type is 'lmdb'. Pack the images with `python "
                                       f"scripts/create_lmdb.py -i <image folder> -o {root}`, or set "
                                       f"io_backend: {{type: disk}} for an image folder.")
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
                               f"{close_match('train', opts.datasets) if opts.datasets else ''}")
        if opts.train.total_iter <= 0:
            raise OptionsError("Option 'train.total_iter' must be positive.")
        if opts.val and any(dataset_phase(k) == "val" for k in opts.datasets) and opts.val.val_freq <= 0:
            raise OptionsError("Option 'val.val_freq' must be positive.")
    if opts.train is not None:
        _check_train(opts.train)
    _check_wandb(opts.logger.wandb)
    pi = opts.logger.profile_iters
    if pi is not None and (len(pi) != 2 or not 1 <= pi[0] <= pi[1]):
        raise OptionsError(f"Option 'logger.profile_iters' is {pi}; give [first, last] iteration numbers with "
                           f"1 <= first <= last (e.g. [200, 210]), or null.")
    if isinstance(opts.num_gpu, str) and opts.num_gpu != "auto":
        raise OptionsError(f"Option 'num_gpu' must be an integer or 'auto', got {opts.num_gpu!r}.")


PRECISIONS = ("bf16", "fp16", "fp32")
WANDB_KEYS = ("project", "entity", "name", "resume_id")


def _check_train(t) -> None:
    """Resolve ``train.precision`` against its old spelling ``train.bf16`` (both kept consistent
    afterwards: ``bf16`` is true exactly when precision is bf16), and check the step options."""
    if t.precision is not None and t.precision not in PRECISIONS:
        raise OptionsError(f"Option 'train.precision' is {t.precision!r}; use one of {', '.join(PRECISIONS)}.")
    if t.precision is not None and t.bf16 is not None and t.bf16 != (t.precision == "bf16"):
        raise OptionsError(f"Options 'train.precision: {t.precision}' and 'train.bf16: {str(t.bf16).lower()}' "
                           f"disagree; 'bf16' is the old spelling of precision (true = bf16, false = fp32): "
                           f"remove train.bf16 and keep train.precision.")
    if t.precision is None:
        t.precision = "fp32" if t.bf16 is False else "bf16"
    t.bf16 = t.precision == "bf16"
    if t.accumulate < 1:
        raise OptionsError(f"Option 'train.accumulate' must be >= 1 (micro-batches per optimizer step), "
                           f"got {t.accumulate}.")
    if t.max_nonfinite_steps < 0:
        raise OptionsError(f"Option 'train.max_nonfinite_steps' must be >= 0 (0: never stop), "
                           f"got {t.max_nonfinite_steps}.")


def _check_wandb(wandb) -> None:
    """``logger.wandb``: only the keys wandb logging reads, each a string or null (a null
    ``project``, basicsr's default, leaves wandb off)."""
    if wandb is None:
        return
    for k, v in wandb.items():
        if k not in WANDB_KEYS:
            raise OptionsError(f"Unknown option 'logger.wandb.{k}'. {close_match(k, WANDB_KEYS)} "
                               f"(logger.wandb takes {', '.join(WANDB_KEYS)}).")
        if v is not None and not isinstance(v, str):
            raise OptionsError(f"Option 'logger.wandb.{k}' must be a string, got {v!r}.")


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
        Its ``runtime:`` section is applied to ``vmambair.runtime`` (process-wide switches).

    Raises:
        OptionsError: with one paragraph naming the offending key.
    """
    raw = apply_overrides(read_yaml(path), overrides or [])
    raw.pop("is_train", None)
    opts = build_dataclass(Options, raw, "")
    opts.is_train = is_train
    missing = missing_test_sets if missing_test_sets is not None else []
    _check_semantics(opts, is_train, missing)
    root = Path(os.path.expanduser(opts.path.root)) if opts.path.root else Path.cwd()
    opts.path.root = str(root)
    opts.path.experiments_root = str(root / "experiments" / opts.name)
    opts.path.results_root = str(root / "results" / opts.name)
    try:
        runtime.configure(**opts.runtime.changes())
    except ValueError as err:
        raise OptionsError(f"Options file '{path}', section 'runtime': {err}") from None
    return opts
