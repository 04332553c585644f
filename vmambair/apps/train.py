"""The training loop behind ``train.py``.

``python train.py -opt x.yml`` and ``torchrun --nproc_per_node=N train.py -opt x.yml`` run the
same code: the distributed context comes from the environment. Re-running the same command
resumes from the newest complete training state (pass ``--no-resume`` to start over; the old
experiment folder is then archived, basicsr style).

Robustness (docs/training.md): SIGTERM / SIGINT finish the current iteration, save a training state
at it and exit 143 / 130 (every rank at the same iteration); a non-finite loss or gradient skips
the optimizer step, and ``train.max_nonfinite_steps`` of them in a row stop the run with an error
(exit 1), leaving the last good checkpoint as the newest one. ``train.accumulate`` = K feeds K
micro-batches per iteration (one optimizer step); checkpoints fall between iterations only.

Experiment layout (basicsr's)::

    experiments/<name>/models/net_g_<iter>.pth, net_g_latest.pth   ({'params', 'params_ema'})
    experiments/<name>/training_states/<iter>.state                (everything to resume)
    experiments/<name>/visualization/<val set>/<img>_<iter>.png
    experiments/<name>/train_<name>_<time>.log, train_log.jsonl    (progress lines / numbers)
    tb_logger/<name>/                                               (TensorBoard)
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

import vmambair  # noqa: F401  (compat shim + registries)
from basicsr.utils.registry import DATASET_REGISTRY, MODEL_REGISTRY

from vmambair.data.image_io import DataError

from ..engine.checkpoint import (CheckpointError, list_training_states, load_latest_training_state,
                                 remove_stale_temp_files, safe_torch_load, save_training_state)
from ..engine.dist import DistContext, init_dist_from_env, shutdown_dist
from ..engine.evaluate import build_eval_loader, evaluate_dataset
from ..config import Options, OptionsError, dataset_phase, describe_options, load_options
from ..engine.profiling import IterationProfiler

STATE_FORMAT = "vmambair-training-state-1"
logger = logging.getLogger("vmambair")

# Exit codes of a run stopped by a signal after saving (128 + the signal number, as a shell
# reports a process killed by it, so schedulers and scripts read them the usual way).
SIGNAL_EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class TrainingInterrupted(Exception):
    """SIGTERM / SIGINT stopped the run after the training state of ``iteration`` was saved."""

    def __init__(self, signum: int, iteration: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at iteration {iteration}")
        self.signum, self.iteration = signum, iteration
        self.exit_code = SIGNAL_EXIT_CODES.get(signum, 1)


class NonFiniteTrainingError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class StopSignals:
    """Turns SIGTERM / SIGINT into a request to stop after the current iteration.

    The first signal only sets :attr:`signum`; the trainer finishes the iteration, saves and
    exits. A second SIGINT (Ctrl+C twice) raises KeyboardInterrupt at once, without saving.
    Installed in the main thread only (Python delivers signals there).
    """

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}
        self._pid = os.getpid()

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            return  # a DataLoader worker forked with this handler, before its init function ran
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        again = "; Ctrl+C again aborts without saving" if signum == signal.SIGINT else ""
        logger.warning(f"Received {signal.Signals(signum).name}: finishing this iteration, then saving a "
                       f"training state and exiting (the same command resumes){again}.")

    def __enter__(self) -> "StopSignals":
        import threading
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNAL_EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _ignore_stop_signals_in_worker(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / SIGINT to the main process (a terminal's Ctrl+C and
    SLURM's scancel reach the whole process group; a worker killed by them would make the main
    process fail mid-step). The main process ends them itself: :func:`_shut_down_workers`, on
    every way out of the training loop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _shut_down_workers(batches) -> None:
    """Stop a DataLoader iterator's worker processes now (they ignore SIGTERM, so they must not
    be left for the interpreter's exit, which would wait for them forever)."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


