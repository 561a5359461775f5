"""One gradient update: the loss, its backward pass, the non-finite guard, the optimizer step and the
target critics' step, as one function that is compiled and captured in a CUDA graph whole, and the
speed options a run resolves for its device."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable

import torch
from tensordict import TensorDict, is_tensor_collection
from tensordict.nn import CudaGraphModule
from torchrl._utils import compile_with_warmup
from torchrl.objectives import SoftUpdate

from contrastive_rl.trainers.distributed import average_gradients
from contrastive_rl.objectives.contrastive import ContrastiveLoss
from contrastive_rl.errors import NonFiniteError

log = logging.getLogger(__name__)
AUTOCAST_DTYPES = {"": None, "bfloat16": torch.bfloat16}
AUTO = "auto"
# Runs of at least this many updates get torch.compile on a CPU, where its start-up pays back over them.
CPU_COMPILE_MIN_UPDATES = 20_000
COMPILE_WARMUP = 1  # eager calls before torch.compile traces the update
CUDAGRAPH_WARMUP = 3  # compiled calls before the capture, so that nothing compiles while capturing


@dataclasses.dataclass(frozen=True)
class SpeedPlan:
    """The speed options of a run, with ``auto`` resolved for its device: TF32 matmuls, torch.compile
    and a CUDA graph of the whole update on CUDA; on a CPU, torch.compile when the run is long enough
    to pay for its start-up."""

    compile: bool
    cudagraphs: bool
    tf32: bool

    @classmethod
    def resolve(cls, cfg, device: torch.device, num_updates: int, world_size: int = 1) -> SpeedPlan:
        cuda = device.type == "cuda"
        compiled = _resolve(cfg.compile.compile, cuda or num_updates >= CPU_COMPILE_MIN_UPDATES)
        return cls(
            compile=compiled,
            cudagraphs=_resolve(cfg.compile.cudagraphs, cuda and compiled and world_size == 1),
            tf32=_resolve(cfg.precision.tf32, cuda),
        )

    @property
    def warmup_updates(self) -> int:
        """Updates before the update runs at its speed: the eager ones before compiling, the compiling
        one, the compiled ones before the capture and the capture."""
        if not self.compile:
            return 1
        return COMPILE_WARMUP + 1 + (CUDAGRAPH_WARMUP + 1 if self.cudagraphs else 0)

    def describe(self) -> str:
        """What was chosen, and the overrides that turn each choice off (or on)."""
        choices = [("TF32 matmuls", "precision.tf32", self.tf32), ("torch.compile", "compile.compile", self.compile),
                   ("CUDA graphs", "compile.cudagraphs", self.cudagraphs)]
        chosen = [name for name, _, on in choices if on]
        flips = " ".join(f"{key}={str(not on).lower()}" for _, key, on in choices if on)
        if not chosen:
            return "eager float32 updates (compile.compile=true compiles them)"
        return f"{', '.join(chosen)} (off: {flips})"


def _resolve(value, automatic: bool) -> bool:
    return automatic if value == AUTO else bool(value)


def set_matmul_precision(plan: SpeedPlan) -> None:
    """TF32 float32 matmuls and convolutions on CUDA (PyTorch's "high") when the plan has them."""
    torch.set_float32_matmul_precision("high" if plan.tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = plan.tf32


class GuardedSoftUpdate(SoftUpdate):
    """torchrl's Polyak averaging of the target critics, its step weighted on the device by whether the
    update was applied (``step(applied)``): a skipped update leaves the targets as they were, with no
    host read to decide it."""

    def step(self, applied: torch.Tensor | None = None) -> None:
        self._weight = (1 - self.eps) if applied is None else (1 - self.eps) * applied
        super().step()

    def _step(self, p_source, p_target) -> None:
        # target += weight (source - target), as lerp_, whose tensor weight would be read on the host.
        targets, sources = _leaves(p_target), _leaves(p_source)
        steps = torch._foreach_sub(sources, targets)
        torch._foreach_mul_(steps, self._weight)
        torch._foreach_add_(targets, steps)


def _leaves(parameters) -> list[torch.Tensor]:
    """The tensors of a parameter or of a tensordict of them."""
    if is_tensor_collection(parameters):
        return [tensor.data for tensor in parameters.values(True, True)]
    return [parameters.data]


class GradientUpdate:
    """``update(batch)``: one gradient step of ``loss_module`` on ``batch``, with no host round-trip.

    In one process the whole step is one function: the losses under the configured autocast (the loss
    module keeps its energies and losses in float32), their backward pass, the gradients' norm and the
    non-finite guard (``compute_gradients``, torch.compiled with ``plan.compile``), then the fused Adam
    step and the target critics' Polyak step; ``plan.cudagraphs`` captures the whole of it in a CUDA
    graph. The guard runs on the device: when the losses or the gradient norm are not finite, Adam's
    fused kernel is handed that flag as its ``found_inf`` (it then leaves parameters and state as they
    were, as under a GradScaler) and the targets' step is weighted by zero; with
    ``optim.on_nonfinite=stop`` no later step is applied either. Data-parallel ranks average the
    gradients between the backward pass and the step.

    Returns the detached losses and diagnostics, ``grad_norm`` and ``update_applied``; ``summarize``
    reads a round of them on the host, once. ``plan``: the run's speed options (by default, ``auto``
    resolved as for a short run on ``device``).
    """

    def __init__(self, cfg, loss_module: ContrastiveLoss, optimizer: torch.optim.Optimizer,
                 target_updater: GuardedSoftUpdate | None, device: torch.device, world_size: int = 1,
                 plan: SpeedPlan | None = None) -> None:
        self.plan = plan or SpeedPlan.resolve(cfg, device, 0, world_size)
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
        self.halted = torch.zeros((), dtype=torch.bool, device=device)
        # Read by Adam's fused kernel at each step (torch.optim.Adam passes it on): 1 skips the step.
        self.optimizer.found_inf = torch.zeros((), device=device)
        compute_gradients = self.compute_gradients
        if self.plan.compile:
            # Trace backward() into the compiled graph: forward and backward become one graph, where
            # Dynamo would otherwise break it at the call and run what follows as a second one.
            torch._dynamo.config.trace_autograd_ops = True
            compute_gradients = compile_with_warmup(compute_gradients, mode=cfg.compile.compile_mode or None,
                                                    warmup=COMPILE_WARMUP)
        self._compute_gradients = compute_gradients
        step = self.step
        if self.plan.cudagraphs:
            # CudaGraphModule's warm-up counts every call before the capture, compiling ones included.
            step = CudaGraphModule(step, in_keys=[], out_keys=[], warmup=self.plan.warmup_updates)
        self._step = step

    def step(self, batch: TensorDict) -> TensorDict:
        """One whole update in one process."""
        return self.apply_gradients(self._compute_gradients(batch))

    def compute_gradients(self, batch: TensorDict) -> TensorDict:
        """The losses and diagnostics, with the gradients in the parameters' ``grad``; in one process
        also their norm and whether the step applies, which a compiled graph computes while it has
        them at hand."""
        with self.autocast():
            loss_td = self.loss_module(batch)
        sum(loss_td[key] for key in self.loss_module.loss_keys).backward()
        loss_td = loss_td.detach()
        if self.world_size == 1:
            loss_td["grad_norm"] = self.gradient_norm()
            loss_td["update_applied"] = self.applies(loss_td)
        return loss_td

    def applies(self, loss_td: TensorDict) -> torch.Tensor:
        """Whether every checked value is finite (and, under ``stop``, no earlier update was not)."""
        finite = torch.stack([loss_td[key].float() for key in self.checked_keys]).isfinite().all()
        return finite & ~self.halted if self.on_nonfinite == "stop" else finite

    @torch.no_grad()
    def apply_gradients(self, loss_td: TensorDict) -> TensorDict:
        """The optimizer's and the target critics' steps, each skipped on the device unless
        ``update_applied``; the gradients cleared."""
        applied = loss_td["update_applied"]
        self.optimizer.found_inf.copy_(~applied)
        self.optimizer.step()
        if self.target_updater is not None:
            self.target_updater.step(applied)
        if self.on_nonfinite == "stop":
            self.halted.logical_or_(~applied)
        self.optimizer.zero_grad(set_to_none=True)
        return loss_td

    def gradient_norm(self) -> torch.Tensor:
        return torch.nn.utils.get_total_norm([p.grad for p in self.parameters if p.grad is not None])

    def __call__(self, batch: TensorDict) -> TensorDict:
        torch.compiler.cudagraph_mark_step_begin()
        if self.world_size == 1:
            return self._step(batch).clone()
        loss_td = self._compute_gradients(batch)
        average_gradients(self.parameters, self.world_size)
        loss_td["grad_norm"] = self.gradient_norm()
        loss_td["update_applied"] = self.applies(loss_td)
        return self.apply_gradients(loss_td)

    def summarize(self, loss_tds: list[TensorDict], where: Callable[[int], str]) -> tuple[TensorDict | None, int]:
        """A round of updates read on the host at once: the mean of the applied ones' entries (None if
        none was) and how many were skipped. A non-finite update raises NonFiniteError under ``stop``
        (neither it nor any later one was applied), or is logged under ``skip``; ``where(i)`` names the
        round's update ``i``."""
        if not loss_tds:
            return None, 0
        stacked = torch.stack(loss_tds).cpu()
        applied = stacked["update_applied"]
        for index in (~applied).nonzero().flatten().tolist():
            row = stacked[index]
            message = f"non-finite {where(index)}: " + ", ".join(
                f"{key}={row[key].item():.4g}" for key in self.checked_keys)
            if self.on_nonfinite == "stop":
                raise NonFiniteError(message)
            log.warning("%s; batch skipped", message)
        kept = stacked[applied].exclude("update_applied")
        return (kept.mean() if len(kept) else None), int((~applied).sum())
