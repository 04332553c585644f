"""The option schema: a tree of dataclasses, every field with a type and a one-line description.

Registry-typed sections (``{type: Name, **kwargs}``) stay plain dicts; ``vmambair.config.registry``
checks them against the named class. ``describe_options`` prints the whole tree
(``python train.py --help-options``).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Dict, List, Optional, Union


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
    io_backend: Dict[str, Any] = opt({"type": "disk"}, "Where images are read from: {type: disk} (image folders) or "
                                     "{type: lmdb} (dataroot_gt / dataroot_lq are .lmdb folders written by "
                                     "scripts/create_lmdb.py, basicsr's layout).")
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
    own: Optional[Any] = opt(None, "Set automatically: the dataset class's own options (its dataset_options "
                             "dataclass), given as keys of this section beside the common ones.")
    degradation: Optional[Any] = opt(None, "Settings of datasets that synthesise their inputs on the fly, typed by the "
                                     "dataset class's degradation_options (Real-ESRGAN's parameters: docs/sr.md; "
                                     "the quick start's rain: vmambair/data/quickstart.py).")


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
    precision: Optional[str] = opt(None, "Autocast precision of network_g on CUDA: bf16 (default; Ampere or newer), "
                                   "fp16 (with a gradient scaler; V100 / T4 / RTX 20xx) or fp32. CPU always runs fp32.")
    bf16: Optional[bool] = opt(None, "Old spelling of precision: true = bf16, false = fp32 (set automatically from "
                               "train.precision; giving both with different meanings is an error).")
    accumulate: int = opt(1, "Gradient accumulation: micro-batches per optimizer step (global batch = batch x GPUs x "
                             "accumulate). Iterations count optimizer steps.")
    max_nonfinite_steps: int = opt(10, "Stop training with an error after this many optimizer steps in a row were "
                                       "skipped for a non-finite loss or gradient (0: never stop).")
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
    tile: Optional[int] = opt(None, "Tile size (input pixels). null: the whole image where its estimated memory fits in "
                              "the free memory, else the largest tiles that fit; 0: always the whole image.")
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
    wandb: Optional[Dict[str, Any]] = opt(None, "Weights & Biases logging: {project, entity, name, resume_id} "
                                          "(needs pip install -e \".[wandb]\"; WANDB_MODE=offline works without "
                                          "network; a resumed run continues the same wandb run).")


@dataclass(kw_only=True)
class DistOptions:
    backend: Optional[str] = opt(None, "Process-group backend (default: nccl on GPU, gloo on CPU).")
    port: int = opt(29500, "Master port under SLURM srun when MASTER_PORT is not set (torchrun sets its own).")


@dataclass(kw_only=True)
class RuntimeOptions:
    """Performance switches (vmambair.runtime) for this run; null leaves a switch as it is."""

    scan_backend: Optional[str] = opt(None, "Selective-scan backend: auto, cuda, mamba_ssm, cpu, torch or reference "
                                      "(null: automatic, or VMAMBAIR_SCAN_BACKEND).")
    fused_max_pixels: Optional[int] = opt(None, "Largest batch*H*W that uses the fused four-direction scan (default 65536).")
    scan_columns: Optional[str] = opt(None, "The fused scan's column mode: mixed (default), transposed or staged.")
    effn_align: Optional[int] = opt(None, "Pad EFFN hidden layers to a multiple of this many channels (default 8; 0: off).")
    recompile_limit: Optional[int] = opt(None, "torch.compile recompiles allowed per function (default 32).")
    activation_memory_budget: Optional[float] = opt(None, "Compiled training: fraction (0-1) of the activations kept for "
                                                    "the backward; the cheapest others are recomputed (default 1.0).")
    inference_scan_directions: Optional[Union[int, str]] = opt(None, "Unfused planar scans without gradients: directions "
                                                               "per scan call, 4, 2 or 1 (less peak memory) or auto "
                                                               "(default: 1 on the CPU, 4 on GPUs).")

    def changes(self) -> Dict[str, Any]:
        """The switches this section sets: ``{name: value}`` without the nulls."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


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
    runtime: RuntimeOptions = opt(help="Performance switches (scan backend, fused-scan limits, ...).",
                                  factory=RuntimeOptions)
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
