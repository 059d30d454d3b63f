"""Config values that name an entry of a registry (a solver, ...), checked against the registry when read.

A ``Literal`` of names is fixed when the module is imported, so a solver a plugin registers through its
entry-point group could never be chosen. ``SolverName`` is a string that must be a registered solver at
validation time (built-ins and plugins alike), else a validation error with a did-you-mean naming the known ones;
the ``RegisteredName`` in its metadata gives forms, CLI help and the reference the names to list, read from
the registry when they are built::

    validation_sampler: SolverName = Field("unipc", description="...")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError
from rollgraph.graph.registry import Registry
from rollgraph.stages.solvers import SOLVERS


@dataclass(frozen=True, repr=False)
class RegisteredName:
    """Field metadata: the value names an entry of ``registry``."""

    registry: Registry

    def __repr__(self) -> str:
        return f"RegisteredName({self.registry.kind})"

    def choices(self) -> list[str]:
        """The registered names, built-ins first, then the plugins' (entry points are loaded on first read)."""
        return list(self.registry)

    def check(self, name: str) -> str:
        try:
            self.registry.lookup(name)
        except KeyError as err:  # a custom error: its message reads the same from the config and from a node's params
            raise PydanticCustomError("registered_name", "{message}", {"message": err.args[0]}) from None
        return name


def registered_name(registry: Registry) -> Any:
    """The annotation of a string field that must name an entry of ``registry``."""
    meta = RegisteredName(registry)
    return Annotated[str, AfterValidator(meta.check), meta]


def name_choices(field: Any) -> list[str] | None:
    """The names a pydantic field accepts when it is a ``registered_name`` field, else None."""
    meta = next((m for m in getattr(field, "metadata", ()) if isinstance(m, RegisteredName)), None)
    return None if meta is None else meta.choices()


SolverName = registered_name(SOLVERS)
