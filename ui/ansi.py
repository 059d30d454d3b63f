"""ANSI-coloured console text (the trainer's rich log, written with FORCE_COLOR=1) to safe HTML.

rich parses the escape codes (``Text.from_ansi``) and exports HTML with inline styles; rich escapes the
text itself, so a log line cannot inject markup into the page.
"""

from __future__ import annotations

import io

from rich.console import Console
from rich.terminal_theme import MONOKAI
from rich.text import Text

_TEMPLATE = ('<div class="rg-logbox" style="background-color:{background}">'
             '<pre class="rg-log" style="color:{foreground};background-color:{background}">{code}</pre></div>')


def ansi_to_html(text: str, width: int = 160) -> str:
    console = Console(record=True, file=io.StringIO(), width=width, force_terminal=True, color_system="truecolor",
                      legacy_windows=False)
    body = Text.from_ansi(text.replace("\r\n", "\n"))
    console.print(body, soft_wrap=True, end="")
    return console.export_html(theme=MONOKAI, inline_styles=True, code_format=_TEMPLATE)


def tail_text(data: bytes, max_lines: int) -> str:
    """The last ``max_lines`` whole lines of ``data`` (decoded, invalid bytes replaced)."""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-max_lines:])
