"""The training loop: compile and validate the config's graph, set up, run steps; the graph's every nodes sample,
probe and checkpoint.

Order of a run: validate (exit 2, nothing written) -> setup graph (data, model; a bad file fails here,
before any output folder exists) -> output folder, run.json = running -> steps, each followed by the every
nodes due at it (graph/runner.py ``due``; at the last step the end-of-run ones: final checkpoint and sample
grid) -> run.json = finished. ``stop_at_step`` (``rollgraph run --stop-at-step N``) ends the run early at step
N, like a stop request, without touching max_train_steps, so the LR schedule and every other step-dependent
value stay those of the whole run and a later resume continues it. A stop request (UI, ``control/stop`` file,
Ctrl-C, SIGTERM) ends the current step, runs the every nodes due when a run stops (the checkpoint) and sets
run.json = stopped. A failure sets run.json = failed with the message, leaving earlier checkpoints intact.

Several processes (``torchrun``, ``accelerate launch``, ``rollgraph run --num-processes N``; see
graph/distributed.py): every rank runs the same loop on its share of the global batch; only rank 0 writes
(run.json, config.json, metrics.jsonl, train.log, console, checkpoints, samples) while the others wait at a
barrier; setup runs on rank 0 first (caches), then on the others. Control commands and signals are combined
over ranks at every step end, so all ranks stop, save or sample at the same step.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import torch
from rollgraph.graph import distributed
from rollgraph.graph.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from rollgraph.graph.context import RunContext, resolve_device
from rollgraph.graph.errors import ConfigError, Issue
from rollgraph.graph.hooks import Hook
from rollgraph.graph.logging_hooks import ConsoleLog, MetricsFile
from rollgraph.graph.run_folder import Heartbeat, write_status
from rollgraph.graph.run_header import after_setup_lines, before_setup_lines
from rollgraph.graph.runner import Runner
from rollgraph.graph.validate import validate_graph

CONTROL_COMMANDS = ("stop", "save", "sample")
CONTROL_POLL_SECONDS = 1.0  # the control folder is read at most this often (a step end costs no file system call)


class Control:
    """Explicit commands from outside (the UI, a user): files output_dir/control/{stop,save,sample}, read by
    rank 0 at most once a second, plus a stop signal received by any rank; combined over ranks so every rank
    acts on them at the same step end."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.folder = trainer.output_dir / "control"
        self.next_poll = 0.0

    def _read(self) -> dict[str, bool]:
        found = dict.fromkeys(CONTROL_COMMANDS, False)
        now = time.monotonic()
        if self.trainer.ctx.is_main and now >= self.next_poll:
            self.next_poll = now + CONTROL_POLL_SECONDS
            for cmd in CONTROL_COMMANDS:
                flag = self.folder / cmd
                if flag.exists():
                    flag.unlink(missing_ok=True)
                    found[cmd] = True
                    if cmd == "stop":
                        self.trainer.console.line("[yellow]stop requested (control/stop): finishing this step"
                                                  f"{self.trainer._and_saving()}[/]")
        found["stop"] = found["stop"] or self.trainer.signal_stop
        return found

    def poll(self) -> frozenset[str]:
        """The commands given since the last poll, the same on every rank."""
        if self.trainer.ctx.world_size == 1 and not self.trainer.signal_stop and time.monotonic() < self.next_poll:
            return frozenset()  # most steps of a single process: nothing to read, no one to ask
        requested = distributed.any_rank(self.trainer.ctx, self._read())
        return frozenset(cmd for cmd, on in requested.items() if on)


def _check_stop_at(stop_at: int | None, max_steps: int, resume_from: Path | None) -> int | None:
    """``--stop-at-step``: after the resumed checkpoint's step and at most max_train_steps (exit 2 otherwise)."""
    if stop_at is None:
        return None
    start = json.loads((resume_from / "trainer.json").read_text())["step"] if resume_from is not None else 0
    if not start < stop_at <= max_steps:
        raise ConfigError([Issue("--stop-at-step", f"{stop_at} must be after the starting step {start} and at most "
                                 f"max_train_steps {max_steps} (to train longer, raise max_train_steps in a new run)")])
    return stop_at


class WaitForMain(Hook):
    """Last hook of a multi-process step: the other ranks wait while rank 0 writes this step's files."""

    def on_step_end(self, runner, metrics):
        runner.ctx.barrier()


