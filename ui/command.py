"""``rollgraph ui``: registered into the command line through the ``rollgraph.commands`` entry point."""

from __future__ import annotations

from rollgraph.graph.commands import Command


def _configure(p) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", default=None, help="user:password (or set ROLLGRAPH_UI_AUTH)")
    p.add_argument("--runs-dir", default=None, help="folder of runs the UI starts and lists (default: ROLLGRAPH_RUNS_DIR or ./runs)")
    p.add_argument("--presets-dir", default=None, help="your presets folder (default: ROLLGRAPH_USER_PRESETS or ~/.rollgraph/presets)")


def cmd_ui(args, console) -> int:
    from rollgraph.ui.app import launch

    launch(host=args.host, port=args.port, auth=args.auth, runs_dir=args.runs_dir, user_presets_dir=args.presets_dir)
    return 0


COMMAND = Command("ui", "start the web UI", cmd_ui, _configure, order=70)
