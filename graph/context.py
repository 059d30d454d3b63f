"""The run context every stage receives: config, device, step counters, process rank, per-stage RNGs and metrics.

In a multi-process run (see graph/distributed.py) ``rank`` / ``world_size`` say which share of the global
batch this process holds; ``all_reduce_mean``, ``barrier`` and ``main_process_first`` are no-ops in one process.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rollgraph.graph.errors import RunError

READ_AT_ONCE = ("cpu",)  # devices whose tensors ctx.log reads at once: no host sync to save


def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA when present, else MPS, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of values, stable across processes and Python versions."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class StepSeeds:
    """``derive_seed(*head, step, *tail)`` for the streams keyed by the step, computed ``BLOCK`` steps at a time.

    The same values as ``derive_seed``; what changes is when they are computed. A seed derived once per step,
    between two steps' tensor work, runs cold (about 18 µs on the benchmark machine, against 2 µs in a loop); a
    block of them in one go costs a few µs per step."""

    BLOCK = 64

    def __init__(self):
        self._blocks: dict[tuple, tuple[int, list[int]]] = {}  # (head, tail) -> (block index, its seeds)

    def __call__(self, head: tuple, step: int, tail: tuple) -> int:
        block, offset = divmod(step, self.BLOCK)
        entry = self._blocks.get((head, tail))
        if entry is None or entry[0] != block:
            first = block * self.BLOCK
            entry = (block, [derive_seed(*head, s, *tail) for s in range(first, first + self.BLOCK)])
            self._blocks[(head, tail)] = entry
        return entry[1][offset]


@dataclass
class RunContext:
    config: Any
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    output_dir: Path | None = None
    seed: int = 0
    step: int = 0  # optimizer steps completed before the current one
    micro_step: int = 0
    accumulation_steps: int = 1
    rank: int = 0
    world_size: int = 1
    autocast_dtype: torch.dtype | None = None
    accelerator: Any = None
    triggers: frozenset[str] = frozenset()  # while an every node runs: why it is due ("interval", "end", "request")
    save_checkpoint: Callable[..., Path | None] | None = None  # set by the trainer: (requested, total_limit) -> path
    metrics: dict[str, list[tuple[float, str]]] = field(default_factory=lambda: defaultdict(list))
    finite_checks: dict[str, str] = field(default_factory=dict)  # metric -> advice, checked by pop_metrics
    unread: int = 0  # accelerator tensors in ``metrics``, read by pop_metrics
    step_seeds: StepSeeds = field(default_factory=StepSeeds, repr=False)
    resources: dict[str, Any] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_accumulation_boundary(self) -> bool:
        return self.micro_step == self.accumulation_steps - 1

    def seed_global_rng(self, *parts: Any) -> None:
        """Re-seed torch's global RNGs from (seed, *parts): the CPU generator, and the run's accelerator's. Not
        ``torch.manual_seed``: that also queues a seed, with a captured stack trace, for every accelerator backend
        not initialised, which costs about 1 ms per call on a CPU-only machine."""
        self._seed_torch(derive_seed(self.seed, *parts))

    def seed_step_rng(self) -> None:
        """``seed_global_rng("global", step, rank)``, the trainer's re-seed at every optimizer step."""
        self._seed_torch(self.step_seeds((self.seed, "global"), self.step, (self.rank,)))

    def _seed_torch(self, seed: int) -> None:
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed_all(seed)
        elif self.device.type == "mps":
            torch.mps.manual_seed(seed)

    def generator(self, stage_id: str, *extra: Any) -> torch.Generator:
        """A CPU generator seeded from (seed, stage id, step, micro-step, rank, extra): each stage draws
        its own reproducible stream, independent of which other stages ran, and resume needs no RNG state."""
        g = torch.Generator()
        g.manual_seed(self.step_seeds((self.seed, stage_id), self.step, (self.micro_step, self.rank, *extra)))
        return g

    def batch_generator(self, stage_id: str, *extra: Any) -> torch.Generator:
        """A generator shared by every rank for this micro-step (keyed by seed, stage id, step, micro-step).

        A stage draws its randomness for the whole global batch (n_local × world_size samples) and keeps its
        own slice (``local_slice``), so what a sample draws does not depend on how many processes share the
        global batch. Drawing world_size times more random numbers than needed is negligible next to a model
        call, and one vectorised draw is far cheaper than a generator per sample."""
        g = torch.Generator()
        g.manual_seed(self.step_seeds((self.seed, stage_id), self.step, (self.micro_step, "global-batch", *extra)))
        return g

    def local_slice(self, n_local: int) -> slice:
        """This rank's samples within a global batch drawn with ``batch_generator``."""
        return slice(self.rank * n_local, (self.rank + 1) * n_local)

    def move(self, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``tensor.to(self.device, dtype)``, without the call when it would change nothing: a step's stages move
        every batch, and on the CPU a no-op ``.to()`` is a dispatcher call that costs more than the check."""
        if tensor.device == self.device and (dtype is None or tensor.dtype == dtype):
            return tensor
        return tensor.to(self.device, dtype)

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of a (detached) tensor over all ranks; the tensor itself in one process."""
        if self.world_size == 1:
            return tensor
        out = tensor.detach().clone()
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
        return out / self.world_size

    def barrier(self) -> None:
        """Wait until every rank got here (bounded by the process-group timeout, 30 min)."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def main_process_first(self):
        """Rank 0 runs the block first (e.g. builds a cache on disk), the other ranks after it finished."""
        return self.accelerator.main_process_first() if self.accelerator is not None else nullcontext()

    def log(self, key: str, value: float | torch.Tensor, reduce: str = "mean", finite_or: str | None = None) -> Any:
        """Record a metric for this optimizer step; micro-steps are combined by ``reduce`` (mean | sum | last).
        A tensor on an accelerator is kept (a detached copy) and read at the step end together with the others:
        one host sync per step, however many metrics, instead of one per ``.item()``; a CPU tensor is read at
        once (no sync to save). With ``finite_or`` (advice for the person), a non-finite value stops the run at
        the step end with a RunError naming the metric. Returns what it recorded (a float, or the kept tensor), which
        may be logged again under another key without a second read."""
        if isinstance(value, torch.Tensor):
            if value.device.type in READ_AT_ONCE:
                value = value.item() if value.dtype == torch.float32 else value.detach().float().item()
            else:
                value = value.detach().to(torch.float32, copy=True).reshape(())
                self.unread += 1
        self.metrics[key].append((value, reduce))
        if finite_or is not None:
            self.finite_checks[key] = finite_or
        return value

    def pop_metrics(self) -> dict[str, float]:
        """This step's metrics, each combined over its micro-steps, as floats; the log starts empty again."""
        metrics, self.metrics = self.metrics, defaultdict(list)
        if self.unread:
            _read_tensors(metrics)
            self.unread = 0
        out = {}
        for key, values in metrics.items():
            if len(values) == 1:
                out[key] = float(values[0][0])
                continue
            reduce = values[-1][1]
            total = sum(float(v) for v, _ in values)
            out[key] = total if reduce == "sum" else float(values[-1][0]) if reduce == "last" else total / len(values)
        if self.finite_checks:
            checks, self.finite_checks = self.finite_checks, {}
            for key, advice in checks.items():
                if not math.isfinite(out[key]):
                    raise RunError(f"non-finite {key} ({out[key]}) at step {self.step}; stopping. {advice}")
        return out

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def _read_tensors(metrics: dict[str, list[tuple[Any, str]]]) -> None:
    """Replace the tensors logged on accelerators by their values: one stacked read per device."""
    by_device: dict[torch.device, list] = defaultdict(list)
    for key, values in metrics.items():
        for i, (v, _) in enumerate(values):
            if isinstance(v, torch.Tensor):
                by_device[v.device].append((key, i, v))
    for items in by_device.values():
        for (key, i, _), number in zip(items, torch.stack([v for _, _, v in items]).tolist(), strict=True):
            metrics[key][i] = (number, metrics[key][i][1])
