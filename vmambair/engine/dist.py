"""Distributed context detected from the environment: torchrun (one node or many) or SLURM's srun.

``torchrun --nproc_per_node=N train.py -opt x.yml`` sets RANK, LOCAL_RANK and WORLD_SIZE (and
MASTER_ADDR / MASTER_PORT); across nodes, one torchrun per node with ``--nnodes``, ``--node_rank``
and a common ``--master_addr`` (or ``--rdzv_backend=c10d --rdzv_endpoint=host:port``) does the
same. Under SLURM, ``srun`` with one task per GPU sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID:
they are read when torchrun's variables are absent, the master address is the first host of the
job's node list (or MASTER_ADDR), the port MASTER_PORT (or ``dist_params.port``). We then join
the process group (NCCL on CUDA, gloo on CPU) and pin each rank to its local GPU. Without any of
these the run is a plain single-process run. docs/training.md has the commands.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Dict, Mapping, Optional

import torch
import torch.distributed as tdist


@dataclass
class DistContext:
    """Where this process sits in the run. ``device`` is the device it computes on."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs, writes TensorBoard and saves files."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            tdist.barrier()

    def mean(self, value: float) -> float:
        """Average a Python number over ranks (identity on one process)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        tdist.all_reduce(t)
        return t.item() / self.world_size

    def max_int(self, value: int) -> int:
        """The largest of every rank's ``value`` (identity on one process): e.g. a stop request
        seen by one rank, so that all ranks stop at the same iteration."""
        if not self.distributed:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device if self.device.type == "cuda" else "cpu")
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return int(t.item())

    def start_max_int(self, value: int) -> "PendingMax":
        """Start an all-reduce (max) of ``value`` over ranks, to read later with ``.result()``;
        every rank must start it. The host does not wait for it, nor does the GPU's work queue."""
        return PendingMax(value, self.device)

    def broadcast_(self, tensors) -> None:
        """Overwrite ``tensors`` in place with rank 0's values (what DDP does to a network once)."""
        if self.distributed:
            for t in tensors:
                tdist.broadcast(t.data, src=0)

    def all_reduce_mean_(self, tensors) -> None:
        """Average ``tensors`` (e.g. gradients) over ranks in place, as one flat all-reduce."""
        tensors = [t for t in tensors if t is not None]
        if not self.distributed or not tensors:
            return
        if len(tensors) == 1 and tensors[0].is_contiguous() and tensors[0].dtype == torch.float32:
            tdist.all_reduce(tensors[0])  # already one flat buffer (GraphedLossAndGrad's flat_grad)
            tensors[0].div_(self.world_size)
            return
        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        tdist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset: offset + t.numel()].view_as(t))
            offset += t.numel()


class PendingMax:
    """An all-reduce (max) of one integer in flight. NCCL: the collective and a copy into pinned
    host memory are queued behind the GPU work already queued, and :meth:`result` waits for that
    copy only. gloo: an asynchronous CPU collective."""

    def __init__(self, value: int, device: torch.device):
        cuda = device.type == "cuda"
        self.tensor = torch.tensor([int(value)], dtype=torch.int64, device=device if cuda else "cpu")
        self.work = tdist.all_reduce(self.tensor, op=tdist.ReduceOp.MAX, async_op=True)
        self.event = None
        if cuda:
            self.work.wait()  # NCCL: the current stream waits for the collective; the host does not
            self.host = torch.empty(1, dtype=torch.int64, pin_memory=True)
            self.host.copy_(self.tensor, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()

    def result(self) -> int:
        if self.event is not None:
            self.event.synchronize()
            return int(self.host[0])
        self.work.wait()
        return int(self.tensor[0])


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``'gpu[07-09,12],cpu1'`` -> ``'gpu07'``."""
    first = re.match(r"[^,\[]*(\[[^\]]*\])?[^,]*", nodelist.strip()).group(0)
    bracket = re.search(r"\[([^\]]*)\]", first)
    if not bracket:
        return first
    start = bracket.group(1).split(",")[0].split("-")[0]  # zero padding kept: '07-09' -> '07'
    return first[: bracket.start()] + start + first[bracket.end():]


def slurm_dist_env(environ: Mapping[str, str], default_port: int = 29500) -> Optional[Dict[str, str]]:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) derived from
    an ``srun`` task's SLURM variables; None when this is not a multi-task srun step, or when
    torchrun's variables are already there (torchrun inside a SLURM allocation wins)."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return None
    if "SLURM_PROCID" not in environ or "SLURM_NTASKS" not in environ:
        return None
    world = int(environ.get("SLURM_STEP_NUM_TASKS") or environ["SLURM_NTASKS"])
    if world <= 1:
        return None
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    master = environ.get("MASTER_ADDR") or (first_slurm_host(nodelist) if nodelist else None)
    if not master:
        raise RuntimeError("Running under srun with several tasks, but neither MASTER_ADDR nor SLURM_JOB_NODELIST "
                           "is set: export MASTER_ADDR=<first node's host name> before srun.")
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": str(world),
            "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"), "MASTER_ADDR": master,
            "MASTER_PORT": environ.get("MASTER_PORT") or str(default_port)}


def init_dist_from_env(num_gpu: Optional[int] = None, backend: Optional[str] = None,
                       port: int = 29500) -> DistContext:
    """Build the context from torchrun's (or srun's) environment variables and join the process group.

    Args:
        num_gpu: options' ``num_gpu``; 0 forces CPU. None/'auto': use CUDA if available.
        backend: 'nccl' or 'gloo'; default nccl on CUDA, gloo on CPU.
        port: master port under srun when MASTER_PORT is not set (options' ``dist_params.port``).
    """
    slurm = slurm_dist_env(os.environ, port)
    if slurm is not None:
        os.environ.update(slurm)  # env:// initialisation reads them, as under torchrun
    use_cuda = torch.cuda.is_available() and num_gpu != 0
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        if local_rank >= torch.cuda.device_count() == 1:
            local_rank = 0  # srun --gpus-per-task=1: each task sees only its own GPU
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not tdist.is_initialized():
        backend = backend or ("nccl" if use_cuda else "gloo")
        if backend == "nccl" and not use_cuda:
            backend = "gloo"  # nccl cannot run on CPU tensors
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        tdist.init_process_group(backend=backend, timeout=timedelta(minutes=30), **kwargs)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def shutdown_dist() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
