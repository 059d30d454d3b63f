"""The compiled stage graph drawn as SVG: one box per node with its typed input ports on the left and
output ports on the right, an edge per wire (coloured by port type), the setup stages in a top band
and the per-step stages below, columns by dependency depth. Rollout and ReflexFlow stages are
highlighted; nodes with validation faults are outlined in red with the messages as tooltips.

Drawn here rather than by Mermaid because Mermaid cannot place edges on individual ports, and the page
must work offline (Mermaid's script would have to be fetched). Every label is HTML-escaped.
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass, field
from html import escape

from rollgraph.graph.registry import registered_stages
from rollgraph.graph.spec import GraphSpec, split_ref

NODE_W, HEAD_H, PORT_H, COL_GAP, ROW_GAP, BAND_GAP, MARGIN = 150, 40, 15, 46, 18, 44, 16
PALETTE = ("#2563eb", "#059669", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#be185d", "#4d7c0f", "#9333ea", "#475569")
FAMILY_FILL = {"load": "#e0f2fe", "noise": "#e0e7ff", "model": "#fef3c7", "optimize": "#dcfce7",
               "predict": "#ffedd5", "loss": "#fee2e2", "rollout": "#fce7f3"}


@dataclass
class _Box:
    id: str
    type: str
    phase: str
    ins: list[tuple[str, str, bool]]  # (name, port type, optional)
    outs: list[tuple[str, str]]
    known: bool
    x: float = 0.0
    y: float = 0.0
    depth: int = 0
    issues: list[str] = field(default_factory=list)

    @property
    def height(self) -> float:
        return HEAD_H + max(len(self.ins), len(self.outs), 1) * PORT_H + 8

    def in_y(self, name: str) -> float:
        names = [p[0] for p in self.ins]
        return self.y + HEAD_H + (names.index(name) if name in names else 0) * PORT_H + PORT_H / 2

    def out_y(self, name: str) -> float:
        names = [p[0] for p in self.outs]
        return self.y + HEAD_H + (names.index(name) if name in names else 0) * PORT_H + PORT_H / 2


def _boxes(spec: GraphSpec, issues: dict[str, list[str]]) -> dict[str, _Box]:
    stages = registered_stages()
    boxes: dict[str, _Box] = {}
    used_outputs: dict[str, list[str]] = {}
    for node in spec.nodes:
        for _, ref in node.wires():
            parts = split_ref(ref)
            if parts:
                used_outputs.setdefault(parts[0], []).append(parts[1])
    for node in spec.nodes:
        if node.id in boxes:
            continue
        cls = stages.get(node.type)
        if cls is not None:
            ins = [(p.name, p.type, p.optional) for p in cls.inputs]
            ins += [(name, "?", False) for name in node.inputs if name not in {p.name for p in cls.inputs}]
            outs = [(p.name, p.type) for p in cls.outputs]
            boxes[node.id] = _Box(node.id, node.type, cls.phase, ins, outs, True)
        else:
            outs = [(name, "?") for name in dict.fromkeys(used_outputs.get(node.id, []))]
            boxes[node.id] = _Box(node.id, node.type, "step", [(n, "?", False) for n in node.inputs], outs, False)
        boxes[node.id].issues = list(issues.get(node.id, []))
    return boxes


BANDS = ("setup", "step", "every")


def _band(phase: str) -> str:
    """The band a phase is drawn in: the update stages (once per optimizer step) close the step band."""
    return phase if phase in ("setup", "every") else "step"


def _layout(spec: GraphSpec, boxes: dict[str, _Box]) -> tuple[float, float, float, float | None]:
    deps = {b: set() for b in boxes}
    for node in spec.nodes:
        for _, ref in node.wires():
            parts = split_ref(ref)
            if parts and parts[0] in boxes and node.id in deps and parts[0] != node.id:
                deps[node.id].add(parts[0])
    try:
        order = list(graphlib.TopologicalSorter(deps).static_order())
    except graphlib.CycleError:
        order = list(boxes)  # drawn anyway; the cycle is reported as a problem
    for nid in order:
        if all(d in boxes for d in deps[nid]):
            before = [boxes[d].depth + 1 for d in deps[nid] if order.index(d) < order.index(nid)]
            boxes[nid].depth = max(before, default=0)
    spec_order = {nid: i for i, nid in enumerate(boxes)}
    band_top = MARGIN + 18
    for phase in BANDS:
        members = [b for b in boxes.values() if _band(b.phase) == phase]
        if not members:
            continue
        bottom = band_top
        for depth in sorted({b.depth for b in members}):
            column = [b for b in members if b.depth == depth]

            def centre(b: _Box, phase: str = phase, depth: int = depth) -> tuple[float, int]:
                ys = [boxes[d].y for d in deps[b.id] if _band(boxes[d].phase) == phase and boxes[d].depth < depth]
                return (sum(ys) / len(ys) if ys else 0.0, spec_order[b.id])

            y = band_top
            for b in sorted(column, key=centre):
                b.x, b.y = MARGIN + depth * (NODE_W + COL_GAP), y
                y += b.height + ROW_GAP
            bottom = max(bottom, y)
        band_top = bottom + BAND_GAP
    width = MARGIN * 2 + (max((b.depth for b in boxes.values()), default=0) + 1) * (NODE_W + COL_GAP) - COL_GAP
    height = band_top - BAND_GAP + MARGIN
    setup_bottom = max((b.y + b.height for b in boxes.values() if b.phase == "setup"), default=MARGIN)
    step_bottom = max((b.y + b.height for b in boxes.values() if _band(b.phase) == "step"), default=None)
    return width, height, setup_bottom, step_bottom


def _edge(x1: float, y1: float, x2: float, y2: float, across: bool) -> str:
    """A curve from an output port to an input port. An edge from the setup band into the step band runs
    level through the setup band and turns down in the gap just left of its target, so it does not cut
    through the step nodes in between."""
    if across and x2 - 28 > x1:
        return f"M{x1:.1f},{y1:.1f} C{x2 - 28:.1f},{y1:.1f} {x2 - 28:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
    dx = max(30.0, (x2 - x1) / 2) if x2 > x1 else 70.0
    return f"M{x1:.1f},{y1:.1f} C{x1 + dx:.1f},{y1:.1f} {x2 - dx:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"


def _node_svg(b: _Box, colour) -> list[str]:
    family = b.type.split(".", 1)[0]
    fill, stroke, sw = FAMILY_FILL.get(family, "#f1f5f9"), "#64748b", 1.2
    if family == "rollout":
        stroke, sw = "#db2777", 2.5
    elif b.type.startswith("loss.reflexflow"):
        fill, stroke, sw = "#ede9fe", "#7c3aed", 2.5
    if b.issues or not b.known:
        stroke, sw = "#dc2626", 3
    tip = escape(f"{b.id} ({b.type}, {b.phase})" + "".join(f"\n✖ {m}" for m in b.issues))
    out = [f'<g class="rg-node" data-node="{escape(b.id)}"><title>{tip}</title>',
           f'<rect x="{b.x}" y="{b.y}" width="{NODE_W}" height="{b.height}" rx="7" fill="{fill}" stroke="{stroke}" stroke-width="{sw}"/>',
           f'<text x="{b.x + 8}" y="{b.y + 16}" font-size="12" font-weight="700" fill="#0f172a">{escape(b.id)}</text>',
           f'<text x="{b.x + 8}" y="{b.y + 31}" font-size="10" fill="{"#dc2626" if not b.known else "#475569"}">{escape(b.type)}</text>']
    if b.issues:
        out.append(f'<text x="{b.x + NODE_W - 8}" y="{b.y + 16}" font-size="12" text-anchor="end" fill="#dc2626">✖ {len(b.issues)}</text>')
    for name, ptype, optional in b.ins:
        y = b.in_y(name)
        out.append(f'<circle cx="{b.x}" cy="{y}" r="4" fill="{colour(ptype)}" stroke="#fff"><title>{escape(f"{name}: {ptype}")}</title></circle>')
        out.append(f'<text x="{b.x + 8}" y="{y + 3.5}" font-size="10" fill="#334155">{escape(name)}{"?" if optional else ""}</text>')
    for name, ptype in b.outs:
        y = b.out_y(name)
        out.append(f'<circle cx="{b.x + NODE_W}" cy="{y}" r="4" fill="{colour(ptype)}" stroke="#fff"><title>{escape(f"{name}: {ptype}")}</title></circle>')
        out.append(f'<text x="{b.x + NODE_W - 8}" y="{y + 3.5}" font-size="10" text-anchor="end" fill="#334155">{escape(name)}</text>')
    out.append("</g>")
    return out


def graph_svg(spec: GraphSpec, issues: dict[str, list[str]] | None = None) -> str:
    """An SVG picture of ``spec``; ``issues`` maps node ids to their validation messages."""
    boxes = _boxes(spec, issues or {})
    width, height, setup_bottom, step_bottom = _layout(spec, boxes)
    types = sorted({t for b in boxes.values() for t in [p[1] for p in b.ins] + [p[1] for p in b.outs]})

    def colour(ptype: str) -> str:
        return "#94a3b8" if ptype == "?" else PALETTE[types.index(ptype) % len(PALETTE)]

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="rg-graph" viewBox="0 0 {width:.0f} {height:.0f}" '
             f'width="{width:.0f}" height="{height:.0f}" font-family="ui-sans-serif, system-ui, sans-serif">']
    if any(b.phase == "setup" for b in boxes.values()):
        parts.append(f'<text x="{MARGIN}" y="{MARGIN + 8}" font-size="11" fill="#64748b">setup (once)</text>')
        parts.append(f'<line x1="{MARGIN}" x2="{width - MARGIN}" y1="{setup_bottom + BAND_GAP / 2}" y2="{setup_bottom + BAND_GAP / 2}" '
                     'stroke="#cbd5e1" stroke-dasharray="4 4"/>')
        parts.append(f'<text x="{MARGIN}" y="{setup_bottom + BAND_GAP / 2 + 14}" font-size="11" fill="#64748b">step (every iteration)</text>')
    if step_bottom is not None and any(b.phase == "every" for b in boxes.values()):
        parts.append(f'<line x1="{MARGIN}" x2="{width - MARGIN}" y1="{step_bottom + BAND_GAP / 2}" y2="{step_bottom + BAND_GAP / 2}" '
                     'stroke="#cbd5e1" stroke-dasharray="4 4"/>')
        parts.append(f'<text x="{MARGIN}" y="{step_bottom + BAND_GAP / 2 + 14}" font-size="11" fill="#64748b">'
                     'every (when due: an interval, the end of the run, a request)</text>')
    for node in spec.nodes:
        dst = boxes.get(node.id)
        for port, ref in node.wires():
            parts_ = split_ref(ref)
            src = boxes.get(parts_[0]) if parts_ else None
            if dst is None or src is None:
                continue
            ptype = dict((p[0], p[1]) for p in src.outs).get(parts_[1], "?")
            path = _edge(src.x + NODE_W, src.out_y(parts_[1]), dst.x, dst.in_y(port), _band(src.phase) != _band(dst.phase))
            parts.append(f'<path class="rg-edge" d="{path}" fill="none" stroke="{colour(ptype)}" stroke-width="1.6" opacity="0.8">'
                         f'<title>{escape(f"{ref} → {node.id}.{port} ({ptype})")}</title></path>')
    for b in boxes.values():
        parts += _node_svg(b, colour)
    parts.append("</svg>")
    legend = " ".join(f'<span class="rg-port"><i style="background:{colour(t)}"></i>{escape(t)}</span>' for t in types if t != "?")
    return "".join(parts), legend


def graph_html(spec: GraphSpec | None, issues: dict[str, list[str]] | None = None, note: str = "") -> str:
    """The picture with a one-line summary (rollout / ReflexFlow on or off) and a port-type legend."""
    if spec is None:
        return f'<div class="rg-graph-box"><p class="rg-muted">No graph: {escape(note or "the config has errors")}</p></div>'
    svg, legend = graph_svg(spec, issues)
    types = [n.type for n in spec.nodes]
    rollout = next((t for t in types if t.startswith("rollout.")), None)
    reflex = [t for t in types if t.startswith("loss.reflexflow")]
    summary = (f"{len(spec.nodes)} stages · rollout: <b>{escape(rollout) if rollout else 'off'}</b> · "
               f"ReflexFlow: <b>{'on (' + escape(', '.join(reflex)) + ')' if reflex else 'off'}</b>")
    if note:
        summary += f' · <span class="rg-bad">{escape(note)}</span>'
    # fitted to the page's width by default (a graph with rollout and ReflexFlow is ~1750 px wide); the
    # checkbox, pure CSS so it needs no script, shows it at full size with a sideways scroll
    toggle = ('<input type="checkbox" id="rg-graph-full" class="rg-full-toggle">'
              '<label for="rg-graph-full" class="rg-muted"> full size (scroll sideways)</label>')
    return (f'<div class="rg-graph-box"><div class="rg-graph-summary">{summary}</div>{toggle}'
            f'<div class="rg-graph-scroll">{svg}</div><div class="rg-legend">port types: {legend}</div></div>')
