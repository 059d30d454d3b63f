"""The values that travel along the graph's edges, and their registered port types.

This is the one module a plugin stage imports its payload types from: ``Batch``, ``NoisyInput``,
``Prediction``, ``Loss`` (and ``Loss.term`` for a new loss term), ``Schedule``, ``Model``, ``Optimizer``,
``DataSource``, ``Cond`` / ``index_cond``. The stage contract itself (``Stage``, ``Port``, ``register_stage``,
``same_names``, ``RunError``) comes from ``rollgraph.graph``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from rollgraph.graph.ports import register_port_type
from rollgraph.stages.schedule import Schedule
from torch import Tensor

Cond = dict[str, Tensor]

__all__ = ["Batch", "Cond", "DataSource", "Gradients", "Loss", "Model", "NoisyInput", "Optimizer", "Prediction", "Schedule", "as_float32", "index_cond"]


def index_cond(cond: Cond, idx: Tensor) -> Cond:
    """Select samples of per-sample conditioning (every tensor has the batch first)."""
    return {k: v[idx] for k, v in cond.items()}


def as_float32(t: Tensor) -> Tensor:
    """``t.float()``, without the dispatcher call when t already is float32 (the common case, every step)."""
    return t if t.dtype == torch.float32 else t.float()


@dataclass
class Batch:
    """A training batch: clean samples in the model's space (pixels in [-1, 1] or latents) and their conditioning."""

    x0: Tensor
    cond: Cond = field(default_factory=dict)
    index: Tensor | None = None  # dataset indices, for reproducibility checks

    def __len__(self) -> int:
        return self.x0.shape[0]


@dataclass
class NoisyInput:
    """A model input on the forward process plus everything a loss needs.

    ``x`` is what the model sees; ``x_clean`` is the teacher-forcing input a(level)·x0 + s(level)·noise.
    After a rollout, ``x`` differs from ``x_clean`` for the samples in ``rolled`` (``steps`` = k_i).
    ``target`` is the training target: the clean-trajectory one, unless the rollout stage was told to use the
    corrected target for its rolled samples (``scheduled_sampling_target``, stages/rollout.py).
    """

    x: Tensor
    x_clean: Tensor
    level: Tensor
    x0: Tensor
    noise: Tensor
    target: Tensor
    cond: Cond = field(default_factory=dict)
    rolled: Tensor | None = None
    steps: Tensor | None = None

    def with_input(self, x: Tensor, rolled: Tensor, steps: Tensor) -> NoisyInput:
        return replace(self, x=x, rolled=rolled, steps=steps)

    @property
    def rolled_mask(self) -> Tensor:
        return self.rolled if self.rolled is not None else torch.zeros(len(self.x), dtype=torch.bool, device=self.x.device)


@dataclass
class Prediction:
    """The model's output at a NoisyInput, in the schedule's prediction type, with gradient."""

    pred: Tensor
    noisy: NoisyInput


@dataclass
class Loss:
    """A loss: ``total`` is what is optimised; ``terms`` are the named, unweighted parts (logged as loss/<name>),
    as computed: with their autograd graph, which logging detaches (a lone term of weight 1 *is* the total).

    Each loss stage outputs its own weighted term (``Loss.term``); the ``loss.sum`` node adds the list."""

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def term(cls, name: str, value: Tensor, weight: float = 1.0) -> Loss:
        """One term: total = weight · value, logged unweighted as loss/<name>."""
        return cls(value if weight == 1.0 else weight * value, {name: value})


@dataclass
class SampleSet:
    """Generated images in [-1, 1], (N, C, H, W) on the CPU, with what they were generated from: a caption per
    image (``labels``: class names or prompts, else None), the class labels of a class-conditional model, and
    ``meta`` (sampler, steps, seed) for whoever writes them."""

    images: Tensor
    labels: list[str] | None = None
    class_labels: Tensor | None = None
    meta: dict[str, str] = field(default_factory=dict)


class Gradients:
    """Marker: the micro-step's backward pass has run (what the update phase waits for)."""


class Model:
    """Marker base for model adapters (see stages/models)."""


class Optimizer:
    """Marker base for the optimizer bundle (see stages/optimize)."""


class DataSource:
    """Marker base for data sources (see stages/load)."""


register_port_type("Batch", Batch, "a batch of clean samples and their conditioning")
register_port_type("NoisyInput", NoisyInput, "a model input on the forward process, with its targets")
register_port_type("Prediction", Prediction, "a model prediction with gradient")
register_port_type("Loss", Loss, "a running loss with named terms")
register_port_type("Schedule", Schedule, "the noise schedule / prediction type")
register_port_type("Model", Model, "a model adapter")
register_port_type("Optimizer", Optimizer, "optimizer, LR schedule and EMA")
register_port_type("DataSource", DataSource, "an iterable data source")
register_port_type("ClassImages", DataSource, "the class (regularisation) images of Dreambooth prior preservation")
register_port_type("Gradients", Gradients, "the backward pass has accumulated gradients")
register_port_type("StepStats", dict, "statistics of an optimizer step (lr a float, grad_norm a 0-d tensor: no host sync)")
register_port_type("Samples", SampleSet, "generated images with their captions")
