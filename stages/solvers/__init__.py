"""Per-sample, batched ODE solvers shared by the training rollout and inference sampling.

    from rollgraph.stages.solvers import SOLVERS, get_solver, solve, SolveResult
    result = solve(model_fn, x, path, steps, schedule, "unipc")

``euler`` (DDIM / flow Euler), ``unipc`` (UniPC bh2, order 2, the default), ``dpm``
(DPM-Solver++(2M)) and ``rk4`` (classical Runge-Kutta, 4 evaluations per step), for every prediction
type. See ``base`` for the batching contract and each module for its formulas and citations.
"""

from __future__ import annotations

from rollgraph.graph.registry import Registry
from rollgraph.stages.solvers.base import Solver, SolveResult, StepContext, solve
from rollgraph.stages.solvers.dpm import DPMSolver
from rollgraph.stages.solvers.euler import EulerSolver
from rollgraph.stages.solvers.rk4 import RK4Solver
from rollgraph.stages.solvers.unipc import UniPCSolver

SOLVERS: Registry = Registry("solver", "rollgraph.solvers")  # third parties: that entry-point group
SOLVERS.update(euler=EulerSolver, unipc=UniPCSolver, dpm=DPMSolver, rk4=RK4Solver)


def get_solver(name: str) -> Solver:
    """A new solver by name; KeyError naming the known solvers (with a did-you-mean) otherwise."""
    if not isinstance(name, str):
        raise KeyError(f"unknown solver {name!r}; known: {', '.join(SOLVERS)}")
    return SOLVERS.lookup(name)()


__all__ = ["SOLVERS", "SolveResult", "Solver", "StepContext", "get_solver", "solve",
           "EulerSolver", "UniPCSolver", "DPMSolver", "RK4Solver"]
