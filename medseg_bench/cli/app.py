"""The Typer app. Domain errors become one red line on stderr and their exit code, here and only here."""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from medseg_bench import __version__, signals
from medseg_bench.cli import (
    evaluate,
    fetch,
    listing,
    plan,
    predict,
    print_coloured,
    report,
    status,
    sweep,
    validate,
)
from medseg_bench.errors import FileSystemError, Interrupted, MedsegError, OutOfMemory, one_line

BROKEN_PIPE_EXIT = 128 + signal.SIGPIPE  # 141, what a shell reports for a program stopped by SIGPIPE


def print_error(message: str) -> None:
    """`error: MESSAGE` on stderr, in red unless NO_COLOR is set: how every command ends on an error."""
    print_coloured(f"error: {message}", "red")


class _Group(TyperGroup):
    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, windows_expand_args: bool = True,
             **extra: Any) -> Any:
        """Click's own errors (a mistyped option, a value that does not parse) as one line and exit 2 too, not
        typer's boxed usage block."""
        given = {"args": args, "prog_name": prog_name, "complete_var": complete_var,
                 "windows_expand_args": windows_expand_args, **extra}
        if not standalone_mode:
            return super().main(**given, standalone_mode=False)
        import sys

        try:
            code = super().main(**given, standalone_mode=False)
        except _click_errors() as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):  # Ctrl-C as click parsed (before typer 0.29)
                _interrupted_starting()
            if type(exc).__name__ != "NoArgsIsHelpError":  # no arguments: typer printed the help making it
                given_args = list(args) if args is not None else sys.argv[1:]
                command = given_args[0] if given_args and given_args[0] in self.commands else None
                print_error(_click_message(exc, f"medseg-bench {command}" if command else None))
            sys.exit(getattr(exc, "exit_code", 1))
        if code == 128 + signal.SIGINT and not self.invoked:  # as typer 0.29 parsed: its silent Exit(130)
            _interrupted_starting()
        sys.exit(code if isinstance(code, int) else 0)  # a command's typer.Exit(n) comes back as n

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # An empty argument is Path(""), the current folder: `--results-dir "$UNSET"` would write there.
        problem = _empty_argument(args)
        if problem:
            print_error(problem)
            raise typer.Exit(2)
        return super().parse_args(ctx, args)

    # `ctx: Any`: a `click.Context` before typer 0.29, a `typer._click.Context` (its vendored click) since.
    invoked = False  # whether parsing was done and the command began: a Ctrl-C before is one line here

    def invoke(self, ctx: Any) -> Any:
        self.invoked = True
        try:
            with signals.interruptible():  # SIGTERM too runs every `finally` (staging folders, locks)
                try:
                    return super().invoke(ctx)
                except Exception as raised:  # one raised while the signal unwound is that interruption
                    if signals.caused_by_stop(raised):
                        raise KeyboardInterrupt(signals.stop_reason(raised)) from raised
                    raise
        except BrokenPipeError:  # `medseg-bench ... | head`: the reader has gone; stop quietly, as `cat` does
            signals.stdout_to_devnull()  # no second error at exit's flush
            raise typer.Exit(BROKEN_PIPE_EXIT) from None
        except (MedsegError, OSError, MemoryError) as raised:
            exc = (raised if isinstance(raised, MedsegError) else FileSystemError.from_os_error(raised)
                   if isinstance(raised, OSError) else OutOfMemory.from_memory_error(raised))
            print_error(one_line(str(exc)))
            raise typer.Exit(exc.exit_code) from None
        except ImportError as raised:  # a library the loader could not map (`ulimit -v`): one line, exit 8
            out_of_memory = OutOfMemory.from_import_error(raised)
            if out_of_memory is None:
                raise
            print_error(out_of_memory.args[0])
            raise typer.Exit(out_of_memory.exit_code) from None
        except KeyboardInterrupt:  # click would print "Aborted!" and exit 1
            signum = signals.received() or signal.SIGINT
            if signum == signal.SIGPIPE:  # stdout's reader gone (`signals.pipe_closed`): quietly, as `cat`
                raise typer.Exit(BROKEN_PIPE_EXIT) from None
            stop = Interrupted(f"interrupted ({signal.Signals(signum).name}): nothing finished was lost; "
                               "rerun the same command to carry on", signum)
            print_error(str(stop))
            raise typer.Exit(stop.exit_code) from None


def _interrupted_starting() -> None:
    """Ctrl-C before the command began (its libraries loading, its options parsing): one line, exit 130."""
    import sys

    print_error("interrupted (SIGINT) while starting: nothing was done")
    sys.exit(128 + signal.SIGINT)


