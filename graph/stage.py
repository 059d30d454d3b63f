"""The stage contract: a pydantic ``Params`` model, typed ports, and one ``run(ctx, **inputs) -> dict``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict
from rollgraph.graph.ports import Port

if TYPE_CHECKING:
    from rollgraph.graph.context import RunContext


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def same_names(*models: type[BaseModel]) -> dict[str, str]:
    """Bindings for params that are flat config keys under their own names: every field of ``models``."""
    return {name: name for model in models for name in model.model_fields}


class Stage(ABC):
    """Base class of every stage; the runner calls it exactly as described here.

    - ``type``: the registry tag used in graph specs (unique; third parties register through the
      ``rollgraph.stages`` entry-point group).
    - ``phase``: ``"setup"`` (runs once, before training, e.g. loading the model), ``"step"`` (runs every
      training micro-step), ``"update"`` (runs once per optimizer step, after its micro-steps: clip, step,
      EMA, LR) or ``"every"`` (after an optimizer step, when due: validation samples, the probe, checkpoints).
      A node reads only earlier phases' outputs or its own phase's (update reads the last micro-step's); an
      ``every`` node reads setup and ``every`` outputs only (a step's values are gone by then).
    - When an ``every`` node is due: ``interval`` names the int param N that makes it due after optimizer steps
      N, 2N, ... (0: never by interval); ``at_end`` lists the run states ("finished", "stopped") whose last step
      makes it due; ``on_request`` names the control command (``output_dir/control/<name>``, the UI's buttons)
      that makes it due at the next step end. It runs at most once per step, whatever made it due, and the
      ``every`` nodes it reads from run with it. ``ctx.triggers`` tells it why ("interval", "end", "request").
      A ``Report`` output (a dict) is merged into that step's metrics (metrics.jsonl, the console, trackers).
    - ``Params``: a pydantic model, validated from the node's ``params`` before anything runs; the instance
      is ``self.params``.
    - ``binds``: param name -> flat config key. Only these params take the flat key's value (a param that
      merely shares a key's name does not); ``--set NODE.PARAM=VALUE`` reaches every param.
    - ``inputs`` / ``outputs``: typed ports. ``run(ctx, **inputs)`` receives one keyword per input port
      (``None`` for an unwired optional port, a list for a ``many`` port) and returns a dict with every
      output port.
    - ``sink``: the node is an end of the graph (e.g. the optimizer step). Every node must feed a sink;
      validation refuses one whose outputs reach none.
    - Checkpointing: if the stage object, or a value it outputs in the setup phase, has
      ``save_state(directory: Path)`` and ``load_state(directory: Path)``, the checkpoint calls them with a
      folder of its own (``<checkpoint>/<node id>`` or ``<node id>.<port>``); write safetensors and JSON
      there, never pickle. Resume calls ``load_state`` after the setup phase, before the first step.
    """

    type: ClassVar[str] = ""
    phase: ClassVar[Literal["setup", "step", "update", "every"]] = "step"
    interval: ClassVar[str | None] = None
    at_end: ClassVar[tuple[str, ...]] = ()
    on_request: ClassVar[str | None] = None
    Params: ClassVar[type[BaseModel]] = NoParams
    binds: ClassVar[Mapping[str, str]] = {}
    inputs: ClassVar[tuple[Port, ...]] = ()
    outputs: ClassVar[tuple[Port, ...]] = ()
    sink: ClassVar[bool] = False

    def __init__(self, node_id: str, params: BaseModel):
        self.id = node_id
        self.params = params

    @abstractmethod
    def run(self, ctx: RunContext, **inputs: Any) -> dict[str, Any]:
        """Compute this stage's outputs (a dict keyed by output port name) from its inputs."""

    @classmethod
    def bindings(cls) -> dict[str, str]:
        """param -> flat key, for the params the stage's ``Params`` really has."""
        return {p: k for p, k in cls.binds.items() if p in cls.Params.model_fields}

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
