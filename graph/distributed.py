"""Multi-process (data-parallel) training through HF accelerate: setup, DDP wrapping, cross-rank helpers, launcher.

A run is multi-process when a launcher set ``WORLD_SIZE`` > 1 (``torchrun``, ``accelerate launch``, or
``rollgraph run --num-processes N``, which starts ``torch.distributed.run`` for you). Then:

- ``init_distributed`` creates an ``accelerate.Accelerator`` (gloo on the CPU, nccl on CUDA; one GPU per
  process, ``cuda:LOCAL_RANK``) with a 30-minute process-group timeout: the longest any rank waits at a
  barrier or collective while rank 0 builds caches, writes a checkpoint or draws validation samples.
- ``wrap_models`` puts every trainable model adapter's module in DDP (``adapter.module``); rollout,
  ReflexFlow's clean prediction and sampling call ``adapter.raw_module`` under no_grad, so they never sync.
- ``gradient_sync`` disables DDP's all-reduce (``no_sync``) on every micro-step but the accumulation
  boundary: gradients are averaged over ranks once per optimizer step.
- ``reduce_metrics`` combines each step's metrics over ranks; ``any_rank`` makes control commands
  (stop / save / sample, a signal on any rank) take effect on every rank at the same step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import ExitStack, contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)


def launched_world_size() -> int:
    """The number of processes a launcher started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def init_distributed(ctx, device_name: str) -> None:
    """When launched with WORLD_SIZE > 1: join the process group and set ctx.rank, world_size, device, accelerator.
    A single process is left as it is (no accelerate state, no process group)."""
    from rollgraph.graph.context import resolve_device
    from rollgraph.graph.errors import RunError

    if launched_world_size() <= 1:
        return
    device = resolve_device(device_name)
    if device.type not in ("cpu", "cuda"):
        raise RunError(f"multi-process training needs CUDA or the CPU, not {device.type}; run one process")
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no",
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT)])
    ctx.accelerator = accelerator
    ctx.rank, ctx.world_size = accelerator.process_index, accelerator.num_processes
    ctx.device = accelerator.device


def wrap_models(ctx, values: dict) -> list[torch.nn.Module]:
    """DDP-wrap the module of every model adapter among the setup values that has trainable parameters.
    ``adapter.module`` becomes the DDP wrapper; ``adapter.raw_module`` stays the plain module (the optimizer,
    EMA, checkpoints and no-grad calls use it). Returns the wrappers."""
    if ctx.accelerator is None:
        return []
    wrapped, seen = [], set()
    for value in values.values():
        raw = getattr(value, "raw_module", None)
        if not isinstance(raw, torch.nn.Module) or id(value) in seen:
            continue
        seen.add(id(value))
        if any(p.requires_grad for p in raw.parameters()):
            value.module = ctx.accelerator.prepare_model(raw, device_placement=False)
            wrapped.append(value.module)
    return wrapped


def gradient_sync(ctx, wrapped: list[torch.nn.Module]):
    """A context for one micro-step (forward and backward): DDP's gradient all-reduce runs only on the
    accumulation boundary; earlier micro-steps accumulate locally (DDP decides this in the forward)."""
    if not wrapped or ctx.is_accumulation_boundary:
        return nullcontext()
    stack = ExitStack()
    for module in wrapped:
        stack.enter_context(module.no_sync())
    return stack


def _distributed(ctx) -> bool:
    return ctx.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def any_rank(ctx, flags: dict[str, bool]) -> dict[str, bool]:
    """Each flag is true on every rank if it is true on any rank (one all-reduce; same keys on every rank)."""
    if not _distributed(ctx):
        return flags
    t = torch.tensor([int(v) for v in flags.values()], dtype=torch.int32, device=ctx.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return {k: bool(v) for k, v in zip(flags, t.tolist(), strict=True)}


def reduce_metrics(ctx, per_process: dict[str, float] | None = None) -> dict[str, float]:
    """This optimizer step's metrics, combined over micro-steps (per key's reduce) and then over ranks:
    "sum" metrics (counts: rollout/samples, rollout/model_evals, ...) are summed over ranks, so they count
    the global batch; everything else is averaged. ``per_process`` (the runner's time/<node>, already summed
    over micro-steps) is averaged over ranks and comes after the logged metrics. Every rank gets the same dict."""
    if not _distributed(ctx):
        local = ctx.pop_metrics()
        if per_process:
            local.update(per_process)
        return local
    modes = {key: values[-1][1] for key, values in ctx.metrics.items()}
    local = ctx.pop_metrics()
    for key, value in (per_process or {}).items():
        local[key], modes[key] = value, "mean"
    gathered: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(gathered, (local, modes))
    keys = list(dict.fromkeys(k for metrics, _ in gathered for k in metrics))
    out = {}
    for key in keys:
        values = [metrics[key] for metrics, _ in gathered if key in metrics]
        mode = next(m[key] for metrics, m in gathered if key in metrics)
        out[key] = sum(values) if mode == "sum" else sum(values) / len(values)
    return out


def shutdown(ctx) -> None:
    if _distributed(ctx):
        torch.distributed.destroy_process_group()


def launch_command(num_processes: int, run_args: list[str]) -> list[str]:
    """torchrun on this machine (a free rendezvous port), each process running ``rollgraph run RUN_ARGS``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
            "-m", "rollgraph.graph.cli", "run", *run_args]


@contextmanager
def _stop_on_signals(proc: subprocess.Popen, stop_file: Path):
    """First Ctrl-C / SIGTERM: ask the run to stop through its control file (all ranks finish the step and
    rank 0 saves a checkpoint). Second: terminate the launcher, which stops the workers."""
    count = {"n": 0}

    def handler(signum, frame):
        count["n"] += 1
        if count["n"] == 1:
            stop_file.parent.mkdir(parents=True, exist_ok=True)
            stop_file.touch()
            print("stop requested: the workers finish this step and save a checkpoint (again to abort)", flush=True)
        elif proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not in the main thread: the caller stops the run through its control file
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def launch_local(num_processes: int, run_args: list[str], output_dir: Path) -> int:
    """Run ``rollgraph run RUN_ARGS`` in num_processes local processes and return the launcher's exit code.
    The launcher gets its own session so a terminal Ctrl-C reaches only us; we turn it into the trainer's
    stop command. If a worker died before rank 0 could record it, run.json is set to failed here."""
    stop_file = Path(output_dir) / "control" / "stop"
    had_stop = stop_file.exists()
    proc = subprocess.Popen(launch_command(num_processes, run_args), start_new_session=True)
    try:
        with _stop_on_signals(proc, stop_file):
            rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    if not had_stop:
        stop_file.unlink(missing_ok=True)
    status_file = Path(output_dir) / "run.json"
    if rc != 0 and status_file.exists():
        import json

        from rollgraph.graph.train import write_status

        if json.loads(status_file.read_text()).get("status") == "running":
            write_status(Path(output_dir), status="failed", error=f"a training process failed (launcher exit code {rc})")
    return rc
