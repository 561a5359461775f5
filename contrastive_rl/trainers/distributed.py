"""Data-parallel training under torchrun: one process per device, global negatives for InfoNCE."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU); return (rank, world size).
    A plain ``python`` launch is a world of one and starts no group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world_size


class _GatherBatch(torch.autograd.Function):
    """All-gather along ``dim`` in rank order, with gradients.

    ``torch.distributed.nn.functional.all_gather`` sends gradients back with reduce-scatter or
    all-to-all, which gloo lacks; an all-reduce of the whole gradient, then each rank's slice, works on
    every backend.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim, ctx.size = dim, tensor.shape[dim]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.narrow(ctx.dim, dist.get_rank() * ctx.size, ctx.size), None


def gather_batch(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` (rank 0's rows first), differentiable.

    Each rank then computes the loss of the global batch; the gradient reaching a rank's own rows is
    the sum over ranks (world size x the global gradient), which ``average_gradients`` divides back.
    """
    return _GatherBatch.apply(tensor, dim)


def average_gradients(parameters: list[torch.Tensor], world_size: int) -> None:
    """Average the gradients over ranks with one all-reduce of all of them, flattened.

    DistributedDataParallel would overlap this with the backward pass, but it wraps a module whose
    forward it runs, and the loss module's parameters are functional (swapped in per call); one flat
    all-reduce after the backward is exact and costs one collective per update.
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for parameter, grad in zip(parameters, grads):
        parameter.grad = flat[offset:offset + grad.numel()].view_as(grad)
        offset += grad.numel()


def broadcast_from_rank_zero(module: torch.nn.Module) -> None:
    """Start every rank from rank 0's weights and buffers."""
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=0)