class WandbLogger:
    """``logger.wandb``: losses, learning rate, metrics and validation images in a Weights & Biases
    run (rank 0 only). The run id is kept in the training state, so a resumed run continues the
    same wandb run; ``WANDB_MODE=offline`` logs to files without network (``wandb sync`` later)."""

    def __init__(self, settings: Dict[str, Any], opt: Options, run_id: Optional[str], folder: Path):
        wandb = import_wandb()
        self.wandb = wandb
        run_id = run_id or settings.get("resume_id")  # None: wandb makes a new id (kept in the state)
        self.run = wandb.init(project=settings["project"], entity=settings.get("entity"),
                              name=settings.get("name") or opt.name, id=run_id, resume="allow",
                              config=opt.to_dict(), dir=str(folder))
        self.run_id = self.run.id

    def log(self, values: Dict[str, float], iteration: int) -> None:
        self.run.log(dict(values), step=iteration)

    def log_images(self, name: str, images: List[np.ndarray], iteration: int) -> None:
        """``images``: HxWx3 uint8 RGB strips (input | restored | target)."""
        if images:
            self.run.log({f"val/{name}": [self.wandb.Image(img) for img in images]}, step=iteration)

    def close(self) -> None:
        self.run.finish()


def import_wandb():
    """The ``wandb`` module, or an OptionsError that names the extra to install."""
    try:
        import wandb
    except ImportError:
        raise OptionsError("Option 'logger.wandb' needs the wandb package: pip install -e \".[wandb]\" "
                           "(or remove logger.wandb).") from None
    return wandb


# ----------------------------------------------------------------------------- progressive
class ProgressiveSchedule:
    """Restormer's progressive training: stage ``i`` uses GT patches ``gt_sizes[i]`` and batch
    ``batch_sizes[i]`` (per GPU) for ``iters[i]`` iterations; the last stage runs to the end.
    Without progressive options it is a single stage (gt_size, batch_size_per_gpu)."""

    def __init__(self, gt_sizes: List[int], batch_sizes: List[int], iters: Optional[List[int]] = None):
        self.gt_sizes, self.batch_sizes = list(gt_sizes), list(batch_sizes)
        self.ends = list(np.cumsum(iters)) if iters else [float("inf")]

    @classmethod
    def from_options(cls, ds) -> "ProgressiveSchedule":
        if ds.mini_gt_sizes:
            return cls(ds.mini_gt_sizes, ds.mini_batch_sizes, ds.iters)
        return cls([ds.gt_size], [ds.batch_size_per_gpu])

    def stage_at(self, completed_iters: int) -> int:
        """Stage of the iteration that follows ``completed_iters`` finished iterations."""
        for i, end in enumerate(self.ends):
            if completed_iters < end:
                return i
        return len(self.ends) - 1

    def __len__(self) -> int:
        return len(self.gt_sizes)


