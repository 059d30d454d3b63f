"""The solver interface and the batched driver ``solve``, shared by the rollout and by sampling.

Every schedule writes a noisy sample as x = a(level)·x0 + s(level)·eps (``rollgraph.stages.schedule``)
and converts any model prediction to (x0_hat, eps_hat), so each solver is written once, on those, for
every prediction type (flow_matching, epsilon, v_prediction, sample).

Batch layout. ``path`` (B, K+1) holds each sample's own levels and ``steps`` (B,) its step count:
sample i integrates path[i,0] -> path[i,1] -> ... -> path[i,steps[i]]; later entries are padding.
A batch costs sum_i steps_i × evals_per_step sample-forwards in max_i steps_i "rounds" of
evals_per_step calls each (no fewer rounds are possible: a sample's steps are sequential). Which
samples share a round is the ``batching`` (see ``call_plan``):

* ``shrinking``: round r carries the samples with steps > r, all at their step r; the rounds shrink.
* ``balanced``: McNaughton's wrap-around rule (McNaughton 1959, "Scheduling with deadlines and loss
  functions"): the samples' steps are laid end to end and dealt to the rounds in turn, so every round
  carries floor or ceil(sum_i steps_i / max_i steps_i) samples. A sample split over the wrap takes its
  first steps in the first rounds and the rest at the end (possible because steps_i <= max steps), so its
  steps stay in order, but samples at different step indices now share a call.

Each sample's step index is therefore a vector ``ctx.step_index`` (n,), and a multistep solver keeps
its history as full-batch tensors written at the active indices, each sample choosing its own order.
Results do not depend on the batching (up to how the model itself rounds a different batch).

Why not diffusers' schedulers: they step one timestep shared by the whole batch and keep the history
on the scheduler object, while a rollout needs per-sample paths and step counts. They are the
references our solvers are tested against (tests/test_solvers.py).

Numerics. Levels, log-SNRs lambda = log(a/s) and the per-sample coefficients are computed on the CPU
in float64 and cast to x.dtype on x.device; only x-sized tensors live on the device. lambda is -inf
where a = 0 (flow sigma = 1) and +inf where s = 0 (the clean level): the updates use ratios such as
s_next/s and exp(-h) (which is 0 when h = +inf), and every higher-order correction falls back to
its finite limit or to first order where an interval is infinite. A step between two equal levels
(a rollout clamped at the noisiest level) leaves x where it is, after any correction the solver
makes on arrival (UniPC corrects the previous step there, as diffusers does); it still costs its model
evaluations.

Cost. A solver computes its coefficients once per solve, for every (sample, step) pair at once
(``Solver.tables`` on ``StepContext.every_step()``), and each round reads its rows (``ctx.tables(self)``), so a
round costs its model call plus a few x-sized operations rather than dozens of tiny float64 ones (UniPC spent
more time on those than in the model of a 0.3 M-parameter MLP). Elementwise, the coefficients are the same
numbers either way. A solver without ``tables`` (a third party's) may compute per round from ``ctx.level`` etc.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from rollgraph.stages.schedule import Schedule
from torch import Tensor

ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]
Batching = Literal["shrinking", "balanced"]
BATCHINGS: tuple[str, ...] = ("shrinking", "balanced")


@dataclass
class SolveResult:
    """x: the batch after integration; model_evals: sample-forwards; calls: model_fn calls."""

    x: Tensor
    model_evals: int
    calls: int


class Solver(ABC):
    """A one-step update rule. Solvers are stateless: per-solve history lives in ``StepContext.state``."""

    name: ClassVar[str]
    evals_per_step: ClassVar[int] = 1

    @abstractmethod
    def step(self, x: Tensor, ctx: StepContext) -> Tensor:
        """Move the active samples ``x`` (= batch[ctx.idx]) from level path[:, j] to path[:, j + 1]."""

    def tables(self, grid: StepContext) -> StepTables:
        """This solver's per-step coefficients for every (sample, step) pair of ``grid`` (``every_step()``):
        computed once per solve, read per round with ``ctx.tables(self)``. Only solvers that read tables define it;
        calling ``ctx.tables`` for one that does not is a programming error."""
        raise TypeError(f"{type(self).__name__} has no step tables: it computes its coefficients per round")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclass
class StepTables:
    """A solver's per-(sample, step) quantities, each a flat tensor over the pairs of ``every_step()``.

    coefs: float64 coefficients, read cast to x's dtype and device; masks: bool; levels: float64 levels at
    which the model is evaluated (read as they are, for ``ctx.evaluate``)."""

    coefs: dict[str, Tensor] = field(default_factory=dict)
    masks: dict[str, Tensor] = field(default_factory=dict)
    levels: dict[str, Tensor] = field(default_factory=dict)

    def stacked(self) -> tuple[dict[str, int], Tensor, dict[str, int], Tensor, dict[str, int], Tensor]:
        """Each kind as one (count, pairs) tensor plus its name -> row map, so a round reads them in three gathers."""
        def stack(d: dict[str, Tensor], dtype) -> tuple[dict[str, int], Tensor]:
            names = {name: i for i, name in enumerate(d)}
            return names, torch.stack([v.to(dtype) for v in d.values()]) if d else torch.zeros(0, 0, dtype=dtype)
        return (*stack(self.coefs, torch.float64), *stack(self.masks, torch.bool), *stack(self.levels, torch.float64))


class RoundTables:
    """One round's rows of a solver's ``StepTables``: the active samples, each at its own step."""

    def __init__(self, stacked, pairs: Tensor):
        self._coef_names, coefs, self._mask_names, masks, self._level_names, levels = stacked
        self._coefs = coefs[:, pairs] if self._coef_names else coefs
        self._masks = masks[:, pairs] if self._mask_names else masks
        self._levels = levels[:, pairs] if self._level_names else levels
        self._cast: dict[tuple, Tensor] = {}
        self._flags: dict[tuple[str, str], bool] = {}

    def coef(self, name: str, like: Tensor) -> Tensor:
        """The (n,) coefficient cast to like's dtype (on the CPU first) on like's device, broadcastable to like."""
        key = (like.dtype, like.device, like.dim())
        if key not in self._cast:
            shape = (*self._coefs.shape, *([1] * (like.dim() - 1)))
            self._cast[key] = self._coefs.to(like.dtype).to(like.device).reshape(shape)
        return self._cast[key][self._coef_names[name]]

    def mask(self, name: str, like: Tensor) -> Tensor:
        """The (n,) mask on like's device, broadcastable to like."""
        return self.rows(name).to(like.device).reshape(-1, *([1] * (like.dim() - 1)))

    def rows(self, name: str) -> Tensor:
        """The (n,) mask on the CPU (a subset for ``ctx.evaluate``)."""
        return self._masks[self._mask_names[name]]

    def any(self, name: str) -> bool:
        if (name, "any") not in self._flags:
            self._flags[name, "any"] = bool(self.rows(name).any())
        return self._flags[name, "any"]

    def all(self, name: str) -> bool:
        if (name, "all") not in self._flags:
            self._flags[name, "all"] = bool(self.rows(name).all())
        return self._flags[name, "all"]

    def level(self, name: str) -> Tensor:
        """The (n,) float64 level, for ``ctx.evaluate``."""
        return self._levels[self._level_names[name]]


