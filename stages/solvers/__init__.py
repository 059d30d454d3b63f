"""Per-sample, batched ODE solvers shared by the training rollout and inference sampling.

    from rollgraph.stages.solvers import SOLVERS, get_solver, solve, SolveResult
    result = solve(model_fn, x, path, steps, schedule, "unipc")

``euler`` (DDIM / flow Euler), ``unipc`` (UniPC bh2, order 2 by default, 1-3), ``dpm``
(DPM-Solver++(2M), order 1-3) and ``rk4`` (classical Runge-Kutta, 4 evaluations per step), for every
prediction type. See ``base`` for the batching contract (``batching="shrinking"`` or ``"balanced"``) and
each module for its formulas and citations.
"""

from __future__ import annotations

from rollgraph.graph.registry import Registry
from rollgraph.stages.solvers.base import (
    BATCHINGS,
    Solver,
    SolveResult,
    StepContext,
    StepTables,
    call_plan,
    solve,
)
from rollgraph.stages.solvers.dpm import DPMSolver
from rollgraph.stages.solvers.euler import EulerSolver
from rollgraph.stages.solvers.rk4 import RK4Solver
from rollgraph.stages.solvers.unipc import UniPCSolver

SOLVERS: Registry = Registry("solver", "rollgraph.solvers")  # third parties: that entry-point group
SOLVERS.update(euler=EulerSolver, unipc=UniPCSolver, dpm=DPMSolver, rk4=RK4Solver)


def solver_orders(name: str) -> tuple[int, ...]:
    """The orders a solver can be asked for (empty: its order is fixed, e.g. euler 1, rk4 4)."""
    return getattr(SOLVERS[name], "orders", ())


def order_issue(name: str, order: int | None, key: str = "scheduled_sampling_order") -> str | None:
    """Why ``order`` does not fit solver ``name`` (a message naming ``key``), or None when it does."""
    if order is None:
        return None
    orders = solver_orders(name)
    if not orders:
        return f"{key} applies to {' and '.join(n for n in SOLVERS if solver_orders(n))} only; {name} has a fixed order"
    if order not in orders:
        return f"{key} must be one of {list(orders)} for {name}, got {order!r}"
    return None


def get_solver(name: str, order: int | None = None) -> Solver:
    """A new solver by name (with ``order`` for the solvers that have one); KeyError naming the known
    solvers otherwise, ValueError for an order the solver does not have."""
    if not isinstance(name, str):
        raise KeyError(f"unknown solver {name!r}; known: {', '.join(SOLVERS)}")
    cls = SOLVERS.lookup(name)  # KeyError with a did-you-mean
    issue = order_issue(name, order, "order")
    if issue:
        raise ValueError(issue)
    return cls() if order is None else cls(order=order)


__all__ = ["BATCHINGS", "SOLVERS", "SolveResult", "Solver", "StepContext", "StepTables", "call_plan", "get_solver",
           "order_issue", "solve", "solver_orders",
           "EulerSolver", "UniPCSolver", "DPMSolver", "RK4Solver"]
