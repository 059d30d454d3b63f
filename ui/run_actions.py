"""What the Train and Runs tabs do: start / resume / stop / save now / sample now, and the live view
(status and errors, progress, log, loss curves, samples, queue) polled by a timer. Every folder named
by the page is confined to the runs folder."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

import gradio as gr
from rich.text import Text
from rollgraph.graph.checkpoint import is_requested
from rollgraph.ui.ansi import ansi_to_html, tail_text
from rollgraph.ui.checks import check_config
from rollgraph.ui.paths import PathError, confine
from rollgraph.ui.presets import dump_config, parse_config_text
from rollgraph.ui.run_files import rename_run, trash_run
from rollgraph.ui.runs import EXITED, QUEUED, RUNNING, RunManager
from rollgraph.ui.states import RunState, run_state
from rollgraph.ui.watch import (
    checkpoints,
    curves,
    find_runs,
    log_tail,
    metric_keys,
    progress,
    progress_text,
    read_config,
    read_metrics,
    read_status,
    run_summary,
    samples,
)

LOG_LINES = 400
PROBABILITY = "rollout/p"  # plotted on its own 0-1 axis
RUN_COLUMNS = ["run", "status", "step", "final loss", "checkpoints", "samples", "updated"]


def checkpoint_step(path: Path) -> int:
    try:
        return int(json.loads((path / "trainer.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def parse_stop_at(value: str | float | None, start: int, max_steps: Any) -> int | None:
    """The "stop at step" box: empty -> None (train to max_train_steps); else a whole step after the
    checkpoint's and at most max_train_steps (ValueError saying which)."""
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"stop at step {value!r} is not a number") from None
    if not number.is_integer():
        raise ValueError(f"stop at step {value} is not a whole step")
    stop = int(number)
    total = max_steps if isinstance(max_steps, int) else None
    if stop <= start or (total is not None and stop > total):
        raise ValueError(f"stop at step {stop} must be after the checkpoint's step {start}"
                         + (f" and at most max_train_steps {total}" if total is not None else ""))
    return stop


def _msg(text: str, ok: bool = True) -> str:
    return f'<div class="{"rg-okmsg" if ok else "rg-bad"}">{escape(text)}</div>'


