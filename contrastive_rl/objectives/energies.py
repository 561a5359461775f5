"""The energies f(s, a, g) = energy(phi(s, a), psi(g)) of the contrastive critics: dot products, cosine,
L2, and the quasimetrics MRN (Liu et al., ICML 2023) and IQE (Wang and Isola, 2022)."""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

ENERGIES = ("dot", "scaled_dot", "cosine", "l2", "mrn", "iqe")


QUASIMETRIC_ENERGIES = ("mrn", "iqe")


# Keeps sqrt differentiable where two representations coincide.
_MIN_SQUARED_DISTANCE = 1e-12


_MRN_EPS = 1e-6  # TMD's code


def in_float32(energy_fn: Callable) -> Callable:
    """Compute an energy in float32, also when the networks run under bf16 autocast."""

    @functools.wraps(energy_fn)
    def energy_in_float32(x: torch.Tensor, y: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return energy_fn(x.float(), y.float(), *args, **kwargs)

    return energy_in_float32


class PairwiseMRN(torch.autograd.Function):
    """``[..., K, h, B] x [..., K, h, B]`` (the parts' max halves, coordinate-major) and ``[..., K, B, m]`` x
    ``[..., K, B, m]`` (their L2 halves) ``-> [..., B, B]``: the MRN distance of every pair, the mean over
    the K parts of relu(max_c (x[c, i] - y[c, j])) + sqrt(|x_i - y_j|^2 + eps).

    Written by hand: autograd would keep the ``h x B x B`` difference for the max's backward and build
    its mask and product in new tensors, and run the L2 half as a chain of ``K x B x B`` passes. Here the
    max walks the pairs a block of rows at a time, small enough to stay in a core's cache through its
    chain of passes, its backward recomputes the difference and turns it into the gradient in place, and
    the L2 half is one ``baddbmm`` forward and two matrix products backward.
    """

    @staticmethod
    def forward(ctx, x_max: torch.Tensor, y_max: torch.Tensor, x_l2: torch.Tensor, y_l2: torch.Tensor) -> torch.Tensor:
        x_planes, y_planes = x_max.flatten(0, -3), y_max.flatten(0, -3)  # [N, h, B]
        best = x_max.new_empty(x_planes.shape[0], x_max.shape[-1], y_max.shape[-1])
        for plane, rows in _cache_sized_blocks(x_planes.shape, y_max.shape[-1]):
            differences = x_planes[plane, :, rows].unsqueeze(-1) - y_planes[plane].unsqueeze(-2)
            torch.amax(differences, -3, out=best[plane, rows])
        squared_norms = x_l2.pow(2).sum(-1).unsqueeze(-1) + y_l2.pow(2).sum(-1).unsqueeze(-2)
        root = torch.baddbmm(squared_norms.flatten(0, -3), x_l2.flatten(0, -3), y_l2.flatten(0, -3).transpose(-1, -2),
                             alpha=-2)
        root = root.view(squared_norms.shape).clamp_min_(0).add_(_MRN_EPS).sqrt_()
        best = best.view(root.shape)
        ctx.save_for_backward(x_max, y_max, x_l2, y_l2, best, root)
        return best.clamp_min(0).add_(root).mean(-3)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x_max, y_max, x_l2, y_l2, best, root = ctx.saved_tensors
        grad = grad.unsqueeze(-3) / best.shape[-3]  # the mean over parts
        x_planes, y_planes, best_planes = x_max.flatten(0, -3), y_max.flatten(0, -3), best.flatten(0, -3)
        grad_residual = torch.where(best > 0, grad, 0).flatten(0, -3)
        grad_x_max, grad_y_max = torch.empty_like(x_planes), torch.zeros_like(y_planes)
        for plane, rows in _cache_sized_blocks(x_planes.shape, y_max.shape[-1]):
            # 1 where a coordinate gives the maximum, else 0, built in place in the recomputed difference.
            share = x_planes[plane, :, rows].unsqueeze(-1) - y_planes[plane].unsqueeze(-2)
            share.sub_(best_planes[plane, rows].unsqueeze(-3)).sign_().add_(1)
            share.mul_(grad_residual[plane, rows].unsqueeze(-3))
            torch.sum(share, -1, out=grad_x_max[plane, :, rows])
            grad_y_max[plane].add_(share.sum(-2))
        # d sqrt(|x_i - y_j|^2) = (x_i - y_j) / root_ij: row and column sums against the other side's rows.
        weight = grad / root
        grad_x_l2 = x_l2 * weight.sum(-1).unsqueeze(-1) - weight @ y_l2
        grad_y_l2 = y_l2 * weight.sum(-2).unsqueeze(-1) - weight.transpose(-1, -2) @ x_l2
        return grad_x_max.view(x_max.shape), -grad_y_max.view(y_max.shape), grad_x_l2, grad_y_l2


_CACHE_BLOCK_FLOATS = 2**18  # 1 MiB of float32, within a core's L2 cache


def _cache_sized_blocks(planes_shape: torch.Size, columns: int):
    """``(plane, rows)`` blocks of ``[N, h, B]`` planes against ``columns`` columns, each block's
    ``h x rows x columns`` difference within ``_CACHE_BLOCK_FLOATS``."""
    num_planes, coordinates, num_rows = planes_shape
    block = max(1, _CACHE_BLOCK_FLOATS // max(coordinates * columns, 1))
    for plane in range(num_planes):
        for start in range(0, num_rows, block):
            yield plane, slice(start, start + block)


def mrn_distance(x: torch.Tensor, y: torch.Tensor, components: int = 8, pairwise: bool = False) -> torch.Tensor:
    """Metric Residual Network distance (Liu, Touati, Zhang, Ross, Levine, ICML 2023), as TMD's code
    writes it: the representation is cut into ``components`` equal parts; in each, the max over its
    first half of relu(x - y) (the asymmetric residual) plus the L2 norm of the difference over its
    second half; the mean over parts. ``d(x, y)`` is a quasimetric: d(x, x) = 0, the triangle
    inequality holds, d(x, y) != d(y, x) in general.

    ``[..., B, d] x [..., B, d] -> [..., B]`` (row i with row i), or ``[..., B, B]`` with ``pairwise``
    (every row of x with every row of y), by ``PairwiseMRN``: the L2 halves from |x|^2 + |y|^2 - 2 x y^T,
    the residual's max across whole rows of ``[B, B]`` planes (over a trailing dimension of a few
    coordinates, the same max and its backward run several times slower).
    """
    x, y = x.unflatten(-1, (components, -1)), y.unflatten(-1, (components, -1))
    half = x.shape[-1] // 2
    if not pairwise:
        residual = (x[..., :half] - y[..., :half]).amax(-1).relu()
        squared = (x[..., half:] - y[..., half:]).pow(2).sum(-1)
        return (residual + (squared + _MRN_EPS).sqrt()).mean(-1)
    x, y = x.movedim(-2, -3), y.movedim(-2, -3)  # [..., parts, B, part size]
    x_max = x[..., :half].transpose(-1, -2).contiguous()  # [..., parts, d/2K, B]
    y_max = y[..., :half].transpose(-1, -2).contiguous()
    return _pairwise_mrn(x_max, y_max, x[..., half:].contiguous(), y[..., half:].contiguous())


# Run as written under torch.compile too: traced, its loop of blocks unrolls into slower kernels.
_pairwise_mrn = torch.compiler.disable(PairwiseMRN.apply)


def iqe_distance(x: torch.Tensor, y: torch.Tensor, mix: torch.Tensor | float, group_size: int = 8,
                 pairwise: bool = False) -> torch.Tensor:
    """Interval Quasimetric Embedding distance (Wang and Isola, 2022; the distance QRL learns), as TMD's
    code writes it: the representation is cut into groups of ``group_size``; a group's distance is the
    length of the union of the intervals [x_k, y_k] over its coordinates with x_k < y_k; the result mixes
    the mean and the max over groups, ``mix * mean + (1 - mix) * max`` (``mix`` = sigmoid of a learnt
    scalar). Shapes as ``mrn_distance``; pairwise, it sorts a B x B x 2d tensor.
    """
    x, y = x.unflatten(-1, (-1, group_size)), y.unflatten(-1, (-1, group_size))
    if pairwise:
        x, y = x.unsqueeze(-3), y.unsqueeze(-4)
    x, y = torch.broadcast_tensors(x, y)
    opens = x < y  # coordinates whose interval is not empty
    endpoints, order = torch.sort(torch.cat([x, y], -1), dim=-1)
    # Walking the sorted endpoints: an x of an open interval starts coverage (-1), its y ends it (+1).
    step = torch.where(order < group_size, -1, 1) * opens.gather(-1, order % group_size)
    covered = (step.cumsum(-1) < 0).to(endpoints.dtype)
    change = torch.cat([covered[..., :1], covered[..., 1:] - covered[..., :-1]], -1)
    lengths = -(endpoints * change).sum(-1)
    return mix * lengths.mean(-1) + (1 - mix) * lengths.amax(-1)


@in_float32
def pairwise_energy(x: torch.Tensor, y: torch.Tensor, energy: str, temperature: torch.Tensor | float = 1.0,
                    components: int = 8, iqe_mix: torch.Tensor | float = 0.5):
    """``[..., B, d] x [..., B, d] -> [..., B, B]``: the energy of every row of x with every row of y.

    ``scaled_dot`` divides the dot product by sqrt(d); ``cosine`` normalises each sample's representation
    and divides by ``temperature``; ``l2`` is the negative Euclidean distance, from |x|^2 + |y|^2 - 2 x y^T
    (a B x B x d difference would cost B times the memory); ``mrn`` and ``iqe`` are the negative
    quasimetric distances ``mrn_distance`` (``components`` parts) and ``iqe_distance`` (groups of
    ``components``, mixed by ``iqe_mix``).
    """
    if energy == "dot":
        return x @ y.transpose(-1, -2)
    if energy == "scaled_dot":
        return x @ y.transpose(-1, -2) / math.sqrt(x.shape[-1])
    if energy == "cosine":
        return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(-1, -2) / temperature
    if energy == "l2":
        squared = x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1).unsqueeze(-2) - 2 * x @ y.transpose(-1, -2)
        return -squared.clamp_min(_MIN_SQUARED_DISTANCE).sqrt()
    if energy == "mrn":
        return -mrn_distance(x, y, components, pairwise=True)
    if energy == "iqe":
        return -iqe_distance(x, y, iqe_mix, components, pairwise=True)
    raise ValueError(f"unknown energy {energy!r}: use one of {', '.join(ENERGIES)}")


@in_float32
def paired_energy(x: torch.Tensor, y: torch.Tensor, energy: str, temperature: torch.Tensor | float = 1.0,
                  components: int = 8, iqe_mix: torch.Tensor | float = 0.5):
    """``[..., B, d] x [..., B, d] -> [..., B]``: the energy of row i of x with row i of y."""
    if energy == "dot":
        return (x * y).sum(-1)
    if energy == "scaled_dot":
        return (x * y).sum(-1) / math.sqrt(x.shape[-1])
    if energy == "cosine":
        return (F.normalize(x, dim=-1) * F.normalize(y, dim=-1)).sum(-1) / temperature
    if energy == "l2":
        return -(x - y).pow(2).sum(-1).clamp_min(_MIN_SQUARED_DISTANCE).sqrt()
    if energy == "mrn":
        return -mrn_distance(x, y, components)
    if energy == "iqe":
        return -iqe_distance(x, y, iqe_mix, components)
    raise ValueError(f"unknown energy {energy!r}: use one of {', '.join(ENERGIES)}")
