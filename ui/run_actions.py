"""What the Train and Runs tabs do: start / resume / stop / save now / sample now, and the live view
(status and errors, progress, log, loss curves, samples, queue) polled by a timer. Every folder named
by the page is confined to the runs folder."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import gradio as gr
from rich.text import Text
from rollgraph.ui.ansi import ansi_to_html, tail_text
from rollgraph.ui.checks import check_config
from rollgraph.ui.paths import PathError, confine
from rollgraph.ui.presets import dump_config, parse_config_text
from rollgraph.ui.runs import CANCELLED, EXITED, QUEUED, RUNNING, RunManager
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
RUN_COLUMNS = ["run", "status", "step", "final loss", "checkpoints", "samples", "updated"]


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
                out.append((f"{self.rel(folder)} @ step {step}", self.rel(path)))
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
    def _submit(self, config: dict[str, Any], resume: str | None = None) -> tuple[str, Any]:
        result = check_config(config)
        if not result.valid:
            listed = "; ".join(f"{p.key}: {p.message}" for p in result.problems)
            return _msg(f"not started: the config has {len(result.problems)} problem(s): {listed}", ok=False), gr.skip()
        try:
            job = self.manager.submit(config, resume=resume)
        except (PathError, OSError) as err:
            return _msg(f"not started: {err}", ok=False), gr.skip()
        name = self.rel(job.output_dir)
        wanted = config.get("output_dir")
        moved = "" if resume or not wanted or Path(str(wanted)).name == job.output_dir.name else \
            f" (output_dir {wanted} already holds a run, so this one goes to a new folder)"
        waiting = [j for j in self.manager.snapshot() if j["state"] in (QUEUED, RUNNING) and j["id"] != job.id]
        how = f"queued behind {len(waiting)} run(s)" if waiting else "starting"
        what = f"resuming from {resume}" if resume else "run"
        return _msg(f"{what} → {self.runs_dir / name}: {how}{moved}"), gr.update(choices=self.watch_choices(), value=name)

    def start(self, text: str) -> tuple[str, Any]:
        """API ``start``: queue a run of the editor's config; returns (message, the run's folder name)."""
        data, problem = parse_config_text(text)
        if data is None:
            return _msg(f"not started: {problem}", ok=False), gr.skip()
        return self._submit(data)

    def resume(self, checkpoint: str | None, until_step: float | None) -> tuple[str, Any]:
        """API ``resume``: continue a run from one of its checkpoints with the config it was run with
        (optionally training until a different step)."""
        if not checkpoint:
            return _msg("pick a checkpoint first", ok=False), gr.skip()
        try:
            path = confine(checkpoint, self.runs_dir)
        except PathError as err:
            return _msg(str(err), ok=False), gr.skip()
        config = read_config(path.parent.parent)
        if not config:
            return _msg(f"{path.parent.parent} has no readable config.json", ok=False), gr.skip()
        if until_step:
            config["max_train_steps"] = int(until_step)
        return self._submit(config, resume=str(path))

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
    def status_html(self, folder: Path) -> str:
        status = read_status(folder)
        try:
            job = self.manager.job_for(folder)
        except PathError:
            job = None
        state = status.get("status")
        if job is not None and job.state == QUEUED:
            ahead = [j for j in self.manager.snapshot() if j["state"] in (QUEUED, RUNNING) and j["id"] < job.id]
            state = f"queued ({len(ahead)} ahead)"
        elif job is not None and job.state == CANCELLED:
            state = "cancelled (removed from the queue)"
        elif job is not None and job.state == RUNNING and state in (None, "finished", "stopped", "failed"):
            state = "starting (loading data and model)"
        elif job is not None and job.state == EXITED and state in (None, "running"):
            state = f"exited (code {job.returncode})"
        elif state is None:
            state = "not started"
        parts = [f'<div class="rg-status"><b>{escape(self.rel(folder))}</b> · <span class="rg-state rg-{escape(str(state).split()[0])}">{escape(str(state))}</span></div>']
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
        """[status, progress, log, loss plot, rollout plot, gallery, queue, seen]; unchanged parts skipped."""
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
                      gr.update(value=[], visible=False), self.queue_html()]
            if seen.get("empty") == key:
                return [gr.skip()] * 6 + [self._changed(seen, "queue", values[-1])] + [seen]
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
        rollout_keys = [k for k in metric_keys(rows, "rollout/") if k != "rollout/model_evals"]
        rollout_keys += [k for k in ("exposure_bias/variance_error", "exposure_bias/swd") if any(k in r for r in rows)]
        out.append(self._changed(seen, "rollout", (plot_key, tuple(rollout_keys)),
                                 lambda: gr.update(value=curves(rows, rollout_keys), visible=bool(rollout_keys))))
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
            f"<tr><td>{j['id']}</td><td>{escape(self.rel(Path(j['output_dir'])))}</td><td>{escape(j['state'])}"
            f"{' (code ' + str(j['returncode']) + ')' if j['returncode'] not in (None, 0) else ''}</td>"
            f"<td>{escape('resume ' + Path(j['resume']).name) if j['resume'] else 'new run'}</td></tr>" for j in jobs)
        return f'<table class="rg-queue"><tr><th>#</th><th>folder</th><th>state</th><th>kind</th></tr>{rows}</table>'

    # --- past runs --------------------------------------------------------------------------------
    def runs_table(self) -> tuple[Any, Any]:
        folders = find_runs(self.runs_dir)
        table = [[run_summary(f, self.runs_dir)[c] for c in RUN_COLUMNS] for f in folders]
        names = [self.rel(f) for f in folders]
        return gr.update(value=table, headers=RUN_COLUMNS), gr.update(choices=names, value=names[0] if names else None)

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
        items = "".join(f"<li>step {s}: <code>{escape(str(p))}</code></li>" for s, p in ckpts) or "<li>none</li>"
        error = f'<div class="rg-error">{escape(str(status.get("error")))}</div>' if status.get("error") else ""
        info = (f'<div><b>{escape(name)}</b> · {escape(str(status.get("status", "not started")))} · '
                f'folder <code>{escape(str(folder))}</code>{error}<br>checkpoints:<ul>{items}</ul></div>')
        rows = read_metrics(folder)
        gallery = [(str(p), p.stem) for p in reversed(samples(folder))]
        return dump_config(read_config(folder)), info, gallery, curves(rows, ["loss"], smooth="loss")