class _Command(TyperCommand):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # A `~` the shell left as it is (`--data-dir=~/data`, quoted '~/res') is the home folder, as in
        # `fetch --source` and MEDSEG_BENCH_HOME: not a folder named `~` made in the current one.
        rest = super().parse_args(ctx, args)
        ctx.params = {name: _home_expanded(value) for name, value in ctx.params.items()}
        return rest


def _home_expanded(value: Any) -> Any:
    """A path (or a list or tuple of paths) with a leading `~` or `~user` expanded; any other value as is."""
    import os
    from pathlib import PurePath

    if isinstance(value, PurePath):
        return type(value)(os.path.expanduser(value))  # Path.expanduser raises on an unknown `~user`
    if isinstance(value, (list, tuple)):
        return type(value)(_home_expanded(item) for item in value)
    return value


app = typer.Typer(
    cls=_Group,
    name="medseg-bench",
    help="Benchmark medical image segmentation: fetch an MSD task, sweep configurations, report "
         "leaderboards.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medseg-bench {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Benchmark medical image segmentation configurations."""


# The commands, in the order `--help` lists them: name, one-line help, function (one module per command).
COMMANDS: list[tuple[str, str, Callable[..., Any]]] = [
    ("fetch", "Download or import an MSD task, verify and validate it.", fetch.fetch),
    ("validate", "Re-validate a fetched task; --strict makes any problem fatal.", validate.validate),
    ("plan", "Show the task's plan (spacing, normalisation, patch/batch sizes); re-size it.", plan.plan),
    ("sweep", "Train and evaluate every combination of the given axes.", sweep.sweep),
    ("status", "State of every run under a results dir (queued, running, done, failed, ...).", status.status),
    ("report", "Leaderboards per task (mean ± std, 95% CI, cost), significance tests, ranking across tasks, "
               "figures.", report.report),
    ("predict", "Predict label maps for a folder of images with a trained run.", predict.predict),
    ("evaluate", "Score predicted label maps against references.", evaluate.evaluate),
    ("list", "List tasks, archs, encoders, losses, augs or metrics.", listing.list_items),
]
def _reflowed(function: Callable[..., Any]) -> str:
    """A command's docstring for `medseg-bench CMD --help`: its paragraphs, each as one line to wrap."""
    import inspect

    doc = inspect.getdoc(function) or ""
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in doc.split("\n\n"))


for _name, _help, _function in COMMANDS:  # the one-liner in the command list, the docstring in CMD --help
    app.command(_name, cls=_Command, short_help=_help, help=_reflowed(_function))(_function)

def main() -> None:
    import sys

    if _only_prints(sys.argv[1:]):
        # Help, the version and `list` print through rich/typer, which exit 1 on a closed pipe. They have
        # nothing to clean up, so the default SIGPIPE action stops them as it stops `cat`: 141 in a shell.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app()


def _click_errors() -> tuple[type[BaseException], ...]:
    """Click's exception classes: its ClickException (usage and parameter errors) and Abort, from click and
    from the copy typer vendors since 0.29 (its Abort in typer.exceptions)."""
    import importlib

    found: list[type[BaseException]] = []
    for name in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found += [getattr(module, cls) for cls in ("ClickException", "Abort") if hasattr(module, cls)]
    return tuple(found)


def _click_message(exc: BaseException, command: str | None = None) -> str:
    """One line for a click error: the command it concerns (`command` where click's error does not say, as
    for an option missing its value), click's message, where to look for help."""
    format_message = getattr(exc, "format_message", None)
    if format_message is None:  # Abort: end of input at a prompt
        return "aborted"
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or command
    # click lays out a list over lines ("Choose from:\n\ttasks,\n\tarchs"): one line, not escaped codes
    text = one_line(" ".join(part.strip() for part in format_message().splitlines() if part.strip()))
    return f"{path}: {text} (see `{path} --help`)" if path else text


def _empty_argument(args: list[str]) -> str | None:
    """What is wrong when an argument is empty (`--out ''`, `--out=`, an empty RUN), else None."""
    for i, arg in enumerate(args):
        if arg.startswith("--") and arg.endswith("=") and len(arg) > 3:
            return f"{arg[:-1]} is empty: give a value (an unset shell variable?)"
        if arg == "":
            after = f"{args[i - 1]} " if i and args[i - 1].startswith("-") else "an argument "
            return f"{after}is empty: give a value (an unset shell variable?)"
    return None


def _only_prints(args: list[str]) -> bool:
    """No arguments (the help), --help/-h/--version anywhere, or the `list` command."""
    return not args or args[0] == "list" or any(a in ("--help", "-h", "--version") for a in args)