# ----------------------------------------------------------------------------- RNG state
def capture_rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch (CPU and CUDA) RNG states as tensors / numbers (weights_only-safe)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {"python": torch.tensor(py_state, dtype=torch.int64), "python_version": py_version,
             "python_gauss": py_gauss, "numpy": torch.from_numpy(np_keys.astype(np.int64)),
             "numpy_pos": int(np_pos), "numpy_has_gauss": int(np_has_gauss), "numpy_cached": float(np_cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- logging
def setup_logging(ctx: DistContext, log_file: Optional[Path]) -> None:
    """Rank 0 logs INFO to stdout and the log file; other ranks only print warnings."""
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if ctx.is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if ctx.is_main and log_file is not None:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """One training run: builds everything from options, resumes, loops, validates, saves."""

    def __init__(self, opt: Options, ctx: DistContext, resume: bool = True):
        self.opt, self.ctx = opt, ctx
        exp = Path(opt.path.experiments_root)
        self.exp_dir = exp
        self.models_dir, self.states_dir, self.vis_dir = exp / "models", exp / "training_states", exp / "visualization"
        self.tb_dir = Path(opt.path.root) / "tb_logger" / opt.name

        state = None
        if opt.path.resume_state:
            state = safe_torch_load(opt.path.resume_state)
            state["_path"] = opt.path.resume_state
        elif resume:
            state = load_latest_training_state(self.states_dir, log=print)
        if ctx.is_main:
            if state is None and not resume and exp.exists():
                stamp = time.strftime("%Y%m%d_%H%M%S")
                exp.rename(exp.with_name(f"{exp.name}_archived_{stamp}"))
                if self.tb_dir.exists():
                    self.tb_dir.rename(self.tb_dir.with_name(f"{self.tb_dir.name}_archived_{stamp}"))
            for d in (self.models_dir, self.states_dir, self.vis_dir):
                d.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files([self.models_dir, self.states_dir])
        ctx.barrier()
        setup_logging(ctx, exp / f"train_{opt.name}_{time.strftime('%Y%m%d_%H%M%S')}.log" if ctx.is_main else None)
        if state is not None and state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"Training state '{state.get('_path')}' is not a vmambair training state "
                                  f"(format {state.get('format')!r}).")

        t = opt.train
        self.wandb_settings = opt.logger.wandb if (opt.logger.wandb or {}).get("project") else None
        if self.wandb_settings is not None:
            import_wandb()  # a missing package fails here, before any expensive work
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        set_seed(opt.manual_seed)

        # Data before the model: bad data fails fast, before any expensive work.
        ds_opt = opt.datasets["train"]
        self.train_set = DATASET_REGISTRY.get(ds_opt.type)(ds_opt)
        self.schedule = ProgressiveSchedule.from_options(ds_opt)
        self.val_sets = {k: DATASET_REGISTRY.get(v.type)(v) for k, v in opt.datasets.items()
                         if dataset_phase(k) == "val"}

        self.model = MODEL_REGISTRY.get(opt.model_type)(opt, ctx)
        self.iteration, self.epoch, self.epoch_offset = 0, 0, 0
        self.nonfinite_total, self.nonfinite_streak, self.fp16_overflows = 0, 0, 0
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.nonfinite_total = int(state.get("nonfinite_steps", 0))
            self.iteration, self.epoch, self.epoch_offset = state["iter"], state["epoch"], state["epoch_offset"]
            if state["world_size"] != ctx.world_size:
                # Data order depends on the world size; continue at the start of the next epoch.
                logger.warning(f"Resuming a {state['world_size']}-process run with {ctx.world_size} processes: "
                               f"the data order restarts at epoch {self.epoch + 1}.")
                self.epoch, self.epoch_offset = self.epoch + 1, 0
            restore_rng_state(state["rng"])
            logger.info(f"Resumed from {state['_path']} at iteration {self.iteration} "
                        f"(epoch {self.epoch}, stage {self.schedule.stage_at(self.iteration) + 1}).")

        self.tb = None
        if ctx.is_main and opt.logger.use_tb_logger:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(self.tb_dir))
        self.jsonl = open(exp / "train_log.jsonl", "a") if ctx.is_main else None
        self.wandb = None
        if ctx.is_main and self.wandb_settings is not None:
            self.wandb = WandbLogger(self.wandb_settings, opt, state.get("wandb_run_id") if state else None, exp)
            logger.info(f"Logging to wandb run {self.wandb.run_id} (project {self.wandb_settings['project']}).")

    # ------------------------------------------------------------------ data
    def _make_loader(self, stage: int):
        from vmambair.data.paired_dataset import ResumableBatchSampler
        ds_opt = self.opt.datasets["train"]
        self.train_set.set_patch_size(self.schedule.gt_sizes[stage])
        batch = self.schedule.batch_sizes[stage]
        sampler = ResumableBatchSampler(len(self.train_set), batch, self.ctx.rank, self.ctx.world_size,
                                        self.opt.manual_seed, ds_opt.use_shuffle, self.epoch, self.epoch_offset)
        if sampler.per_rank < batch:
            raise DataError(f"Training set '{ds_opt.dataroot_lq or ds_opt.dataroot_gt}' has {len(self.train_set)} samples, fewer than "
                            f"batch size {batch} x {self.ctx.world_size} process(es); add images or raise "
                            f"datasets.train.dataset_enlarge_ratio.")
        workers = ds_opt.num_worker_per_gpu
        loader = DataLoader(self.train_set, batch_sampler=sampler, num_workers=workers,
                            pin_memory=ds_opt.pin_memory and self.ctx.device.type == "cuda",
                            persistent_workers=False,
                            worker_init_fn=_ignore_stop_signals_in_worker if workers > 0 else None)
        return iter(loader), batch

    # ------------------------------------------------------------------ state
    def training_state(self) -> Dict[str, Any]:
        return {"format": STATE_FORMAT, "iter": self.iteration, "epoch": self.epoch,
                "epoch_offset": self.epoch_offset, "stage": self.schedule.stage_at(self.iteration),
                "world_size": self.ctx.world_size, "model": self.model.state_dict(), "rng": capture_rng_state(),
                "nonfinite_steps": self.nonfinite_total,
                **({"wandb_run_id": self.wandb.run_id} if self.wandb is not None else {})}

    def save(self) -> None:
        self.saved_at = self.iteration
        if self.ctx.is_main:
            lg = self.opt.logger
            self.model.save_weights(self.models_dir, self.iteration, safetensors=lg.save_safetensors)
            # The state goes last: once it exists, everything it refers to is complete.
            save_training_state(self.training_state(), self.states_dir, self.iteration, lg.keep_training_states)
            logger.info(f"Saved weights and training state at iteration {self.iteration}.")
        self.ctx.barrier()

    # ------------------------------------------------------------------ validation
    def validate(self) -> Dict[str, Dict[str, float]]:
        results = {}
        if self.ctx.is_main and self.val_sets and self.opt.val is not None:
            val = self.opt.val
            net = self.model.inference_network(use_ema=val.use_ema)
            bf16 = self.model.autocast_bf16
            for key, ds in self.val_sets.items():
                name = self.opt.datasets[key].name
                save_dir = self.vis_dir / name if val.save_img else None
                means, n, samples = evaluate_dataset(net, build_eval_loader(ds), val, self.opt.scale,
                                                     self.ctx.device, bf16, save_dir, suffix=str(self.iteration),
                                                     num_samples=val.num_tb_images if self.tb or self.wandb else 0,
                                                     precision=self.model.precision)
                results[name] = means
                text = ", ".join(f"{m} {v:.4f}" for m, v in means.items())
                logger.info(f"Validation {name} ({n} images) at iteration {self.iteration}: {text}")
                if self.tb:
                    for m, v in means.items():
                        self.tb.add_scalar(f"metrics/{name}/{m}", v, self.iteration)
                    for i, img in enumerate(samples):
                        self.tb.add_image(f"val/{name}/{i}", img, self.iteration, dataformats="HWC")
                if self.wandb:
                    self.wandb.log({f"metrics/{name}/{m}": v for m, v in means.items()}, self.iteration)
                    self.wandb.log_images(name, samples, self.iteration)
                self._jsonl({"iter": self.iteration, "val": name, **means})
        self.ctx.barrier()
        return results

    def report_inputs(self) -> None:
        """``val.report_inputs``: per validation image, the metrics of the unrestored input beside
        the restored output, and ``input | restored | target`` images (see engine/report.py)."""
        if self.ctx.is_main and self.val_sets:
            from ..engine.checkpoint import atomic_write_bytes
            from .report import compare_with_inputs, format_comparison
            net = self.model.inference_network(use_ema=self.opt.val.use_ema)
            texts = []
            for key, ds in self.val_sets.items():
                name = self.opt.datasets[key].name
                rows = compare_with_inputs(net, ds, self.opt.val, self.opt.scale, self.ctx.device,
                                           self.model.autocast_bf16, self.vis_dir / name / "compare")
                if not rows:
                    continue
                text, means = format_comparison(rows, name)
                summary = "; ".join(f"{m}: input {means['input'][m]:.4f} -> restored {means['restored'][m]:.4f} "
                                    f"({means['restored'][m] - means['input'][m]:+.4f})" for m in means["input"])
                images = "\n".join(f"  {r['image']}" for r in rows)
                texts.append(f"{text}\n\n{name} mean {summary}\nSide-by-side images (input | restored | target):\n{images}")
            if texts:
                report = "\n\n".join(texts)
                atomic_write_bytes((report + "\n").encode(), self.exp_dir / "comparison.md")
                logger.info(f"Comparison with the unrestored inputs at iteration {self.iteration} "
                            f"(also in {self.exp_dir / 'comparison.md'}):\n{report}")
        self.ctx.barrier()

    def _jsonl(self, record: Dict[str, Any]) -> None:
        if self.jsonl:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()

    # ------------------------------------------------------------------ loop
    def _next_micro_batches(self, loader, stage: int, count: int):
        """``count`` batches of this stage (crossing into the next epoch when one ends); returns
        (loader, batches) and advances epoch / epoch_offset past them."""
        batches = []
        while len(batches) < count:
            if loader is None:
                loader, _ = self._make_loader(stage)
            try:
                batches.append(next(loader))
            except StopIteration:
                self.epoch, self.epoch_offset, loader = self.epoch + 1, 0, None
                continue
            self.epoch_offset += self.schedule.batch_sizes[stage]
        return loader, batches

    def _check_steps(self, keep: int = 0) -> None:
        """NaN-guard bookkeeping of the steps taken so far, all but the newest ``keep``: a step's
        outcome is read one iteration late where nothing needs it sooner, so that reading it does
        not stall the GPU (it waits for that step, while the next one is already queued)."""
        while len(self.unchecked) > keep:
            iteration, outcome, losses = self.unchecked.pop(0)
            self._after_step(iteration, outcome, losses)

    def _after_step(self, iteration: int, outcome, losses: Dict[str, torch.Tensor]) -> None:
        """NaN guard bookkeeping of one step: count, log, stop after too many in a row."""
        skipped, overflow = outcome.values() if outcome is not None else (False, False)
        if not skipped:
            self.nonfinite_streak = 0
            return
        if overflow:  # the scaler lowered the loss scale; not a NaN-guard event
            self.fp16_overflows += 1
            return
        self.nonfinite_total += 1
        self.nonfinite_streak += 1
        limit = self.opt.train.max_nonfinite_steps
        values = ", ".join(f"{k} {v.float().item():.4g}" for k, v in losses.items())
        logger.warning(f"Iteration {iteration}: non-finite loss or gradient ({values}); optimizer step "
                       f"skipped ({self.nonfinite_streak} in a row{f' of at most {limit}' if limit else ''}, "
                       f"{self.nonfinite_total} in this run).")
        self._jsonl({"iter": iteration, "nonfinite_step": True, "streak": self.nonfinite_streak})
        if limit and self.nonfinite_streak >= limit:
            newest = list_training_states(self.states_dir)
            where = f"the newest training state, {newest[-1]}, was saved before them" if newest else \
                "no training state was saved yet"
            raise NonFiniteTrainingError(
                f"Training stopped at iteration {iteration}: {self.nonfinite_streak} optimizer steps in a row "
                f"had a non-finite loss or gradient (train.max_nonfinite_steps = {limit}); {where}. Lower the "
                f"learning rate (train.optim_g.lr), set train.clip_grad_norm, try train.precision: fp32, or check "
                f"the training data for broken images; then re-run the same command to resume.")

    def _stop_requested(self, signals: StopSignals) -> Optional[int]:
        """The signal that asked this run (any rank) to stop, agreed by all ranks; None to go on.

        One process: the signal itself. Under torchrun / srun every rank starts, each iteration,
        an all-reduce (max) of its signal and reads the previous iteration's result: all ranks
        read the same values at the same iterations, so they stop together (one iteration after
        the signal), and the GPU never waits for the vote.
        """
        if not self.ctx.distributed:
            return signals.signum
        previous, self.stop_vote = self.stop_vote, self.ctx.start_max_int(signals.signum or 0)
        return (previous.result() if previous is not None else 0) or None

    def _compile_batch_of_one_ahead(self, stage: int, batch: Dict[str, Any]) -> None:
        """When a later progressive stage has a batch of 1 and this one does not, compile the
        network's graphs for that stage now (BaseModel.compile_ahead), so that its switch does not
        wait for torch.compile (which specialises a size of 1 and would trace the blocks again)."""
        sizes = self.schedule.batch_sizes
        later = [s for s in range(stage + 1, len(self.schedule)) if sizes[s] == 1]
        if sizes[stage] == 1 or not later:
            return
        first = later[0]
        channels = batch["lq"].shape[1] if "lq" in batch else batch["gt"].shape[1]
        side = self.schedule.gt_sizes[first] // self.opt.scale
        t0 = time.perf_counter()
        if self.model.compile_ahead((1, channels, side, side)):
            logger.info(f"Compiled the network for stage {first + 1}'s batch of 1 ({side}x{side} inputs) ahead, in "
                        f"{time.perf_counter() - t0:.1f} s, so that its switch does not wait for it.")

    def run(self) -> None:
        opt, t, lg = self.opt, self.opt.train, self.opt.logger
        total = t.total_iter
        accumulate = t.accumulate
        logger.info(f"Training {opt.name}: {opt.model_type}, {opt.network_g['type']}, "
                    f"{sum(p.numel() for p in self.model.networks['net_g'].parameters()) / 1e6:.3f} M params, "
                    f"{self.ctx.world_size} process(es) on {self.ctx.device.type}, "
                    f"iterations {self.iteration} -> {total}"
                    f"{f', {accumulate} micro-batches per iteration' if accumulate > 1 else ''}, "
                    f"precision {self.model.precision if self.ctx.device.type == 'cuda' else 'fp32 (CPU)'}.")
        loader, stage, batch = None, None, None
        compiled_ahead = False
        window_start, window_iters, window_data_s = time.time(), 0, 0.0
        pending: Dict[str, List[torch.Tensor]] = {}
        profiler = IterationProfiler(lg.profile_iters if self.ctx.is_main else None, self.exp_dir / "profile_iters.md",
                                     f"{opt.name}: {self.ctx.world_size} process(es)")
        self.saved_at = None
        self.unchecked: List[tuple] = []  # (iteration, model.last_outcome, losses) not yet checked
        self.stop_vote = None
        with StopSignals() as signals:
            try:
                while self.iteration < total:
                    new_stage = self.schedule.stage_at(self.iteration)
                    if loader is None or new_stage != stage:
                        if stage is not None and new_stage != stage:
                            logger.info(f"Progressive training: stage {new_stage + 1}/{len(self.schedule)}, GT patch "
                                        f"{self.schedule.gt_sizes[new_stage]}, batch {self.schedule.batch_sizes[new_stage]} "
                                        f"per process, from iteration {self.iteration + 1}.")
                        stage = new_stage
                        loader, batch = self._make_loader(stage)
                    waited = time.perf_counter()
                    loader, batches = self._next_micro_batches(loader, stage, accumulate)
                    window_data_s += time.perf_counter() - waited
                    if not compiled_ahead:
                        compiled_ahead = True
                        self._compile_batch_of_one_ahead(stage, batches[0])
                    self.iteration += 1
                    profiler.step_begins(self.iteration)
                    if accumulate == 1:
                        self.model.feed_data(batches[0])
                        losses = self.model.optimize_parameters(self.iteration)
                    else:
                        losses = self.model.optimize_parameters(self.iteration, batches)
                    self.model.update_learning_rate(self.iteration)
                    self.unchecked.append((self.iteration, self.model.last_outcome, losses))
                    due = (self.iteration % lg.print_freq == 0 or self.iteration % lg.save_checkpoint_freq == 0
                           or self.iteration == total
                           or (opt.val is not None and self.iteration % opt.val.val_freq == 0))
                    self._check_steps(keep=0 if due else 1)
                    for k, v in losses.items():
                        pending.setdefault(k, []).append(v)
                    window_iters += 1
                    profiler.step_ends(self.iteration)

                    if self.iteration % lg.print_freq == 0 or self.iteration == total:
                        means = {k: self.ctx.mean(torch.stack(v).float().mean().item()) for k, v in pending.items()}
                        pending.clear()
                        elapsed = time.time() - window_start
                        rate = window_iters / max(elapsed, 1e-9)
                        data_ms = 1000 * window_data_s / max(window_iters, 1)
                        lr = self.model.current_learning_rate()
                        loss_text = " ".join(f"{k} {v:.4e}" for k, v in means.items())
                        extra = ""
                        if self.model.scaler is not None:
                            extra += f" | loss scale {self.model.scaler.get_scale():.0f} ({self.fp16_overflows} overflows)"
                        if self.nonfinite_total:
                            extra += f" | {self.nonfinite_total} non-finite steps skipped"
                        logger.info(f"iter {self.iteration:,}/{total:,} | {rate:.2f} it/s (data wait {data_ms:.1f} ms/it) | eta "
                                    f"{_format_eta((total - self.iteration) / max(rate, 1e-9))} | epoch {self.epoch} | "
                                    f"stage {stage + 1}/{len(self.schedule)} patch {self.schedule.gt_sizes[stage]} "
                                    f"batch {batch}x{self.ctx.world_size}{f'x{accumulate}' if accumulate > 1 else ''} | "
                                    f"lr {lr:.3e} | {loss_text}{extra}")
                        if self.tb:
                            for k, v in means.items():
                                self.tb.add_scalar(f"losses/{k}", v, self.iteration)
                            self.tb.add_scalar("train/lr", lr, self.iteration)
                            self.tb.add_scalar("train/it_per_s", rate, self.iteration)
                        if self.wandb:
                            self.wandb.log({**{f"losses/{k}": v for k, v in means.items()}, "train/lr": lr,
                                            "train/it_per_s": rate}, self.iteration)
                        self._jsonl({"iter": self.iteration, "lr": lr, "it_per_s": rate, "data_ms": data_ms, **means})
                        window_start, window_iters, window_data_s = time.time(), 0, 0.0

                    paused = time.time()
                    if self.iteration % lg.save_checkpoint_freq == 0 or self.iteration == total:
                        if self.nonfinite_streak:
                            # The weights are those of the last good step, but keep the newest state
                            # one written from a healthy run: the next periodic save catches up.
                            logger.warning(f"Not saving at iteration {self.iteration}: inside a run of "
                                           f"{self.nonfinite_streak} non-finite steps.")
                        else:
                            self.save()
                    if opt.val is not None and self.val_sets and (self.iteration % opt.val.val_freq == 0
                                                                   or self.iteration == total):
                        self.validate()
                    window_start += time.time() - paused  # keep it/s and ETA about training only
                    stop = self._stop_requested(signals)
                    if stop and self.iteration < total:  # on the last iteration the run simply ends
                        self._check_steps()
                        if self.saved_at != self.iteration:
                            self.save()
                        self._close()
                        raise TrainingInterrupted(stop, self.iteration)
            except BaseException:
                self._close()  # TensorBoard, train_log.jsonl and wandb end cleanly on any error too
                raise
            finally:
                _shut_down_workers(loader)
        if self.stop_vote is not None:  # every rank started it: let it complete before the group goes
            self.stop_vote.result()
        self._check_steps()
        logger.info(f"Training {opt.name} finished at iteration {self.iteration}.")
        if opt.val is not None and opt.val.report_inputs:
            self.report_inputs()
        self._close()

    def _close(self) -> None:
        if self.tb:
            self.tb.close()
            self.tb = None
        if self.jsonl:
            self.jsonl.close()
            self.jsonl = None
        if self.wandb:
            self.wandb.close()
            self.wandb = None


