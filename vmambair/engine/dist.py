"""Distributed context detected from the environment (torchrun), no launcher flags needed.

``torchrun --nproc_per_node=N train.py -opt x.yml`` sets RANK, LOCAL_RANK and WORLD_SIZE; when
they are present we join the process group (NCCL on CUDA, gloo on CPU) and pin each rank to
its local GPU. Without them the run is a plain single-process run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

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


def init_dist_from_env(num_gpu: Optional[int] = None, backend: Optional[str] = None) -> DistContext:
    """Build the context from torchrun's environment variables and join the process group.

    Args:
        num_gpu: options' ``num_gpu``; 0 forces CPU. None/'auto': use CUDA if available.
        backend: 'nccl' or 'gloo'; default nccl on CUDA, gloo on CPU.
    """
    use_cuda = torch.cuda.is_available() and num_gpu != 0
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
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
