"""The page's theme and CSS (Gradio 6 takes both in ``launch()``, not ``Blocks()``)."""

from __future__ import annotations

import gradio as gr

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="slate")

CSS = """
.rg-header { font-size: 1.15rem; padding: 4px 2px 8px; }
.rg-muted { color: #64748b; font-size: 0.9rem; }
.rg-bad { color: #b91c1c; }
.rg-ok, .rg-okmsg { color: #047857; }
.rg-problems { border-radius: 8px; padding: 8px 12px; border: 1px solid #e2e8f0; }
.rg-problems.rg-bad { background: #fef2f2; border-color: #fecaca; }
.rg-problems.rg-ok { background: #ecfdf5; border-color: #a7f3d0; }
.rg-problems ul { margin: 4px 0 0 0; padding-left: 18px; }
.rg-problems code { font-weight: 600; }
.rg-invalid input, .rg-invalid textarea, .rg-invalid .wrap, .rg-invalid .secondary-wrap {
  border-color: #dc2626 !important; box-shadow: 0 0 0 1px #dc2626 !important; }
.rg-invalid .info-text, .rg-invalid [data-testid="block-info"] { color: #b91c1c !important; }
.rg-mono textarea { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
/* the validity box follows the scroll down the whole form: the side column is stretched to the form's
   height so the sticky box has room to travel. Gradio's container has overflow: hidden, which makes it the
   scroll box that sticky positions against; clip cuts the same overflow without that */
.gradio-container { overflow: clip !important; }
#rg-side { align-self: stretch !important; }
#rg-problems { position: sticky; top: 8px; z-index: 5; background: var(--background-fill-primary); }
.rg-graph-box { overflow: hidden; }
.rg-graph-scroll { overflow-x: auto; padding: 4px 0; }
.rg-graph-scroll svg { max-width: 100%; height: auto; }
.rg-full-toggle:checked ~ .rg-graph-scroll svg { max-width: none; }
.rg-graph-summary { margin-bottom: 6px; }
.rg-legend { font-size: 0.85rem; color: #475569; margin-top: 4px; }
.rg-port i { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin: 0 4px 0 12px; vertical-align: middle; }
.rg-logbox { display: flex; flex-direction: column-reverse; max-height: 420px; overflow: auto; border-radius: 8px; }
/* column-reverse keeps the view at the newest line; the log must not shrink to the box, or the box
   cannot scroll and shows the oldest lines */
.rg-log { flex-shrink: 0; margin: 0; padding: 10px 12px; font-size: 12px; line-height: 1.45; white-space: pre-wrap; word-break: break-word;
  font-family: ui-monospace, SFMono-Regular, Menlo, monospace; min-height: 60px; }
.rg-log span { color: inherit; }
.rg-progress { height: 14px; background: #e2e8f0; border-radius: 7px; overflow: hidden; }
.rg-bar { height: 100%; background: linear-gradient(90deg, #6366f1, #22c55e); transition: width 0.5s; }
.rg-progress-text { font-variant-numeric: tabular-nums; margin-top: 4px; }
.rg-status { font-size: 1.05rem; }
.rg-state { padding: 1px 8px; border-radius: 9px; background: #e2e8f0; }
.rg-running, .rg-starting { background: #dbeafe; color: #1d4ed8; }
.rg-finished { background: #dcfce7; color: #15803d; }
.rg-stopped, .rg-queued, .rg-cancelled { background: #fef9c3; color: #854d0e; }
.rg-failed, .rg-died { background: #fee2e2; color: #b91c1c; }
.rg-error { margin-top: 8px; background: #fef2f2; border: 1px solid #fecaca; color: #991b1b; padding: 8px 12px; border-radius: 8px; }
.rg-error pre { white-space: pre-wrap; font-size: 12px; margin: 6px 0 0; }
/* sample grids are wide strips: shown whole, at their own aspect ratio, one per row, pixels kept sharp */
.rg-grids .grid-container { grid-template-rows: none !important; grid-auto-rows: auto !important; }
.rg-grids .thumbnail-item { aspect-ratio: auto !important; height: auto !important; }
.rg-grids .thumbnail-lg > img { height: auto !important; object-fit: contain !important; image-rendering: pixelated; }
/* a series of one point (a path "M x,yZ" with no segment) draws as a dot, not as nothing */
[id$="-plot"] .role-mark path { stroke-linecap: round; }
[id$="-plot"] .role-mark path[d$="Z"]:not([d*="L"]):not([d*="C"]) { stroke-width: 8px; }
.rg-queue { font-size: 0.9rem; border-collapse: collapse; }
.rg-queue td, .rg-queue th { padding: 2px 10px; border-bottom: 1px solid #e2e8f0; text-align: left; }
"""
