"""Training on several processes (`cimcoder train CONFIG --nproc N`) with torch.distributed.

The calling process is rank 0: it keeps the MLflow tracker and the validation metric, and it
alone writes the run folder, checkpoints and metrics. Ranks 1..N-1 are spawned processes
(`torch.multiprocessing`, start method "spawn") that train on their share of every batch.
Backend: NCCL on GPUs (rank r on GPU r), gloo on CPU.

Without a process group every helper here is the one-process identity (rank 0 of 1), so the
trainer calls them unconditionally.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from cimcoder.errors import CimcoderError

T = TypeVar("T")

# A rank that waits longer than this for the others (a dead peer on NCCL, a child that never
# started) fails instead of hanging. gloo notices a dead peer at once (its socket closes).
TIMEOUT = datetime.timedelta(minutes=30)


class DistributedError(CimcoderError):
    """Several processes cannot be started as asked."""


@dataclass(frozen=True)
class Rank:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Rank:
    if dist.is_available() and dist.is_initialized():
        return Rank(dist.get_rank(), dist.get_world_size())
    return Rank()


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _join(rank: int, world_size: int, init_method: str) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_device(rank)  # "cuda" means this rank's GPU from now on
    dist.init_process_group(backend(), init_method=init_method, rank=rank, world_size=world_size,
                            timeout=TIMEOUT)


def _leave(done: bool) -> None:
    """Leave the group; after a run that ended well, only once every rank has ended too.

    A rank that tore its gloo connections down while a peer still finished its last exchange
    made that peer abort ("terminate called without an active exception", SIGABRT; seen once
    in `tests/test_distributed.py`). After a failure no barrier: the peers may never come."""
    try:
        if done:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _child(index: int, world_size: int, init_method: str, worker: Callable[..., Any],
           args: Sequence[Any]) -> None:
    _join(index + 1, world_size, init_method)
    done = False
    try:
        worker(*args)
        done = True
    finally:
        _leave(done)


@contextmanager
def process_group(nproc: int, worker: Callable[..., Any], args: Sequence[Any]) -> Iterator[None]:
    """Spawn ranks 1..nproc-1 running `worker(*args)` (a module-level function), join the
    group as rank 0 for the body, then wait for them. If the body fails, they are stopped;
    if one of them fails, the body's next collective fails (gloo) and so does the exit."""
    if nproc < 2:
        raise DistributedError(f"--nproc {nproc}: a process group needs at least 2 processes")
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed")
    if dist.is_initialized():
        raise DistributedError("a process group is already running in this process")
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise DistributedError(f"--nproc {nproc} but only {torch.cuda.device_count()} GPUs: one process per GPU")
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    children = torch.multiprocessing.start_processes(
        _child, args=(nproc, init_method, worker, tuple(args)), nprocs=nproc - 1, join=False,
        start_method="spawn",
    )
    try:
        _join(0, nproc, init_method)
        done = False
        try:
            yield
            done = True
        finally:
            _leave(done)
        while not children.join():
            pass
    except BaseException:
        for p in children.processes:
            if p.is_alive():
                p.terminate()
        for p in children.processes:
            p.join()
        raise


# --------------------------------------------------------------------------- collectives


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank (decisions that must agree: stop, resume, metrics)."""
    if current().world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T] | None:
    """Every rank's `value`, in rank order, on rank 0 (None elsewhere)."""
    rank = current()
    if rank.world_size == 1:
        return [value]
    out: list[Any] | None = [None] * rank.world_size if rank.is_main else None
    dist.gather_object(value, out, dst=0)
    return out


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of `values` over the ranks (a copy; the tensor itself with one rank)."""
    if current().world_size == 1:
        return values
    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


# --------------------------------------------------------------------------- data and model


def shard(batch: Sequence[int]) -> tuple[list[int], float]:
    """This rank's part of a global batch (every world_size-th report from its rank on) and
    its weight in the batch's mean loss, len(part) / len(batch).

    Every rank cuts the same global batches (same seed, same epoch), so one process and N see
    the same data in the same order: the loss curve does not depend on N. A rank left without
    a report (a last batch smaller than N) gets the batch's first one with weight 0, because
    every rank must run the forward and backward pass of every step.
    """
    rank = current()
    part = list(batch[rank.rank :: rank.world_size])
    if not part:
        return list(batch[:1]), 0.0
    return part, len(part) / len(batch)


def wrap(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The network as DistributedDataParallel when several processes train, else itself.

    Gradients are averaged over ranks at each backward; weights start from rank 0's.
    `find_unused_parameters`: the encoder's pooler is not used by the model.
    """
    if current().world_size == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=True)


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The network inside DistributedDataParallel (its state dict has no `module.` prefix)."""
    from torch.nn.parallel import DistributedDataParallel

    return net.module if isinstance(net, DistributedDataParallel) else net


def no_sync(net: torch.nn.Module, sync: bool) -> AbstractContextManager[Any]:
    """Skip the gradient all-reduce of a gradient-accumulation micro-batch (`sync` False)."""
    from torch.nn.parallel import DistributedDataParallel

    if sync or not isinstance(net, DistributedDataParallel):
        return nullcontext()
    return net.no_sync()
