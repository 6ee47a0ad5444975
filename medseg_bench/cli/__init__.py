"""The `medseg-bench` command line: one module per command, added to one Typer app in `app.py`."""

from __future__ import annotations

from pathlib import Path

# The most processes (or DataLoader workers) an option may ask for: far above any machine's cores; more is a
# typo (`--workers 80000`: as many processes started, or a DataLoader's worker per batch)
MAX_PROCESSES = 1024


def run() -> None:
    """The `medseg-bench` entry point (and `python -m medseg_bench`'s): the app and the libraries it imports
    are loaded here, so that Ctrl-C while they load (the first 0.2 s or so) is one line and exit 130, as
    every later interruption is (`app._Group.invoke`), not a KeyboardInterrupt's 30-line traceback."""
    try:
        from medseg_bench.cli.app import main
    except KeyboardInterrupt:
        import sys

        sys.stderr.write("error: interrupted (SIGINT) while starting: nothing was done\n")
        raise SystemExit(130) from None
    main()


def print_coloured(text: str, colour: str) -> None:
    """`text` on stderr, in `colour` unless NO_COLOR is set: click's `secho` ends a line with its reset code
    on a terminal even without a colour, and takes no notice of NO_COLOR."""
    import typer

    from medseg_bench.settings import get_settings

    if get_settings().no_color:
        typer.echo(text, err=True)
    else:
        typer.secho(text, fg=colour, err=True)


def check_folder(option: str, path: Path) -> None:
    """UsageError "PATH: --OPTION is not a folder (a file)" (or "no such folder", or a broken link named as
    such): a folder a command reads, given as an option, checked before any work."""
    from medseg_bench.errors import UsageError
    from medseg_bench.files import kind_of

    if not path.is_dir():
        what = kind_of(path) if path.exists() or path.is_symlink() else "no such folder"
        raise UsageError(f"{path}: {option} is not a folder ({what})")


def check_range(option: str, value: float | None, least: float, most: float | None = None) -> None:
    """UsageError "--OPTION must be at least LEAST, not VALUE" (or "from LEAST to MOST"): every command's
    words for a number out of range (typer's `min=` words it otherwise, and its words change)."""
    from medseg_bench.errors import UsageError

    if value is None or (value >= least and (most is None or value <= most)):
        return
    wanted = f"at least {_number(least)}" if most is None else f"from {_number(least)} to {_number(most)}"
    raise UsageError(f"{option} must be {wanted}, not {_number(value)}")


def _number(value: float) -> str:
    """1000000 as itself (`:g` writes 1e+06), 0.1 as 0.1."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def comma_list(option: str, values: str | list[str] | None) -> list[str] | None:
    """'a, b,' (or a repeated option's values, each such a list) -> ['a', 'b']; None when `option` was not
    given; UsageError when it was but names nothing (',', ''): `report --task ,` reported every task, `status
    --task ,` found "no runs of  here", `sweep --arch ,` said the sweep "expands to no runs"."""
    from medseg_bench.errors import UsageError

    if values is None:
        return None
    given = [values] if isinstance(values, str) else values
    names = [name.strip() for value in given for name in value.split(",") if name.strip()]
    if given and not names:
        shown = " ".join(repr(value) for value in given)
        raise UsageError(f"{option} {shown}: no value in it; give one or more, comma-separated")
    return names or None
