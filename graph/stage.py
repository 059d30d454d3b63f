"""The stage contract: a pydantic ``Params`` model, typed ports, and one ``run(ctx, **inputs) -> dict``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict
from rollgraph.graph.ports import Port

if TYPE_CHECKING:
    from rollgraph.graph.context import RunContext


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Stage(ABC):
    """Base class of every stage.

    ``type`` is the registry tag used in graph specs. ``phase`` is ``"setup"`` (runs once, before
    training, e.g. loading the model) or ``"step"`` (runs every training micro-step). A step stage may
    read the outputs of setup stages; a setup stage may not read step outputs.

    A stage that holds state to be checkpointed implements ``state_dict() -> (tensors, meta)`` and
    ``load_state_dict(tensors, meta)``: tensors go to safetensors, meta to JSON.
    """

    type: ClassVar[str] = ""
    phase: ClassVar[Literal["setup", "step"]] = "step"
    Params: ClassVar[type[BaseModel]] = NoParams
    inputs: ClassVar[tuple[Port, ...]] = ()
    outputs: ClassVar[tuple[Port, ...]] = ()

    def __init__(self, node_id: str, params: BaseModel):
        self.id = node_id
        self.params = params

    @abstractmethod
    def run(self, ctx: RunContext, **inputs: Any) -> dict[str, Any]:
        """Compute this stage's outputs (a dict keyed by output port name) from its inputs."""

    @classmethod
    def input_port(cls, name: str) -> Port | None:
        return next((p for p in cls.inputs if p.name == name), None)

    @classmethod
    def output_port(cls, name: str) -> Port | None:
        return next((p for p in cls.outputs if p.name == name), None)

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""