# ----------------------------------------------------------------------------- CLI
def build_arg_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train a vmambair model from a BasicSR-style YAML file. "
                                "Multi-GPU: torchrun --nproc_per_node=N train.py -opt x.yml (no extra flags).")
    p.add_argument("-opt", "--opt", required=False, help="Path to the options YAML file.")
    p.add_argument("--set", "--force_yml", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="Override one option, e.g. --set train.total_iter=1000 (repeatable; value parsed as YAML).")
    p.add_argument("--no-resume", action="store_true",
                   help="Start from scratch (an existing experiment folder is archived) instead of resuming.")
    p.add_argument("--help-options", action="store_true", help="List every option with its type and meaning.")
    return p


def train_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``train.py``. Returns the exit code (2: invalid options, 1: data / checkpoint error or
    too many non-finite steps, 143 / 130: stopped by SIGTERM / SIGINT after saving)."""
    args = build_arg_parser().parse_args(argv)
    if args.help_options:
        print("\n".join(describe_options()))
        return 0
    if not args.opt:
        print("error: give the options file with -opt options/<task>.yml", file=sys.stderr)
        return 2
    try:
        opt = load_options(args.opt, args.overrides, is_train=True)
    except OptionsError as err:
        print(f"error in options ({args.opt}): {err}", file=sys.stderr)
        return 2
    ctx = init_dist_from_env(None if opt.num_gpu == "auto" else opt.num_gpu, opt.dist_params.backend,
                             opt.dist_params.port)
    try:
        Trainer(opt, ctx, resume=not args.no_resume).run()
    except OptionsError as err:
        print(f"error in options ({args.opt}): {err}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, NonFiniteTrainingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stop:
        logger.warning(f"Training {opt.name} {stop}; the training state is saved: re-run the same command "
                       f"to resume.")
        return stop.exit_code
    finally:
        shutdown_dist()
    return 0
