"""Optimizer setup (AdamW, LR schedule, optional EMA) and the optimizer step.

LR schedule: linear warm-up over lr_warmup_steps to learning_rate, then constant, linear decay to 0, or
cosine decay to 0 at max_train_steps. It is a pure function of the step, so resuming needs no scheduler state.
EMA (optional): theta_ema <- d·theta_ema + (1 - d)·theta after every optimizer step.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph import ConfigError, Issue, Port, RunError, Stage, register_stage, same_names
from rollgraph.stages.stage_params import pick
from rollgraph.stages.types import Gradients, Loss, Optimizer
from safetensors.torch import load_file, save_file


class OptimizerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Optimizer"

    learning_rate: float = Field(1e-4, gt=0, le=1, description="Peak learning rate")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field("constant_with_warmup", description="LR schedule after warm-up")
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps")
    max_train_steps: int = Field(1000, ge=1, description="Optimizer steps to train")
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_weight_decay: float = Field(1e-2, ge=0, le=1, description="AdamW decoupled weight decay")
    adam_epsilon: float = Field(1e-8, gt=0, le=1e-2)
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0 = no clipping)")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096, description="Micro-steps per optimizer step")
    use_8bit_adam: bool = Field(False, description="8-bit AdamW from bitsandbytes (CUDA only; needs the bitsandbytes package)")
    adam_fused: bool = Field(False, description="torch's fused AdamW kernel (one kernel for all parameters)")
    use_ema: bool = Field(False, description="Keep an exponential moving average of the weights (used for validation samples)")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA decay d")


def lr_factor(step: int, p: OptimizerParams) -> float:
    """Multiplier of learning_rate for the optimizer step with index `step` (0-based)."""
    if step < p.lr_warmup_steps:
        return (step + 1) / p.lr_warmup_steps
    if p.lr_scheduler in ("constant", "constant_with_warmup"):
        return 1.0
    progress = (step - p.lr_warmup_steps) / max(1, p.max_train_steps - p.lr_warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if p.lr_scheduler == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_adamw(trainable: list[torch.nn.Parameter], p: OptimizerParams) -> torch.optim.Optimizer:
    kwargs = dict(lr=p.learning_rate, betas=(p.adam_beta1, p.adam_beta2), weight_decay=p.adam_weight_decay, eps=p.adam_epsilon)
    if p.use_8bit_adam:
        device = trainable[0].device
        if device.type != "cuda":
            raise ConfigError([Issue("use_8bit_adam", f"8-bit AdamW (bitsandbytes) runs on CUDA only; this run is on {device.type}")])
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError([Issue("use_8bit_adam", "needs the bitsandbytes package (pip install bitsandbytes)")]) from None
        return bnb.optim.AdamW8bit(trainable, **kwargs)
    return torch.optim.AdamW(trainable, fused=True if p.adam_fused else None, **kwargs)


class OptimizerBundle(Optimizer):
    def __init__(self, model, params: OptimizerParams):
        self.model = model
        self.params = params
        self.trainable = model.trainable_parameters()
        if not self.trainable:
            raise RunError("the model has no trainable parameters")
        self.optimizer = make_adamw(self.trainable, params)
        self.ema = [p.detach().clone() for p in self.trainable] if params.use_ema else None

    def set_lr(self, step: int) -> float:
        lr = self.params.learning_rate * lr_factor(step, self.params)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def update_ema(self) -> None:
        if self.ema is None:  # checked before entering no_grad: a grad-mode switch per step for nothing otherwise
            return
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.trainable], 1.0 - self.params.ema_decay)

    def swap_ema(self) -> None:
        """Exchange live and EMA weights (call twice to restore)."""
        if self.ema is None:
            return
        with torch.no_grad():
            for live, avg in zip(self.trainable, self.ema, strict=True):
                tmp = live.detach().clone()
                live.copy_(avg)
                avg.copy_(tmp)

    @contextmanager
    def ema_weights(self):
        """The EMA weights in the model for the block (the live ones when the run keeps no EMA)."""
        self.swap_ema()
        try:
            yield
        finally:
            self.swap_ema()

    def save_state(self, directory: Path) -> None:
        state = self.optimizer.state_dict()
        tensors, scalars = {}, {}
        for idx, entry in state["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
                else:
                    scalars[f"{idx}.{key}"] = value
        if self.ema is not None:
            tensors.update({f"ema.{i}": t.detach().contiguous().cpu() for i, t in enumerate(self.ema)})
        save_file(tensors, str(directory / "optimizer.safetensors"))
        (directory / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"], "scalars": scalars}, indent=1))

    def load_state(self, directory: Path) -> None:
        tensors = load_file(str(directory / "optimizer.safetensors"))
        meta = json.loads((directory / "optimizer.json").read_text())
        per_param: dict[int, dict] = {}
        for name, value in tensors.items():
            if name.startswith("state."):
                _, idx, key = name.split(".", 2)
                per_param.setdefault(int(idx), {})[key] = value
        for name, value in meta["scalars"].items():
            idx, key = name.split(".", 1)
            per_param.setdefault(int(idx), {})[key] = value
        self.optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
        if self.ema is not None:
            device = self.trainable[0].device
            self.ema = [tensors[f"ema.{i}"].to(device) for i in range(len(self.ema))]


# gradient_accumulation_steps is the trainer's (micro-steps per update), not this stage's
AdamWParams = pick("AdamWParams", "optimize.adamw's params: the optimizer keys the bundle reads.", (OptimizerParams,),
                   tuple(k for k in OptimizerParams.model_fields if k != "gradient_accumulation_steps"))


@register_stage
class BuildOptimizer(Stage):
    """AdamW over the model's trainable parameters, plus the LR schedule and EMA (setup)."""

    type = "optimize.adamw"
    phase = "setup"
    Params = AdamWParams
    binds = same_names(AdamWParams)
    inputs = (Port("model", "Model"),)
    outputs = (Port("optimizer", "Optimizer"),)

    def run(self, ctx, model):
        return {"optimizer": OptimizerBundle(model, self.params)}


