"""Report renderers: GitHub-flavoured markdown, LaTeX (booktabs), CSV, JSON, parquet, a rich terminal view.

`render(report, fmt)` returns text (bytes for parquet); `write_atomic` writes a file atomically.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from medseg_bench.errors import ResultsError, UsageError
from medseg_bench.errors import one_line as printable
from medseg_bench.files import private_temp
from medseg_bench.registry import choice_hint
from medseg_bench.report.build import Report
from medseg_bench.report.display import Cell, Table, sections

FORMATS = ("markdown", "csv", "json", "latex", "html", "parquet")
EXTENSIONS = {".md": "markdown", ".markdown": "markdown", ".csv": "csv", ".json": "json", ".tex": "latex",
              ".html": "html", ".htm": "html", ".parquet": "parquet"}
SCHEMA_VERSION = 1


def one_line(text: str) -> str:
    """`text` with its line breaks as spaces: a label name, case id or version read from a run folder or a
    task file could end a markdown table row, or put a blank line (a paragraph: an error) in a LaTeX table
    or a line of LaTeX after a `%` comment; other control characters escaped (`\\x1b`): printed on a
    terminal, an escape sequence in a run folder's name could rewrite the screen or the window title."""
    return printable(" ".join(text.splitlines()))


def md_text(text: str, cell: bool = True, names: bool = True) -> str:
    """Text for markdown: one line; a `<` that could open an HTML tag escaped (markdown passes HTML through to
    the page it renders); in a table, `|` escaped. `names` (headings, captions, cells: names from task files,
    run folders and case files among them, never markup of the report's own): what else markdown would render
    as markup is escaped too (`_md_names`); not in the notes, whose code spans are the report's (the names in
    them are escaped as `display.sections` writes them in, `md_name`). Public:
    `evaluate`'s markdown tables escape their case ids and region names with it."""
    text = one_line(text)
    text = _md_names(text) if names else text
    text = re.sub(r"<(?=[A-Za-z/!?])", r"\\<", text)
    return text.replace("|", "\\|") if cell else text


def md_name(text: str) -> str:
    """A name from the results as a markdown note shows it as written (`md_text`'s escapes of names): what
    `display.sections` writes the names in notes through, for `to_markdown`."""
    return _md_names(one_line(text))


def _md_names(text: str) -> str:
    """`text` shown as it is by markdown (GitHub's too): a backslash, `*`, a backtick, `$` (math), `&` (an
    entity: `&amp;` showed `&`) and `~` escaped, `_` where it could open or close emphasis (not within a word:
    `dice_ce` stays as it is), and `]` before `(` (a link: a label name put one in a published report)."""
    text = re.sub(r"([\\*`$&~])", r"\\\1", text)
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)
    return text.replace("](", "\\](")


def _md_cell(cell: Cell) -> str:
    text = md_text(cell.text)
    return f"**{text}**" if cell.best and text != "–" else text


