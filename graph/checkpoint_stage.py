"""The engine's own every-phase stage: write a checkpoint (graph/checkpoint.py) every N optimizer steps, when the
run ends (finished or stopped) and when a person asks (``control/save``, the UI's "Save now")."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
from rollgraph.graph.ports import Port
from rollgraph.graph.registry import register_stage
from rollgraph.graph.stage import Stage, same_names


class CheckpointParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "Checkpoints"

    checkpointing_steps: int = Field(0, ge=0, description="Save a checkpoint every N optimizer steps (0: only at the end)")
    checkpoints_total_limit: int | None = Field(None, ge=1, description="Keep at most this many scheduled checkpoints (oldest removed; saves asked for are kept)")


@register_stage
class SaveCheckpoint(Stage):
    """Write ``output_dir/checkpoints/step-N`` with every checkpointable stage and setup value; a save a person
    asked for is marked ``requested`` and never rotated away. Without this node a run writes no checkpoint."""

    type = "run.checkpoint"
    phase = "every"
    interval = "checkpointing_steps"
    at_end = ("finished", "stopped")
    on_request = "save"
    sink = True
    Params = CheckpointParams
    binds = same_names(CheckpointParams)
    outputs = (Port("report", "Report"),)

    def run(self, ctx):
        if ctx.save_checkpoint is None:
            raise RuntimeError(f"node {self.id!r} ({self.type}) runs outside a trainer: nothing can write a checkpoint")
        path = ctx.save_checkpoint(requested="request" in ctx.triggers, total_limit=self.params.checkpoints_total_limit)
        return {"report": {"checkpoint": str(path)} if path is not None else {}}