class Trainer:
    """Runs a recipe: ``recipe`` (default ``cfg.run_recipe()``) gives ``graph()``, a GraphSpec whose every-phase nodes
    do the periodic work (samples, probe, checkpoints). ``cfg`` gives the run keys (output_dir, seed, device,
    max_train_steps, logging); ``stop_at_step`` ends the run early at that step without changing max_train_steps or
    the LR schedule."""

    def __init__(self, cfg, resume: str | None = None, console=None, extra_hooks: tuple[Hook, ...] = (), recipe=None,
                 stop_at_step: int | None = None):
        self.cfg = cfg
        self.recipe = recipe if recipe is not None else cfg.run_recipe()
        self.graph = validate_graph(self.recipe.graph())
        self.output_dir = Path(cfg.output_dir)
        self.resume_from = find_checkpoint(self.output_dir, resume) if resume else None
        self.max_steps = cfg.max_train_steps
        self.stop_at_step = _check_stop_at(stop_at_step, self.max_steps, self.resume_from)
        self.signal_stop = False  # a signal seen by this process, combined over ranks by Control
        self.ctx = RunContext(config=cfg, device=resolve_device(cfg.device), output_dir=self.output_dir, seed=cfg.seed,
                              accumulation_steps=cfg.gradient_accumulation_steps)
        self.ctx.save_checkpoint = self.checkpoint
        distributed.init_distributed(self.ctx, cfg.device)
        if self.ctx.device.type == "cuda" and cfg.mixed_precision in ("auto", "bf16"):
            self.ctx.autocast_dtype = torch.bfloat16
        if not self.ctx.is_main:
            from rich.console import Console

            console = Console(quiet=True, force_terminal=False)
        log_file = self.output_dir / "train.log" if self.ctx.is_main else None
        self.console = ConsoleLog(self.max_steps, cfg.logging_steps, log_file, console)
        self.control = Control(self)
        self.extra_hooks = extra_hooks
        self.runner: Runner | None = None
        self.ddp_models: list[torch.nn.Module] = []
        self.ended_at: int | None = None  # the step whose every phase ran the end-of-run nodes
        self.last_sample: Path | None = None
        self.elapsed_before = 0.0
        self.start_time = time.perf_counter()

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start_time

    def checkpoint(self, requested: bool = False, total_limit: int | None = None) -> Path | None:
        """What a checkpoint node calls: rank 0 writes (state is identical on every rank), the others wait.
        ``requested``: a person asked for it, so rotation keeps it (see graph/checkpoint.py)."""
        path = None
        if self.ctx.is_main:
            path = save_checkpoint(self.output_dir, self.ctx.step, self.runner.checkpointables(),
                                   {"elapsed": self.elapsed(), "seed": self.cfg.seed, "world_size": self.ctx.world_size,
                                    "global_batch_size": self.cfg.train_batch_size * self.ctx.world_size,
                                    "config": self.cfg.model_dump(mode="json"), **({"requested": True} if requested else {})},
                                   total_limit)
            self.console.line(f"[magenta]checkpoint[/] → {path}")
        self.ctx.barrier()
        return path

    def _hooks(self, resume_step: int | None) -> list[Hook]:
        hooks: list[Hook] = [*self.extra_hooks]
        if self.ctx.is_main:
            hooks.append(MetricsFile(self.output_dir, resume_step))
            hooks.append(Heartbeat(self.output_dir, self.cfg.logging_steps))
            if self.cfg.report_to != "none":
                from rollgraph.graph.trackers import TrackerHook

                hooks.append(TrackerHook(self.cfg.report_to, self.output_dir, self.cfg.model_dump(mode="json"),
                                         lambda: self.last_sample))
        hooks.append(self.console)
        if self.ctx.world_size > 1:
            hooks.append(WaitForMain())
        return hooks

    def _resume(self, runner: Runner) -> None:
        state = load_checkpoint(self.resume_from, runner.checkpointables())
        self.ctx.step = state["step"]
        self.elapsed_before = state.get("elapsed", 0.0)
        self.console.line(f"resumed from {self.resume_from} at step {self.ctx.step}")
        saved_ws = state.get("world_size", 1)
        if saved_ws != self.ctx.world_size:
            self.console.line(f"the checkpoint was written by {saved_ws} process(es), this run has {self.ctx.world_size}: "
                              f"the global batch is now {self.cfg.train_batch_size * self.ctx.world_size} samples "
                              f"(was {state.get('global_batch_size', self.cfg.train_batch_size * saved_ws)}); "
                              "the data position carries over")

    def run(self) -> Path:
        ctx = self.ctx
        ctx.seed_global_rng("init")
        resume_step = None
        if self.resume_from is not None:
            resume_step = json.loads((self.resume_from / "trainer.json").read_text())["step"]
        self.runner = runner = Runner(self.graph, ctx, self._hooks(resume_step))
        try:
            for text in before_setup_lines(self.graph, ctx, self.output_dir):  # console only: no folder yet
                self.console.console.print(text, soft_wrap=True)
            with ctx.main_process_first():  # rank 0 builds caches first; data and model errors surface here
                runner.setup()
            if ctx.is_main:
                (self.output_dir / "control").mkdir(parents=True, exist_ok=True)
                for text in after_setup_lines(runner.values):
                    self.console.line(text)
                if not runner.answers("save"):
                    self.console.line("[yellow]this graph has no checkpoint node: the run writes no checkpoint and "
                                      "cannot be resumed[/]")
            if self.resume_from is not None:
                self._resume(runner)
            self.ddp_models = distributed.wrap_models(ctx, runner.values)  # after loading: ranks start equal
            if ctx.is_main:
                (self.output_dir / "config.json").write_text(json.dumps(self.cfg.model_dump(mode="json", exclude_none=True), indent=1))
                write_status(self.output_dir, status="running", step=ctx.step, max_train_steps=self.max_steps, error=None,
                             num_processes=ctx.world_size, stop_at_step=self.stop_at_step)
            return self._train()
        finally:
            distributed.shutdown(ctx)

    def _train(self) -> Path:
        ctx, runner = self.ctx, self.runner
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for sig in previous:
                signal.signal(sig, self._on_signal)
        except ValueError:  # not in the main thread: only file commands can stop us
            previous = {}
        status = "failed"
        try:
            self.console.start(ctx.step)
            while self.ended_at is None:
                if ctx.step >= self.max_steps:  # resumed from the last step: only the end-of-run nodes are left
                    self._every(frozenset(), "finished", console_only=True)
                    break
                self._one_step()
            status = "finished" if ctx.step >= self.max_steps else "stopped"
            runner.hooks.on_train_end(runner, status)
            if ctx.is_main:
                last = self.last_sample
                write_status(self.output_dir, status=status, step=ctx.step, sample=str(last) if last else None)
                # the same state words as run.json and the UI
                self.console.line(f"[bold green]{status}[/] at step {ctx.step}" + (f" — sample grid: {last}" if last else ""))
            ctx.barrier()
            return self.output_dir
        except BaseException as err:
            if status == "failed":  # not when a hook failed after the run ended
                runner.hooks.on_train_end(runner, "failed")
                if ctx.is_main:
                    write_status(self.output_dir, status="failed", step=ctx.step, error=str(err) or type(err).__name__)
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, frame):
        if self.signal_stop:
            raise KeyboardInterrupt
        self.signal_stop = True
        self.console.line(f"[yellow]stop requested: finishing this step{self._and_saving()} (again to abort)[/]")

    def _and_saving(self) -> str:
        saves = self.runner is not None and any("stopped" in n.cls.at_end for n in self.runner.graph.every
                                                if n.cls.on_request == "save")
        return " and saving a checkpoint" if saves else ""

    def _end_state(self, requests: frozenset[str]) -> str | None:
        """How the run ends at this step end: "finished" (the last step), "stopped" (a stop request, or
        --stop-at-step), or None (it goes on)."""
        step = self.ctx.step
        if step >= self.max_steps:
            return "finished"
        if "stop" in requests:
            return "stopped"
        if self.stop_at_step is not None and step >= self.stop_at_step:
            self.console.line(f"[yellow]stopped at step {step}[/] as asked (--stop-at-step); resume to continue to {self.max_steps}")
            return "stopped"
        return None

    def _every(self, requests: frozenset[str], end: str | None, metrics: dict | None = None,
               console_only: bool = False) -> None:
        """Run the every-phase nodes due at this step end; their reports join ``metrics``."""
        runner = self.runner
        due = runner.due(self.ctx.step, requests, end)
        if not due and not requests and end is None:  # most steps
            return
        if console_only:  # no step ran: only what the end asks for
            due = {nid: why for nid, why in due.items() if "end" in why}
        for command in ("save", "sample"):
            if command in requests and not runner.answers(command) and self.ctx.is_main:
                self.console.line(f"[yellow]{command} requested, but no node of this graph answers it[/]")
        report = runner.run_every(due)
        if "sample" in report:
            self.last_sample = Path(report["sample"])
            if console_only:
                self.console.line(f"[green]samples[/] → {report['sample']}")
        if metrics is not None:
            metrics.update(report)
        if end is not None:
            self.ended_at = self.ctx.step

    def _one_step(self) -> None:
        ctx, runner = self.ctx, self.runner
        ctx.seed_step_rng()
        for micro in range(ctx.accumulation_steps):
            ctx.micro_step = micro
            if self.ddp_models:
                with distributed.gradient_sync(ctx, self.ddp_models):
                    runner.run_step()
            else:
                runner.run_step()
        runner.run_update()
        ctx.micro_step = 0
        ctx.step += 1
        # time to 0.1 ms; not round(x, 4), which goes through decimal digits (~10 µs here, between two steps)
        metrics = {"step": ctx.step, **distributed.reduce_metrics(ctx, runner.pop_stage_seconds()),
                   "time": int(self.elapsed() * 10_000 + 0.5) / 10_000}
        requests = self.control.poll()
        self._every(requests, self._end_state(requests), metrics)
        runner.hooks.on_step_end(runner, metrics)