class RunActions:
    def __init__(self, manager: RunManager):
        self.manager = manager
        self.runs_dir = manager.runs_dir

    def _folder(self, name: str | None) -> Path | None:
        if not name:
            job = self.manager.active()
            return job.output_dir if job else None
        return confine(name, self.runs_dir)

    def rel(self, folder: Path) -> str:
        return str(folder.relative_to(self.runs_dir))

    # --- choices ----------------------------------------------------------------------------------
    def watch_choices(self) -> list[str]:
        names = [self.rel(f) for f in find_runs(self.runs_dir)]
        queued = [self.rel(Path(j["output_dir"])) for j in self.manager.snapshot() if j["state"] in (QUEUED, RUNNING)]
        return list(dict.fromkeys(queued + names))

    def checkpoint_choices(self) -> list[tuple[str, str]]:
        out = []
        for folder in find_runs(self.runs_dir):
            for step, path in reversed(checkpoints(folder)):
                mark = " (saved on request)" if is_requested(path) else ""
                out.append((f"{self.rel(folder)} @ step {step}{mark}", self.rel(path)))
        return out

    def default_watch(self) -> str | None:
        job = self.manager.active()
        if job is not None:
            return self.rel(job.output_dir)
        choices = self.watch_choices()
        return choices[0] if choices else None

    def refresh_choices(self, current: str | None = None) -> tuple[Any, Any]:
        choices = self.watch_choices()
        value = current if current in choices else self.default_watch()
        return gr.update(choices=choices, value=value), gr.update(choices=self.checkpoint_choices())

    # --- commands ---------------------------------------------------------------------------------
    def _submit(self, config: dict[str, Any], resume: str | None = None, stop_at_step: int | None = None) -> tuple[str, Any]:
        result = check_config(config)
        if not result.valid:
            listed = "; ".join(f"{p.key}: {p.message}" for p in result.problems)
            return _msg(f"not started: the config has {len(result.problems)} problem(s): {listed}", ok=False), gr.skip()
        try:
            job = self.manager.submit(config, resume=resume, stop_at_step=stop_at_step)
        except (PathError, OSError) as err:
            return _msg(f"not started: {err}", ok=False), gr.skip()
        name = self.rel(job.output_dir)
        wanted = config.get("output_dir")
        moved = "" if resume or not wanted or Path(str(wanted)).name == job.output_dir.name else \
            f" (output_dir {wanted} already holds a run, so this one goes to a new folder)"
        waiting = [j for j in self.manager.snapshot() if j["state"] in (QUEUED, RUNNING) and j["id"] != job.id]
        how = f"queued behind {len(waiting)} run(s)" if waiting else "starting"
        what = f"resuming from {resume}" if resume else "run"
        what += f" (stops at step {stop_at_step})" if stop_at_step else ""
        return _msg(f"{what} → {self.runs_dir / name}: {how}{moved}"), gr.update(choices=self.watch_choices(), value=name)

    def start(self, text: str) -> tuple[str, Any]:
        """API ``start``: queue a run of the editor's config; returns (message, the run's folder name)."""
        data, problem = parse_config_text(text)
        if data is None:
            return _msg(f"not started: {problem}", ok=False), gr.skip()
        return self._submit(data)

    def resume(self, checkpoint: str | None, stop_at: str | float | None = None) -> tuple[str, Any]:
        """API ``resume``: continue a run from one of its checkpoints with the config it was run with, on
        its own schedule to max_train_steps; ``stop_at`` (optional) ends it earlier, at that step."""
        if not checkpoint:
            return _msg("pick a checkpoint first", ok=False), gr.skip()
        try:
            path = confine(checkpoint, self.runs_dir)
        except PathError as err:
            return _msg(str(err), ok=False), gr.skip()
        config = read_config(path.parent.parent)
        if not config:
            return _msg(f"{path.parent.parent} has no readable config.json", ok=False), gr.skip()
        try:
            stop = parse_stop_at(stop_at, checkpoint_step(path), config.get("max_train_steps"))
        except ValueError as err:
            return _msg(f"not resumed: {err}", ok=False), gr.skip()
        return self._submit(config, resume=str(path), stop_at_step=stop)

    def command(self, cmd: str):
        def send(name: str | None) -> str:
            try:
                folder = self._folder(name)
            except PathError as err:
                return _msg(str(err), ok=False)
            if folder is None:
                return _msg("no run selected and none running", ok=False)
            return _msg(self.manager.command(folder, cmd))

        send.__name__ = cmd
        return send

    # --- the live view ----------------------------------------------------------------------------
    def _job(self, folder: Path):
        try:
            return self.manager.job_for(folder)
        except PathError:
            return None

    def state_of(self, folder: Path, status: dict[str, Any] | None = None) -> RunState:
        job = self._job(folder)
        ahead = None
        if job is not None and job.state == QUEUED:
            ahead = len([j for j in self.manager.snapshot() if j["state"] in (QUEUED, RUNNING) and j["id"] < job.id])
        return run_state(read_status(folder) if status is None else status, job, ahead)

    def status_html(self, folder: Path) -> str:
        status = read_status(folder)
        job = self._job(folder)
        state = self.state_of(folder, status)
        parts = [f'<div class="rg-status"><b>{escape(self.rel(folder))}</b> · '
                 f'<span class="rg-state rg-{state.name.replace(" ", "-")}">{escape(state.label)}</span></div>']
        failed_rc = job is not None and job.state == EXITED and job.returncode not in (0, None)
        if status.get("status") == "failed" or failed_rc:
            lines = Text.from_ansi(tail_text(log_tail(folder, 16_000), 15)).plain
            what = status.get("error") if status.get("status") == "failed" else None
            head = f"run failed: {what}" if what else f"the run process exited with code {job.returncode}"
            parts.append(f'<div class="rg-error"><b>{escape(head)}</b><pre>{escape(lines)}</pre></div>')
        return "".join(parts)

    def progress_html(self, folder: Path, rows: list[dict[str, Any]]) -> str:
        status = read_status(folder)
        total = status.get("max_train_steps") or read_config(folder).get("max_train_steps")
        p = progress(rows, total)
        if status.get("status") != "running":  # speed and ETA only while it trains
            p["speed"] = p["eta"] = None
        pct = min(100.0, 100.0 * p["step"] / total) if total else 0.0
        return (f'<div class="rg-progress"><div class="rg-bar" style="width:{pct:.1f}%"></div></div>'
                f'<div class="rg-progress-text">{escape(progress_text(p))}</div>')

    def tick(self, name: str | None, seen: dict[str, Any] | None) -> list[Any]:
        """[status, progress, log, loss plot, rollout plot, p plot, gallery, queue, seen]; unchanged parts skipped."""
        seen = dict(seen or {})
        out: list[Any] = []
        try:
            folder = self._folder(name)
        except PathError as err:
            folder, note = None, str(err)
        else:
            note = "no run yet: start one, or pick a past run"
        if folder is None:
            key = ("none", note)
            values = [f'<div class="rg-muted">{escape(note)}</div>', "", "", None, gr.update(visible=False),
                      gr.update(visible=False), gr.update(value=[], visible=False), self.queue_html()]
            if seen.get("empty") == key:
                return [gr.skip()] * 7 + [self._changed(seen, "queue", values[-1])] + [seen]
            seen = {"empty": key, "queue": values[-1]}
            return values + [seen]
        rows = read_metrics(folder)
        tag = str(folder)
        out.append(self._changed(seen, "status", self.status_html(folder)))
        out.append(self._changed(seen, "progress", self.progress_html(folder, rows)))
        log = log_tail(folder)
        out.append(self._changed(seen, "log", (tag, len(log), log[-300:]), lambda: ansi_to_html(tail_text(log, LOG_LINES))))
        plot_key = (tag, len(rows), rows[-1]["step"] if rows else 0)
        # a loss/* term equal to the total (loss/fm when it is the only term) would hide the total's line
        loss_keys = [k for k in metric_keys(rows, "loss/") if any(r.get(k) != r.get("loss") for r in rows[-50:])]
        out.append(self._changed(seen, "loss", (plot_key, tuple(loss_keys)),
                                 lambda: curves(rows, ["loss"] + loss_keys, smooth="loss") if rows else None))
        rollout_keys = [k for k in metric_keys(rows, "rollout/") if k not in ("rollout/model_evals", PROBABILITY)]
        rollout_keys += [k for k in ("exposure_bias/variance_error", "exposure_bias/swd") if any(k in r for r in rows)]
        out.append(self._changed(seen, "rollout", (plot_key, tuple(rollout_keys)),
                                 lambda: gr.update(value=curves(rows, rollout_keys), visible=bool(rollout_keys))))
        p_keys = [PROBABILITY] if any(PROBABILITY in r for r in rows[-200:]) else []
        out.append(self._changed(seen, "p", (plot_key, tuple(p_keys)),
                                 lambda: gr.update(value=curves(rows, p_keys), visible=bool(p_keys))))
        pics = samples(folder)
        out.append(self._changed(seen, "gallery", (tag, tuple(p.name for p in pics)),
                                 lambda: gr.update(value=[(str(p), p.stem) for p in reversed(pics)], visible=bool(pics))))
        out.append(self._changed(seen, "queue", self.queue_html()))
        seen.pop("empty", None)
        return out + [seen]

    @staticmethod
    def _changed(seen: dict[str, Any], key: str, signature: Any, make=None) -> Any:
        if seen.get(key) == signature:
            return gr.skip()
        seen[key] = signature
        return make() if make is not None else signature

    def queue_html(self) -> str:
        jobs = self.manager.snapshot()
        if not jobs:
            return '<div class="rg-muted">queue: empty</div>'
        rows = "".join(
            f"<tr><td>{j['id']}</td><td>{escape(self.rel(Path(j['output_dir'])))}</td>"
            f"<td>{escape(self.state_of(Path(j['output_dir'])).label)}</td>"
            f"<td>{escape('resume ' + Path(j['resume']).name) if j['resume'] else 'new run'}</td></tr>" for j in jobs)
        return f'<table class="rg-queue"><tr><th>#</th><th>folder</th><th>state</th><th>kind</th></tr>{rows}</table>'

    # --- past runs --------------------------------------------------------------------------------
    def runs_table(self, current: str | None = None) -> tuple[Any, Any]:
        """(table of past runs, run chooser); the chosen run stays chosen while it exists."""
        folders = find_runs(self.runs_dir)
        table = [[({**run_summary(f, self.runs_dir), "status": self.state_of(f).label})[c] for c in RUN_COLUMNS] for f in folders]
        names = [self.rel(f) for f in folders]
        value = current if current in names else (names[0] if names else None)
        return gr.update(value=table, headers=RUN_COLUMNS), gr.update(choices=names, value=value)

    def rename(self, name: str | None, new_name: str | None) -> tuple[str, Any, Any]:
        """API ``rename_run``: (message, table, chooser now on the renamed run)."""
        try:
            target = rename_run(self.manager, name or "", new_name or "")
        except (PathError, OSError) as err:
            return (_msg(f"not renamed: {err}", ok=False), *self.runs_table(name))
        return (_msg(f"renamed {name} → {self.rel(target)}"), *self.runs_table(self.rel(target)))

    def trash(self, name: str | None) -> tuple[str, Any, Any]:
        """API ``delete_run``: move the run aside into RUNS/.trash (never deleted); (message, table, chooser)."""
        try:
            target = trash_run(self.manager, name or "")
        except (PathError, OSError) as err:
            return (_msg(f"not moved: {err}", ok=False), *self.runs_table(name))
        return (_msg(f"moved {name} to {target} (move it back to restore it)"), *self.runs_table())

    @staticmethod
    def pick_from_table(evt: gr.SelectData) -> Any:
        """A click on any cell of a row chooses that row's run (the first column; the row as shown, so
        it holds after the table is sorted or filtered in the page)."""
        row = evt.row_value or []
        return gr.update(value=str(row[0])) if row and row[0] else gr.skip()

    def run_details(self, name: str | None) -> tuple[str, str, list, Any]:
        """(config JSON, checkpoints HTML, sample gallery, loss curve) of a past run."""
        if not name:
            return "", '<div class="rg-muted">no run selected</div>', [], None
        try:
            folder = confine(name, self.runs_dir)
        except PathError as err:
            return "", _msg(str(err), ok=False), [], None
        status = read_status(folder)
        ckpts = checkpoints(folder)
        items = "".join(f"<li>step {s}{' <b>(saved on request: kept by rotation)</b>' if is_requested(p) else ''}: "
                        f"<code>{escape(str(p))}</code></li>" for s, p in ckpts) or "<li>none</li>"
        error = f'<div class="rg-error">{escape(str(status.get("error")))}</div>' if status.get("error") else ""
        info = (f'<div><b>{escape(name)}</b> · {escape(str(status.get("status", "not started")))} · '
                f'folder <code>{escape(str(folder))}</code>{error}<br>checkpoints:<ul>{items}</ul></div>')
        rows = read_metrics(folder)
        gallery = [(str(p), p.stem) for p in reversed(samples(folder))]
        return dump_config(read_config(folder)), info, gallery, curves(rows, ["loss"], smooth="loss")
