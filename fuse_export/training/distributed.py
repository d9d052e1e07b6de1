"""Multi-process training on PyTorch's own engine: process-group setup from torchrun's environment, rank
helpers, and the few collectives the trainer needs (metric sums, relabel decisions, stacker weights).

`torchrun` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; we read them and call
`init_process_group` with NCCL on CUDA and Gloo on the CPU. Without those variables (plain `python -m
fuse_export train`) every helper here is a no-op over a world of one, so the single-process path is the
same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fuse_export.errors import BackendUnavailable, RecipeError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank in the world, its device, and how it talks to the others."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: a world of one, no process group
    owns_group: bool = False  # we created the group, so we tear it down

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and artifacts, and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def comm_device(self) -> torch.device:
        """NCCL moves only CUDA tensors; Gloo moves CPU tensors."""
        return self.device if self.backend == "nccl" else torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise RecipeError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def _resolve_device(device: str, local_rank: int, world_size: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackendUnavailable("--device cuda: no CUDA device is usable here; use --device cpu or auto")
        if world_size > 1:
            # One process per GPU on each node: LOCAL_RANK picks it (torchrun's convention).
            if local_rank >= torch.cuda.device_count():
                raise BackendUnavailable(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA "
                                         "device(s) on this node; lower --nproc-per-node")
            return torch.device("cuda", local_rank)
        return torch.device(device if ":" in device else "cuda:0")
    return torch.device(device)


def setup(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (or adopt one already initialized); a world of one otherwise."""
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        local = _env_int("LOCAL_RANK", rank)
        dev = _resolve_device(device, local, world)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistContext(rank, world, local, dev, dist.get_backend(), owns_group=False)
    world, rank, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dev = _resolve_device(device, local, world)
    if world == 1:
        return DistContext(0, 1, 0, dev)
    if not dist.is_available():
        raise BackendUnavailable("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # before init, so NCCL binds each rank to its own GPU
    init_kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(backend, rank=rank, world_size=world, **init_kwargs)
    return DistContext(rank, world, local, dev, backend, owns_group=True)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if `setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce(values: torch.Tensor, ctx: DistContext, op: str = "sum") -> torch.Tensor:
    """Sum (or max) a tensor over ranks; returned on the CPU. A world of one returns a CPU copy."""
    if not ctx.distributed:
        return values.detach().cpu().clone()
    t = values.detach().to(ctx.comm_device).clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.cpu()


def all_gather_cat(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0, in rank order; ranks may hold different lengths.

    Every rank receives the same result, which is what keeps global state (labels, predictions) identical.
    """
    if not ctx.distributed:
        return t.detach().cpu()
    t = t.detach().to(ctx.comm_device)
    n = torch.tensor([t.shape[0]], device=ctx.comm_device)
    sizes = [torch.zeros_like(n) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, n)
    lengths = [int(s) for s in sizes]
    longest = max(lengths)
    # all_gather needs equal shapes: pad to the longest, then trim each piece back.
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    pieces = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(pieces, padded)
    return torch.cat([p[:k] for p, k in zip(pieces, lengths)]).cpu()


def gather_keeping_grad(local: torch.Tensor, ctx: DistContext) -> tuple[torch.Tensor, int]:
    """(every rank's rows in rank order on `local`'s device, the offset of this rank's rows).

    This rank's rows are `local` itself, so autograd flows into them; the other ranks' rows are constants
    (each rank differentiates its own part, and DDP's gradient all-reduce adds the parts up). This is how a
    statistic of the whole global batch (SCN's importance ranking) is computed under DDP.
    """
    if not ctx.distributed:
        return local, 0
    lengths = all_gather_cat(torch.tensor([local.shape[0]], dtype=torch.int64), ctx).tolist()
    offset = int(sum(lengths[: ctx.rank]))
    full = all_gather_cat(local.detach(), ctx).to(local.device)
    return torch.cat([full[:offset], local, full[offset + local.shape[0]:]]), offset


def all_gather_object(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's picklable object, in rank order (small things only: RNG states, messages)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Rank `src`'s object on every rank (e.g. a checkpoint read by rank 0 only: no shared disk needed)."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=ctx.comm_device)
    return box[0]


def broadcast_module(module: nn.Module, ctx: DistContext, src: int = 0, buffers_only: bool = False) -> None:
    """Copy rank `src`'s parameters and/or buffers into every rank's module, in place."""
    if not ctx.distributed:
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    with torch.no_grad():
        for t in tensors:
            if ctx.comm_device == t.device:
                dist.broadcast(t.data, src=src)
            else:
                buf = t.data.to(ctx.comm_device)
                dist.broadcast(buf, src=src)
                t.data.copy_(buf)


def check_batch_split(global_batch: int, ctx: DistContext, where: str) -> int:
    """train.batch_size is the global batch; each rank takes an equal share of at least 2."""
    if global_batch % ctx.world_size:
        raise RecipeError(f"{where}: train.batch_size {global_batch} is the global batch and must divide evenly "
                          f"over {ctx.world_size} processes")
    per_rank = global_batch // ctx.world_size
    if per_rank < 2:
        raise RecipeError(f"{where}: train.batch_size {global_batch} over {ctx.world_size} processes leaves "
                          f"{per_rank} per process; rank regularization needs at least 2")
    return per_rank
