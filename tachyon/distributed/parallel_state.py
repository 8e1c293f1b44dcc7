"""Which tensor-parallel rank this process is, and the collectives the sharded layers need.

One process group per process, set once by `init_tensor_parallel` before the model is built: layers read
`tp_rank()`/`tp_size()` when they are constructed and shard themselves. Without it, every process is rank 0
of 1 and the collectives are no-ops, so single-device code pays nothing. Model math goes through the device
group (NCCL on CUDA, gloo on CPU); the driver's step commands go through a gloo group on the CPU.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)  # a peer that died mid-step fails the step, never hangs it


@dataclass(frozen=True)
class TensorParallelGroup:
    rank: int
    size: int
    device_group: dist.ProcessGroup
    cpu_group: dist.ProcessGroup


_group: TensorParallelGroup | None = None


def tp_rank() -> int:
    return _group.rank if _group else 0


def tp_size() -> int:
    return _group.size if _group else 1


def cpu_group() -> dist.ProcessGroup:
    if _group is None:
        raise RuntimeError("tensor parallelism is not initialized")
    return _group.cpu_group


def launched_by_torchrun() -> bool:
    """torchrun (or any launcher using its env:// variables) started this process as one rank of several."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def init_tensor_parallel(rank: int, size: int, init_method: str, device: torch.device) -> None:
    """Join the group of `size` ranks rendezvousing at `init_method` (tcp://host:port or env://)."""
    global _group
    if _group is not None:
        raise RuntimeError("tensor parallelism is already initialized in this process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size, timeout=COLLECTIVE_TIMEOUT)
    control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if backend != "gloo" else dist.group.WORLD
    _group = TensorParallelGroup(rank, size, dist.group.WORLD, control)
    logger.info("Tensor parallel rank %d of %d (%s on %s)", rank, size, backend, device)


def destroy_tensor_parallel() -> None:
    global _group
    if _group is not None:
        dist.destroy_process_group()
        _group = None


def shard_range(total: int, what: str) -> tuple[int, int]:
    """(start, size) of this rank's equal share of `total` items; a clear error when they do not divide."""
    size = tp_size()
    if total % size:
        raise ValueError(f"{what} ({total}) is not divisible by --tensor-parallel-size {size}")
    share = total // size
    return tp_rank() * share, share


def all_reduce(x: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """Reduce over the ranks in place (a sum after a row-parallel matmul and the vocab-parallel embedding)."""
    if _group is not None:
        dist.all_reduce(x, op=op, group=_group.device_group)
    return x


def all_gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's slice along the last dim, in rank order (vocab-parallel logits)."""
    if _group is None:
        return x
    parts = [torch.empty_like(x) for _ in range(_group.size)]
    dist.all_gather(parts, x.contiguous(), group=_group.device_group)
    return torch.cat(parts, dim=-1)
