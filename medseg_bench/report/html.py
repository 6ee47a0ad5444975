"""One self-contained HTML file: the report's tables and its figures as base64 PNGs (nothing to fetch).

Every text goes through `_text`: on one line, control characters escaped as the other formats write them
(`\\x1b`: an escape sequence from a run folder's name reached the page raw), then `html.escape`."""

from __future__ import annotations

import base64
import html
from typing import Any

from medseg_bench.report.build import Report
from medseg_bench.report.display import Cell, Table, sections, settings_text
from medseg_bench.report.formats import one_line

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1.5em; color: #1d2731; line-height: 1.45; }
h1 { border-bottom: 2px solid #4a6a8a; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccd; padding-bottom: .2em; }
p.note { color: #4b5563; font-size: .92em; max-width: 75em; }
div.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .8em 0 1.4em; font-size: .85em; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: .3em 0; }
th, td { padding: .3em .7em; border-bottom: 1px solid #dde; white-space: nowrap; }
thead th { border-top: 2px solid #333; border-bottom: 1px solid #333; background: #f4f6f9; }
tbody tr:last-child td { border-bottom: 2px solid #333; }
tbody tr:hover { background: #f7faff; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; color: #0b6b2f; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ea; }
figcaption { font-size: .85em; color: #4b5563; }
footer { margin-top: 3em; font-size: .8em; color: #6b7280; }
"""


def _text(text: str) -> str:
    return html.escape(one_line(text))


def _cell(cell: Cell, align: str) -> str:
    classes = " ".join(c for c in (align if align == "r" else "", "best" if cell.best else "") if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<td{attr}>{_text(cell.text)}</td>"


def _table(table: Table) -> str:
    head = "".join(f'<th class="{a}">{_text(h)}</th>'
                   for h, a in zip(table.headers, table.align, strict=True))
    body = "".join("<tr>" + "".join(_cell(c, a) for c, a in zip(row, table.align, strict=True)) + "</tr>"
                   for row in table.rows)
    caption = f"<caption>{_text(table.caption)}</caption>" if table.caption else ""
    return (f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _figure(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{_text(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_text(name)}</figcaption></figure>")


def revision_text(run: dict[str, Any]) -> str:
    """A run's git revision as the provenance table shows it: a dirty checkout's with its diff's sha256 (12
    digits), so runs of one commit with different uncommitted changes are told apart; an installed package's
    with the URL pip installed it from."""
    text = str(run.get("git_revision") or "")
    diff = run.get("source_diff") or {}
    if isinstance(diff.get("sha256"), str):
        text += f", diff sha256 {diff['sha256'][:12]}"
    elif diff.get("error"):
        text += f", diff not recorded: {diff['error']}"
    source = run.get("installed_from") or {}
    if source.get("url"):
        requested = f" ({source['requested_revision']})" if source.get("requested_revision") else ""
        text += f", installed from {source['url']}{requested}"
    return text


def _provenance(report: Report) -> str:
    """Every run behind the numbers, folded away: id, fold, seed, device (the GPU, else the CPU and its
    instruction set, where recorded), git revision (`revision_text`), versions, settings."""
    runs = report.provenance.get("runs", {})
    rows = []
    for run_id, run in runs.items():
        versions = ", ".join(f"{k} {v}" for k, v in sorted((run.get("versions") or {}).items()) if v)
        settings = settings_text(run.get("metric_settings") or {})
        limits = " ".join(f"{k}={v}" for k, v in sorted((run.get("isa_limits") or {}).items()))
        cpu = " ".join(str(v) for v in (run.get("cpu"), run.get("cpu_capability"), limits) if v)
        cells = [run_id, run.get("task"), run.get("fold"), run.get("seed"), run.get("device") or "",
                 run.get("gpu") or cpu, revision_text(run), versions, settings]
        rows.append([Cell("" if c is None else str(c)) for c in cells])
    headers = ["run", "task", "fold", "seed", "device", "GPU or CPU", "git revision", "versions",
               "metric settings"]
    table = Table(headers, rows, ["l", "l", "r", "r", "l", "l", "l", "l", "l"])
    return (f"<details><summary>Provenance: {len(runs)} run{'' if len(runs) == 1 else 's'} (package "
            f"versions, git revisions, metric settings)</summary>{_table(table)}</details>")


def to_html(report: Report, plots: dict[str, bytes] | None = None) -> str:
    """The whole report as one HTML page; `plots` from `make_plots(report)` (built here when None)."""
    from medseg_bench.report.plots import make_plots, task_figures

    if plots is None:
        plots = make_plots(report)
    used: set[str] = set()
    parts = []
    for section in sections(report):
        level = min(section.level, 3)
        parts.append(f"<h{level}>{_text(section.title)}</h{level}>")
        parts += [_table(item) if isinstance(item, Table) else f'<p class="note">{_text(item)}</p>'
                  for item in section.items]
        if section.task is not None:
            for name in task_figures(plots, section.task):
                parts.append(_figure(name, plots[name]))
                used.add(name)
    parts += [_figure(name, png) for name, png in plots.items() if name not in used]
    parts.append(_provenance(report))
    generated, runs = report.provenance.get("generated_by", {}), len(report.provenance.get("runs", {}))
    footer = (f"<footer>medseg-bench {_text(str(generated.get('medseg_bench', '')))}, "
              f"{_text(str(generated.get('time_utc', '')))}; results: "
              f"{_text(str(report.results_dir))}; "
              f"{runs} run{'' if runs == 1 else 's'}.</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>medseg-bench report</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + footer + "</body></html>\n")