class OrderedSolver(Solver):
    """A solver with a choice of order (``orders``; UniPC, DPM-Solver++): validated once, shown in its repr."""

    orders: ClassVar[tuple[int, ...]] = ()

    def __init__(self, order: int = 2):
        if order not in self.orders:
            raise ValueError(f"{self.name} supports orders {self.orders}, got {order!r}")
        self.order = order

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order})"


class StepContext:
    """What a solver step sees: the active samples, each at its own step index, the model, per-sample history."""

    def __init__(self, model_fn: ModelFn, schedule: Schedule, path: Tensor, steps: Tensor, x: Tensor):
        self.model_fn = model_fn
        self.schedule = schedule
        # the model sees levels in the path's own dtype; all coefficient math uses float64 on the CPU
        self.level_dtype = path.dtype if path.is_floating_point() else torch.float32
        self.path = path.detach().cpu().to(self.level_dtype).double()
        self.lam = schedule.lambda_(self.path).double()
        self.steps = steps.detach().cpu().long()
        self.device, self.dtype = x.device, x.dtype
        self._full = x
        self.state: dict[str, Tensor] = {}
        self.calls = 0
        self.model_evals = 0
        self.idx = self.idx_dev = torch.zeros(0, dtype=torch.long)
        self.step_index = torch.zeros(0, dtype=torch.long)
        self._gathered: dict[tuple[str, int], Tensor] = {}
        self._tables: dict[int, tuple] = {}  # id(solver) -> its stacked StepTables, for the whole solve
        self._round_tables: dict[int, RoundTables] = {}

    def begin(self, idx: Tensor, step_index: Tensor) -> None:
        """Start a round: the samples ``idx`` (CPU, ascending) each take their step ``step_index``."""
        self.idx, self.step_index = idx, step_index
        self.idx_dev = idx.to(self.device)
        self._gathered = {}  # this round's levels and lambdas, gathered once per offset
        self._round_tables = {}

    def every_step(self) -> StepContext:
        """A view whose "active samples" are every (sample i, step j) pair, j = 0 .. K-1, i-major: ``level``,
        ``lam_at``, ``has_history``, ``is_last``, ... then return (B·K,) tensors. For ``Solver.tables`` only (no
        model, no history). Pairs past a sample's own steps are padding and never read."""
        view = copy.copy(self)
        n, k = self.path.shape[0], self.path.shape[1] - 1
        view.idx = view.idx_dev = torch.arange(n).repeat_interleave(k)
        view.step_index = torch.arange(k).repeat(n)
        view._gathered, view._tables, view._round_tables, view.state = {}, {}, {}, {}
        return view

    def tables(self, solver: Solver) -> RoundTables:
        """This round's rows of ``solver.tables`` (computed on the solver's first round of the solve)."""
        key = id(solver)
        if key not in self._round_tables:
            if key not in self._tables:
                self._tables[key] = solver.tables(self.every_step()).stacked()
            pairs = self.idx * (self.path.shape[1] - 1) + self.step_index
            self._round_tables[key] = RoundTables(self._tables[key], pairs)
        return self._round_tables[key]

    @property
    def j(self) -> int:
        """The step index shared by every active sample (always so with ``shrinking`` batching)."""
        if self.step_index.numel() and bool((self.step_index != self.step_index[0]).any()):
            raise RuntimeError("the active samples are at different steps (balanced batching): use ctx.step_index")
        return int(self.step_index[0]) if self.step_index.numel() else 0

    # -- per-sample levels of the active samples ----------------------------------------------
    def level(self, offset: int = 0) -> Tensor:
        """path[i, j_i + offset] for each active sample i, in float64 (clamped at the path's start)."""
        return self._gather("level", offset)

    def lam_at(self, offset: int = 0) -> Tensor:
        return self._gather("lam", offset)

    def _gather(self, what: str, offset: int) -> Tensor:
        key = (what, offset)
        if key not in self._gathered:
            table = self.path if what == "level" else self.lam
            self._gathered[key] = table[self.idx, (self.step_index + offset).clamp(min=0)]
        return self._gathered[key]

    def has_history(self, n: int) -> Tensor:
        """(n_active,) bool: the sample has taken at least n steps (so offsets down to -n are real levels)."""
        return self.step_index >= n

    def is_last(self) -> Tensor:
        """(n,) bool: this is the sample's final step."""
        return self.steps[self.idx] == self.step_index + 1

    def total_steps(self) -> Tensor:
        return self.steps[self.idx]

    def alpha_sigma(self, level: Tensor) -> tuple[Tensor, Tensor]:
        a, s = self.schedule.alpha_sigma(level)
        return torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(s, dtype=torch.float64)

    def round_level(self, level: Tensor) -> Tensor:
        """A computed level (an RK4 midpoint) as the model will see it, back in float64."""
        return level.to(self.level_dtype).double()

    def coef(self, c: Tensor, like: Tensor) -> Tensor:
        """A (n,) float64 coefficient cast to like's dtype (on the CPU first), on like's device, broadcastable."""
        return c.to(like.dtype).to(like.device).reshape(-1, *([1] * (like.dim() - 1)))

    # -- the model ------------------------------------------------------------------------------
    def evaluate(self, x: Tensor, level: Tensor, subset: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One batched model call at (n,) float64 ``level``; returns (x0_hat, eps_hat).

        ``subset`` (n,) bool on the CPU: only those active samples go through the model (x and level are
        then the subset's rows); an empty subset makes no call."""
        idx = self.idx_dev if subset is None else self.idx[subset].to(self.device)
        level_in = level.to(self.level_dtype)
        if x.shape[0] == 0:
            return x, x
        pred = self.model_fn(x, level_in.to(self.device), idx)
        if pred.shape != x.shape:
            raise ValueError(f"model_fn returned shape {tuple(pred.shape)} for input {tuple(x.shape)}")
        self.calls += 1
        self.model_evals += x.shape[0]
        # MPS has no float64: convert with float32 levels there, float64 everywhere else
        conv = level_in.double() if self.device.type != "mps" else level_in.float()
        return self.schedule.to_x0_eps(pred, x, conv)

    # -- per-sample history ---------------------------------------------------------------------
    def history(self, key: str) -> Tensor:
        """The active samples' stored tensor ``key`` (zeros until first remembered)."""
        if key not in self.state:
            self.state[key] = torch.zeros_like(self._full)
        return self.state[key][self.idx_dev]

    def remember(self, key: str, value: Tensor) -> None:
        if key not in self.state:
            self.state[key] = torch.zeros_like(self._full)
        self.state[key].index_copy_(0, self.idx_dev, value.to(self.dtype))


def stay_on_zero_length(x: Tensor, x_next: Tensor, ctx: StepContext) -> Tensor:
    """x itself (bit for bit) for the samples whose step joins two equal levels (a clamped rollout)."""
    same = ctx.level(0) == ctx.level(1)
    if not bool(same.any()):
        return x_next
    return torch.where(ctx.coef(same, x).bool(), x, x_next)


def zero_length(grid: StepContext) -> Tensor:
    """The mask ``stay_where_same`` reads (as ``"same"``): the step joins two equal levels."""
    return grid.level(0) == grid.level(1)


def stay_where_same(x: Tensor, x_next: Tensor, t: RoundTables) -> Tensor:
    """``stay_on_zero_length`` for a solver with tables (its mask ``"same"`` from ``zero_length``)."""
    if not t.any("same"):
        return x_next
    return torch.where(t.mask("same", x), x, x_next)


# -- exponential-integrator pieces shared by UniPC and DPM-Solver++ ------------------------------
def first_order_coeffs(ctx: StepContext, src: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(ratio, c1, h) with x_next = ratio·x + c1·x0_hat for the step path[j+src] -> path[j+src+1].

    This is DPM-Solver++(1) / DDIM(eta=0) in data-prediction form (Lu et al. 2022, eq. 5):
    x_t = (s_t/s_s)·x_s - a_t·(exp(-h) - 1)·x0_hat, h = lambda_t - lambda_s, so c1 = -a_t·expm1(-h).
    From sigma = 1 (lambda = -inf) h = +inf and c1 = a_t; to the clean level (s_t = 0) ratio = 0 and
    c1 = a_t, i.e. x_next = x0_hat. Equal levels give (1, 0, 0).
    """
    l0, l1 = ctx.level(src), ctx.level(src + 1)
    _, s0 = ctx.alpha_sigma(l0)
    a1, s1 = ctx.alpha_sigma(l1)
    h = ctx.lam_at(src + 1) - ctx.lam_at(src)
    same = l0 == l1
    ratio = torch.where(same, torch.ones_like(h), s1 / s0)
    c1 = torch.where(same, torch.zeros_like(h), -a1 * torch.expm1(-h))
    return ratio, c1, torch.where(same, torch.zeros_like(h), h)


def multistep_ok(h: Tensor, h_prev: Tensor) -> Tensor:
    """Where a second-order multistep correction is defined: a finite, non-zero step h and a previous
    interval h_prev that is non-zero (h_prev = +inf, history at sigma = 1, gives the finite limit 0)."""
    return torch.isfinite(h) & (h != 0) & (h_prev != 0) & ~torch.isnan(h_prev)


# -- the driver --------------------------------------------------------------------------------
def call_plan(steps: Tensor, batching: Batching = "shrinking") -> list[tuple[Tensor, Tensor]]:
    """For each round r = 0 .. max(steps) - 1: (idx, step_index), the samples it carries and their steps.

    ``shrinking``: the samples with steps > r, each at step r. ``balanced``: McNaughton's wrap-around (see
    the module docstring): position p of the concatenated steps goes to round p mod K, so rounds carry
    floor or ceil(sum(steps) / K) samples; a sample's step index is its count of earlier rounds."""
    steps = steps.detach().cpu().long()
    kmax = int(steps.max()) if steps.numel() else 0
    if batching == "shrinking":
        return [((steps > r).nonzero().squeeze(1), torch.full((int((steps > r).sum()),), r, dtype=torch.long))
                for r in range(kmax)]
    if batching != "balanced":
        raise ValueError(f"unknown batching {batching!r}; known: {', '.join(BATCHINGS)}")
    owner = torch.repeat_interleave(torch.arange(len(steps)), steps)
    active = torch.zeros(len(steps), kmax, dtype=torch.bool)
    active[owner, torch.arange(len(owner)) % max(kmax, 1)] = True
    index = active.long().cumsum(1) - 1
    plan = []
    for r in range(kmax):
        idx = active[:, r].nonzero().squeeze(1)
        plan.append((idx, index[idx, r]))
    return plan


def solve(model_fn: ModelFn, x: Tensor, path: Tensor, steps: Tensor, schedule: Schedule,
          solver: str | Solver, batching: Batching = "shrinking") -> SolveResult:
    """Integrate every sample of ``x`` along its own ``path`` for its own number of ``steps``.

    model_fn(x_sub, level_sub, idx) -> raw prediction (schedule.prediction_type) for the samples idx
    (indices into the full batch, on x's device). Deterministic; no gradient bookkeeping (wrap the call in
    torch.no_grad() yourself). Samples with steps 0 are returned unchanged and never reach the model.
    ``batching`` chooses which samples share a model call (``call_plan``); it does not change the result.
    """
    if isinstance(solver, str):
        from rollgraph.stages.solvers import get_solver  # the registry imports this module

        solver = get_solver(solver)
    if path.dim() != 2 or path.shape[0] != x.shape[0]:
        raise ValueError(f"path must be (B, K+1) with B = {x.shape[0]}, got {tuple(path.shape)}")
    if steps.shape != (x.shape[0],):
        raise ValueError(f"steps must be ({x.shape[0]},), got {tuple(steps.shape)}")
    ctx = StepContext(model_fn, schedule, path, steps, x)
    if bool((ctx.steps < 0).any()) or bool((ctx.steps > path.shape[1] - 1).any()):
        raise ValueError(f"steps must lie in [0, {path.shape[1] - 1}] (the path's K), got {ctx.steps.tolist()}")
    out = x.clone()
    for idx, step_index in call_plan(ctx.steps, batching):
        ctx.begin(idx, step_index)
        x_j = out[ctx.idx_dev]
        x_next = solver.step(x_j, ctx)
        out.index_copy_(0, ctx.idx_dev, x_next.to(out.dtype))
    return SolveResult(out, ctx.model_evals, ctx.calls)