NON_FINITE_ADVICE = "The last checkpoint is intact; try a lower learning_rate or max_grad_norm > 0."


@register_stage
class Backward(Stage):
    """Backward of loss / accumulation steps (every micro-step); logs loss and loss/<term> averaged over ranks."""

    type = "optimize.backward"
    inputs = (Port("loss", "Loss"),)
    outputs = (Port("gradients", "Gradients"),)

    def run(self, ctx, loss: Loss):
        # One all-reduce of [total, *terms] (mean over ranks, a no-op in one process): the logged loss is the
        # global batch's, and a non-finite loss on any rank stops every rank at the same step end (read there with
        # the other metrics, no host sync here), before anything of that step is saved.
        names = list(loss.terms)
        parts = [loss.total, *(loss.terms[n] for n in names)]  # ctx.log detaches what it keeps
        if ctx.world_size > 1:
            values = ctx.all_reduce_mean(torch.stack([t.detach().float().reshape(()) for t in parts]))
            parts = [values[i] for i in range(len(parts))]
        total = ctx.log("loss", parts[0], finite_or=NON_FINITE_ADVICE)
        for name, value in zip(names, parts[1:], strict=True):
            ctx.log(f"loss/{name}", total if value is parts[0] else value)  # a lone term of weight 1 is the total
        # DDP averages the gradients over ranks here, on the accumulation boundary only (the trainer runs the
        # other micro-steps under no_sync), so every rank steps with the global batch's gradient.
        steps = ctx.accumulation_steps
        (loss.total / steps if steps > 1 else loss.total).backward()  # x / 1 is x: one op and graph node fewer
        return {"gradients": Gradients()}


@register_stage
class OptimizerUpdate(Stage):
    """Once per optimizer step, after the micro-steps' backward passes: set the LR, clip the gradient norm
    to max_grad_norm, step, zero the gradients, update the EMA."""

    type = "optimize.update"
    phase = "update"
    sink = True
    inputs = (Port("gradients", "Gradients"), Port("optimizer", "Optimizer"))
    outputs = (Port("stats", "StepStats"),)

    def run(self, ctx, gradients: Gradients, optimizer: OptimizerBundle):
        lr = optimizer.set_lr(ctx.step)
        p = optimizer.params
        norm = torch.nn.utils.clip_grad_norm_(optimizer.trainable, p.max_grad_norm if p.max_grad_norm > 0 else float("inf"))
        optimizer.optimizer.step()
        optimizer.optimizer.zero_grad(set_to_none=True)
        optimizer.update_ema()
        ctx.log("lr", lr, reduce="last")
        ctx.log("grad_norm", norm, reduce="last")
        return {"stats": {"lr": lr, "grad_norm": norm}}


def ema_weights(optimizer: OptimizerBundle | None):
    """A context with the EMA weights swapped in, for a stage whose ``optimizer`` input may be unwired."""
    return optimizer.ema_weights() if optimizer is not None else nullcontext()