def _md_table(table: Table) -> list[str]:
    lines = []
    if table.caption:
        lines += [f"**{md_text(table.caption, cell=False)}**", ""]
    lines.append("| " + " | ".join(md_text(h) for h in table.headers) + " |")
    lines.append("|" + "|".join("---:" if a == "r" else "---" for a in table.align) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return lines


def to_markdown(report: Report) -> str:
    lines: list[str] = []
    for section in sections(report, name=md_name):
        lines += ["#" * section.level + " " + md_text(section.title, cell=False), ""]
        for item in section.items:
            text = _md_table(item) if isinstance(item, Table) else [md_text(item, cell=False, names=False)]
            lines += [*text, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# LaTeX's default font encoding (OT1) has no `<`, `>` or `|` glyph in text: typed as they are, they print as
# ¡, ¿ and —. Each is written in math mode, which prints it in every encoding.
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "|": r"$|$"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "χ²": r"$\chi^2$", "α": r"$\alpha$", "Δ": r"$\Delta$", "–": "--",
                  "<": r"$<$", ">": r"$>$", "≥": r"$\geq$", "≤": r"$\leq$"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in one_line(text))
    for symbol, replacement in _LATEX_SYMBOLS.items():
        out = out.replace(symbol, replacement)
    return out


def _latex_table(table: Table, caption: str, label: str) -> list[str]:
    def cell(c: Cell) -> str:
        text = latex_escape(c.text)
        return rf"\textbf{{{text}}}" if c.best and c.text != "–" else text

    lines = [r"\begin{table}[htbp]", r"\centering", r"\scriptsize", rf"\caption{{{latex_escape(caption)}}}",
             rf"\label{{{label}}}", r"\begin{tabular}{" + "".join(table.align) + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in table.headers) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return lines


def to_latex(report: Report) -> str:
    """Tables for a paper: `\\usepackage{booktabs}`; section notes become comments and captions."""
    lines = ["% medseg-bench report: needs \\usepackage{booktabs}"]
    used: set[str] = set()
    for section in sections(report):
        lines.append(f"% --- {one_line(section.title)} ---")
        tables = 0
        for item in section.items:
            if not isinstance(item, Table):
                lines.append(f"% {one_line(item)}")
                continue
            caption = section.title if not item.caption else f"{section.title}: {item.caption}"
            if tables == 1 and section.task:
                caption = f"{section.title}: significance of the top configuration against the others"
            tables += 1
            slug = "".join(ch if ch.isalnum() else "-" for ch in caption.lower())[:60].strip("-")
            label, n = f"tab:{slug}", 1
            while label in used:  # two long captions alike in their first 60 characters: LaTeX's "multiply
                n += 1            # defined" label, a \ref to the wrong table
                label = f"tab:{slug}-{n}"
            used.add(label)
            lines += [*_latex_table(item, caption, label), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def flat_table(report: Report) -> pd.DataFrame:
    """What CSV and parquet hold: the leaderboard (the group effect with --group-by), plain numbers."""
    if report.groups is not None:
        return report.groups.copy()
    flat = whole_params(report.table)
    for column in ("run_ids", "folds", "seeds"):
        flat[column] = flat[column].map(lambda v: ";".join(str(x) for x in v))
    if "settings" in flat:  # a JSON object per row, as text
        flat["settings"] = flat["settings"].map(lambda v: "" if v is None else json.dumps(v, sort_keys=True))
    return flat


def whole_params(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of the leaderboard `table` whose `params` are whole numbers or missing: a configuration without
    a count (a summary.json with `cost.params: null`) made the column float, so CSV wrote 4812345 as
    4.81234e+06 and JSON as 4812345.0."""
    flat = table.copy()
    if "params" in flat:
        flat["params"] = flat["params"].astype("Int64")  # nullable: an absent count stays empty
    return flat


def to_csv(report: Report) -> str:
    """The flat table, its text as a spreadsheet shows it (`spreadsheet_table`); floats to 6 significant
    digits (JSON and parquet keep full precision)."""
    return spreadsheet_table(flat_table(report)).to_csv(index=False, float_format="%.6g")


# What Excel, LibreOffice Calc and Google Sheets take for a formula at the start of a cell (OWASP's "CSV
# injection"): `=HYPERLINK(...)` sends data away, DDE's `=cmd|' /C calc'!A0` runs a program
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: object) -> object:
    """A text cell as a spreadsheet should show it: its control characters escaped as where names are
    printed (`errors.one_line`: a CR, which pandas leaves unquoted, breaks the row in a spreadsheet), and a
    leading `'` where it starts as a formula does (OWASP's advice; the spreadsheet shows the rest as text).
    Anything but text, and text that is a number (`-0.5`), is left as it is."""
    if not isinstance(value, str):
        return value
    text = printable(value)
    if not text.startswith(FORMULA_STARTS):
        return text
    try:
        float(text)
    except ValueError:
        return "'" + text
    return text


def spreadsheet_table(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with each text cell (and column name) as `spreadsheet_cell` makes it, numbers untouched: the
    CSVs written for people, `report --format csv` and `evaluate --format csv`, whose names come from task
    files, run folders and case files. A run's `metrics.csv`, which the tool reads back, keeps its names as
    they are."""
    safe = frame.copy(deep=False)
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = safe[column].map(spreadsheet_cell)
    safe.columns = [spreadsheet_cell(column) for column in safe.columns]
    return safe


def to_parquet(report: Report) -> bytes:
    buffer = io.BytesIO()
    try:
        flat_table(report).to_parquet(buffer, index=False)
    except ImportError as exc:
        raise UsageError(f"parquet output needs pyarrow: pip install pyarrow ({exc})") from None
    return buffer.getvalue()


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and pandas' NA -> null, numpy scalars -> Python."""
    if value is pd.NA:
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    if frame is None:
        return []
    return [_clean(record) for record in frame.to_dict(orient="records")]


def to_json(report: Report) -> str:
    """See docs/report-schema.md."""
    from medseg_bench.report.tables import CONFIG_COLUMNS

    scores = report.scores[["task", "config", "case", "fold", "seed", *report.metrics]]
    data = {
        "schema_version": SCHEMA_VERSION,
        "settings": report.settings,
        "tasks": report.tasks,
        "label_names": report.label_names,
        "leaderboard": _records(whole_params(report.table)),
        "ranking": _records(report.ranking),
        "significance": {"pairs": _records(report.pairs), "friedman": _records(report.friedman)},
        "groups": _records(report.groups) if report.groups is not None else None,
        "case_scores": _records(scores),
        "config_columns": CONFIG_COLUMNS,
        "provenance": {**report.provenance, "absent_metrics": report.absent_metrics},
    }
    return json.dumps(_clean(data), indent=2, ensure_ascii=False) + "\n"


def render(report: Report, fmt: str, plots: dict[str, bytes] | None = None) -> str | bytes:
    """The report in `fmt` (one of FORMATS); html embeds `plots` (built when not given)."""
    if fmt == "html":
        from medseg_bench.report.html import to_html

        return to_html(report, plots)
    renderers: dict[str, Callable[[Report], str | bytes]] = {
        "markdown": to_markdown, "csv": to_csv, "json": to_json, "latex": to_latex, "parquet": to_parquet}
    if fmt not in renderers:
        raise UsageError(f"unknown format '{fmt}'; {choice_hint(fmt, FORMATS)}")
    return renderers[fmt](report)


def format_for(path: Path) -> str:
    """The format a file name asks for, from its extension."""
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"cannot tell the format of '{path.name}' from its extension; use one of "
                         f"{', '.join(sorted(EXTENSIONS))} or pass --format")
    return fmt


def check_output_format(fmt: str, path: Path) -> None:
    """Refuse a `--format` that the extension of `--output` contradicts (`--format csv --output rep.json`
    would write CSV into a .json file, perhaps over a JSON report); an extension no format claims (.txt)
    takes any format."""
    implied = EXTENSIONS.get(path.suffix.lower())
    if implied is None or implied == fmt:
        return
    extension = next(ext for ext, name in EXTENSIONS.items() if name == fmt)
    raise UsageError(f"--format {fmt} but --output {path} is a {path.suffix} name: drop --format, or name "
                     f"the file {extension}")


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write to a temp file in the same folder, then rename over `path`; a failure names `path`.

    A link to a file is written through (the file it names is replaced, the link kept); a path that is
    neither a file nor a folder (a FIFO, `/dev/stdout`, a device) is written into, as a shell would."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    tmp: Path | None = None
    try:  # all of it: a name too long fails the first look at `path` (it escaped as exit 7)
        target = Path(os.path.realpath(path)) if path.is_symlink() and path.is_file() else path
        tmp = private_temp(target)
        if path.exists() and not path.is_file() and not path.is_dir():
            with open(path, "wb") as stream:
                stream.write(data)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        from medseg_bench.files import file_in_the_way

        try:
            blocker = file_in_the_way(path)
        except OSError:
            blocker = None
        reason = f"{blocker} is not a folder" if blocker else exc.strerror or str(exc)
        raise ResultsError(f"{path}: cannot write ({reason})") from None
    finally:
        with contextlib.suppress(OSError):  # not only "missing": its folder may not be one
            if tmp is not None:
                tmp.unlink()


def check_output_file(path: Path) -> None:
    """ResultsError now, before minutes of work, when `path` cannot take the output file: a file on its
    path where a folder should be, a folder in its place, or a write that would fail
    (`_check_file_writable`)."""
    from medseg_bench.files import file_in_the_way

    try:
        blocker = file_in_the_way(path)
        is_dir = path.is_dir()
    except OSError as exc:  # a folder name too long, say: stat fails
        raise ResultsError(f"{path}: cannot write ({exc.strerror or exc})") from None
    if blocker is not None:
        raise ResultsError(f"{path}: cannot write ({blocker} is not a folder)")
    if is_dir:
        raise ResultsError(f"{path}: cannot write (it is a folder; give a file name)")
    _check_not_a_runs_file(path)
    _check_file_writable(path)


def _check_not_a_runs_file(path: Path) -> None:
    """ResultsError when `path` is an existing file of a run folder (`results.run_folder_of`): `evaluate
    --pred RUN/predictions ... -o RUN/metrics.csv` replaced the run's own scores, `report --output
    RUN/summary.json` its summary, without a word. A new file in a run folder is written. Or when it is a
    results dir's index (`results.index_of`), there or not yet: `report --output RESULTS/index.parquet`
    replaced the per-case scores with the leaderboard, until `status` or a sweep rebuilt them over it."""
    from medseg_bench.results import index_of, run_folder_of

    try:
        results_dir = index_of(path)
    except OSError:
        results_dir = None
    if results_dir is not None:
        raise ResultsError(f"{path}: cannot write (the index of results dir {results_dir}, which status and "
                           "sweep rebuild from its run folders; give another name)")
    try:
        target = Path(os.path.realpath(path))  # through links, and `missing/..` as the write will take it
        if not target.is_file():
            return
        run = run_folder_of(target)
    except OSError:
        return  # `_check_file_writable` says what is wrong with the path
    if run is not None:
        raise ResultsError(f"{path}: cannot write (a file of run {run.name}, whose results are never "
                           "replaced; give another name)")


def _check_file_writable(path: Path) -> None:
    """ResultsError now if `write_atomic(path, ...)` would fail to start: its temp file is created and
    removed in `path`'s folder, or, where that folder is missing, the first folder it would make is made and
    removed. Catches a folder without write permission, a read-only file system, a name too long."""
    try:
        if path.exists() and not path.is_file() and not path.is_dir():
            return  # a FIFO or device is written into, not replaced; opening a FIFO would block
        target = Path(os.path.realpath(path)) if path.is_symlink() and path.is_file() else path
        if target.parent.exists():
            _probe_file(private_temp(target))
        else:
            _probe_folder(target.parent)
    except OSError as exc:
        raise ResultsError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _probe_file(probe: Path) -> None:
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return  # not ours to remove; the write replaces it
    probe.unlink()


def _probe_folder(folder: Path) -> None:
    while not folder.parent.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        folder.mkdir()
    except FileExistsError:
        return  # made meanwhile by someone else: not ours to remove
    folder.rmdir()


def print_rich(report: Report, console: Any = None) -> None:
    """The report as rich tables on the terminal (best values in bold green)."""
    from rich import box
    from rich.markup import escape as markup
    from rich.table import Table as RichTable

    from medseg_bench.progress import StdoutConsole

    def escape(text: str) -> str:  # markup and control characters as text; a cell's own lines kept
        return markup("\n".join(printable(line) for line in text.split("\n")))

    console = console or StdoutConsole()  # `report | head`: 141 as `cat`, not rich's exit 1
    narrow_said = False
    for section in sections(report, compact=True):
        if section.level > 1:
            console.rule(f"[bold]{escape(section.title)}")
        else:
            console.print(f"[bold underline]{escape(section.title)}")
        for item in section.items:
            if not isinstance(item, Table):
                console.print(escape(item), style="dim")
                continue
            table = item
            out = RichTable(title=table.caption or None, box=box.SIMPLE_HEAD)
            # Columns as wide as each cell's longest line, so numbers do not break mid-value, when the table
            # fits the terminal with its headers (a column: two spaces of padding and a border; one edge);
            # otherwise rich wraps them. Held to those widths where the headers did not fit, rich narrowed
            # other columns, widened them again to those widths, and cut off the columns past the edge.
            widths = [min(32, max((len(line) for row in table.rows for line in row[i].text.split("\n")),
                                  default=1)) for i in range(len(table.headers))]
            needed = [max(width, len(header)) for width, header in zip(widths, table.headers, strict=True)]
            fits = sum(needed) + 3 * len(needed) + 1 <= console.width
            if not fits and not narrow_said:  # rich then breaks names and numbers inside their cells
                console.print(f"(tables wider than the terminal's {console.width} columns wrap inside their "
                              "cells: widen it, or use --format markdown)", style="dim")
                narrow_said = True
            for header, align, width in zip(table.headers, table.align, widths, strict=True):
                out.add_column(escape(header), justify="right" if align == "r" else "left", overflow="fold",
                               min_width=width if fits else None)
            for row in table.rows:
                out.add_row(*[f"[bold green]{escape(c.text)}[/]" if c.best else escape(c.text) for c in row])
            console.print(out)
