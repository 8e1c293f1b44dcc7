"""Tensor-parallel processes: the engine's process is rank 0 (the driver); ranks 1..N-1 are workers that
hold their shards of the model and KV cache and mirror every model call the driver makes.

The driver schedules, builds each step's inputs and samples; before each model call it broadcasts the call
(method name and its plain-Python arguments) on the CPU group, and each worker makes the same call on its
shards, so the collectives inside the model meet. Workers are either started here on one host (gloo on CPU,
NCCL on GPUs, rendezvous on a free local port), or started by torchrun on any number of hosts, where every
rank but 0 runs `serve_torchrun_worker` instead of the command it was given.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys

import torch
import torch.distributed as dist

from tachyon.config import EngineConfig
from tachyon.distributed.parallel_state import (
    cpu_group,
    destroy_tensor_parallel,
    init_tensor_parallel,
    launched_by_torchrun,
    tp_size,
)

logger = logging.getLogger(__name__)

# the ModelRunner methods a worker mirrors; forward's result stays on the worker for compute_logits
MIRRORED_CALLS = ("forward", "compute_logits", "allocate_kv_cache", "release_kv_cache")
_SHUTDOWN = "shutdown"


def rank_device(config: EngineConfig, rank: int) -> torch.device:
    """The device of a rank: the CPU, or the rank's own GPU on its host (`--device` as given without
    tensor parallelism)."""
    device = config.resolve_device()
    if device.type != "cuda" or config.tensor_parallel_size == 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return torch.device("cuda", local_rank)


class WorkerGroup:
    """The driver's handle on ranks 1..N-1."""

    def __init__(self, processes: list[subprocess.Popen], driver_threads: int | None = None) -> None:
        self.processes = processes  # empty under torchrun: it owns the processes
        self.driver_threads = driver_threads  # the driver's torch threads before it shared the cores

    @classmethod
    def start(cls, config: EngineConfig, device: torch.device) -> WorkerGroup:
        """Join (torchrun) or start (one host) the other ranks; returns once all are in the group."""
        size = config.tensor_parallel_size
        if launched_by_torchrun():
            world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
            if world != size or rank != 0:
                raise ValueError(
                    f"torchrun started rank {rank} of {world}; the engine runs on rank 0 of "
                    f"--tensor-parallel-size {size} ranks"
                )
            init_tensor_parallel(0, size, "env://", device)
            return cls([], _share_cpu_threads(device))
        # fresh interpreters (not multiprocessing's spawn, which re-imports the caller's __main__)
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        processes = []
        for rank in range(1, size):
            command = [sys.executable, "-m", "tachyon.distributed.workers", str(rank), str(size), init_method]
            p = subprocess.Popen(command, stdin=subprocess.PIPE)
            p.stdin.write(pickle.dumps(config))
            p.stdin.close()
            processes.append(p)
        try:
            init_tensor_parallel(0, size, init_method, device)
        except BaseException:
            for p in processes:
                p.kill()
            raise
        logger.info("Started %d tensor-parallel worker processes (pids %s)", len(processes), [p.pid for p in processes])
        return cls(processes, _share_cpu_threads(device))

    def call(self, method: str, *args) -> None:
        """Have every worker run `runner.<method>(*args)`; the driver then runs it too."""
        dist.broadcast_object_list([(method, args)], src=0, group=cpu_group())

    def raise_if_dead(self, error: BaseException) -> None:
        """After `error` from a collective: raise a clear error if a worker has exited."""
        for rank, p in enumerate(self.processes, start=1):
            try:
                code = p.wait(timeout=1)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(
                f"tensor-parallel worker rank {rank} (pid {p.pid}) exited with code {code}; the engine cannot go on"
            ) from error

    def shutdown(self, graceful: bool = True) -> None:
        """Stop the workers and leave the group. Not graceful: kill them (they may be mid-load or stuck)."""
        try:
            if graceful and all(p.poll() is None for p in self.processes):
                self.call(_SHUTDOWN)
            elif not graceful:
                for p in self.processes:
                    p.kill()
        finally:
            for p in self.processes:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            destroy_tensor_parallel()
            if self.driver_threads:
                torch.set_num_threads(self.driver_threads)


def _share_cpu_threads(device: torch.device) -> int | None:
    """Ranks on one CPU host share its cores: give this one its share of torch threads; returns the number it
    had (None on GPUs, where nothing changes)."""
    if device.type != "cpu":
        return None
    before = torch.get_num_threads()
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", tp_size()))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks_here))
    logger.info("CPU tensor parallelism: %d torch threads per rank", torch.get_num_threads())
    return before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_main(rank: int, size: int, init_method: str, config: EngineConfig) -> None:
    logging.basicConfig(level=logging.WARNING, format=f"[tp{rank}] %(levelname)s %(name)s: %(message)s")
    device = rank_device(config, rank)
    init_tensor_parallel(rank, size, init_method, device)
    _share_cpu_threads(device)
    _serve(config, device)


def serve_torchrun_worker(config: EngineConfig) -> None:
    """Under torchrun, ranks other than 0 call this instead of serving: mirror rank 0 until it shuts down."""
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if size != config.tensor_parallel_size:
        raise ValueError(f"torchrun started {size} ranks for --tensor-parallel-size {config.tensor_parallel_size}")
    logging.getLogger().setLevel(logging.WARNING)  # rank 0 logs what the engine decides
    device = rank_device(config, rank)
    init_tensor_parallel(rank, size, "env://", device)
    _share_cpu_threads(device)
    _serve(config, device)


def _serve(config: EngineConfig, device: torch.device) -> None:
    from tachyon.engine.model_runner import ModelRunner
    from tachyon.models.loader import load_model_source

    try:
        source = load_model_source(config.model, tokenizer=config.tokenizer, load_format=config.load_format)
        runner = ModelRunner(config, source, device, config.resolve_dtype(source.hf_config, device))
        hidden = None
        torch.set_grad_enabled(False)
        while True:
            message = [None]
            dist.broadcast_object_list(message, src=0, group=cpu_group())
            method, args = message[0]
            if method == _SHUTDOWN:
                return
            if method not in MIRRORED_CALLS:
                raise RuntimeError(f"unknown call {method!r} from the driver")
            if method == "compute_logits":
                runner.compute_logits(hidden, *args)
            elif method == "forward":
                hidden = runner.forward(*args)
            else:
                getattr(runner, method)(*args)
    finally:
        destroy_tensor_parallel()


if __name__ == "__main__":  # a worker the driver started: rank, size, rendezvous; the config on stdin
    _worker_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], pickle.loads(sys.stdin.buffer.read()))
