"""One gradient update: the loss and its backward pass (compiled, captured or eager, at the configured
precision), the non-finite guard, the optimizer step and the target critics' step."""
from __future__ import annotations

import contextlib
import functools

import torch
from tensordict import TensorDict
from tensordict.nn import CudaGraphModule
from torchrl._utils import compile_with_warmup
from torchrl.objectives import SoftUpdate

from contrastive_rl.distributed import average_gradients
from contrastive_rl.loss import ContrastiveLoss
from contrastive_rl.nonfinite import check_finite

AUTOCAST_DTYPES = {"": None, "bfloat16": torch.bfloat16}


def set_matmul_precision(cfg) -> None:
    """TF32 float32 matmuls and convolutions on CUDA with ``precision.tf32`` (PyTorch's "high")."""
    torch.set_float32_matmul_precision("high" if cfg.precision.tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = bool(cfg.precision.tf32)


class GradientUpdate:
    """``update(batch, where)``: one gradient step of ``loss_module`` on ``batch``.

    The loss and its backward pass run as one function, torch.compile'd with ``compile.compile``,
    captured in a CUDA graph with ``compile.cudagraphs``, under bf16 autocast with
    ``precision.autocast=bfloat16`` (the loss module keeps its energies and losses in float32). Then,
    eagerly: the gradients averaged over data-parallel ranks, their norm, the non-finite guard
    (``optim.on_nonfinite``), the fused Adam step and the target critics' Polyak step.

    Returns the detached losses and diagnostics with ``grad_norm``, or None when the guard skips the
    batch; raises NonFiniteError when it stops the run (before anything is applied).
    """

    def __init__(self, cfg, loss_module: ContrastiveLoss, optimizer: torch.optim.Optimizer,
                 target_updater: SoftUpdate | None, device: torch.device, world_size: int = 1) -> None:
        self.loss_module = loss_module
        self.optimizer = optimizer
        self.target_updater = target_updater
        self.world_size = world_size
        self.on_nonfinite = cfg.optim.on_nonfinite
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]
        self.checked_keys = (*loss_module.loss_keys, "grad_norm")
        autocast_dtype = AUTOCAST_DTYPES[cfg.precision.autocast]
        self.autocast = (
            functools.partial(torch.autocast, device.type, dtype=autocast_dtype) if autocast_dtype
            else contextlib.nullcontext
        )
        compute_gradients = self.compute_gradients
        if cfg.compile.compile:
            # Trace backward() into the compiled graph: forward and backward become one graph, where
            # Dynamo would otherwise break it at the call and run what follows as a second one.
            torch._dynamo.config.trace_autograd_ops = True
            compute_gradients = compile_with_warmup(compute_gradients, mode=cfg.compile.compile_mode or None,
                                                    warmup=1)
        if cfg.compile.cudagraphs:
            compute_gradients = CudaGraphModule(compute_gradients, in_keys=[], out_keys=[], warmup=5)
        self._compute_gradients = compute_gradients

    def compute_gradients(self, batch: TensorDict) -> TensorDict:
        """The losses and diagnostics, with the gradients in the parameters' ``grad``; in one process
        also their norm, which a compiled graph then computes while it has them at hand."""
        with self.autocast():
            loss_td = self.loss_module(batch)
        sum(loss_td[key] for key in self.loss_module.loss_keys).backward()
        loss_td = loss_td.detach()
        if self.world_size == 1:
            loss_td["grad_norm"] = self.gradient_norm()
        return loss_td

    def gradient_norm(self) -> torch.Tensor:
        return torch.nn.utils.get_total_norm([p.grad for p in self.parameters if p.grad is not None])

    def __call__(self, batch: TensorDict, where: str) -> TensorDict | None:
        torch.compiler.cudagraph_mark_step_begin()
        loss_td = self._compute_gradients(batch).clone()
        if self.world_size > 1:
            average_gradients(self.parameters, self.world_size)
            loss_td["grad_norm"] = self.gradient_norm()
        finite = check_finite(loss_td, self.checked_keys, where, self.on_nonfinite)
        if finite:
            self.optimizer.step()
            if self.target_updater is not None:
                self.target_updater.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_td if finite else None
