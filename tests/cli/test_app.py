"""CLI basics with Typer's CliRunner: help, version, list, and errors as one line with an exit code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg_bench import __version__
from medseg_bench.cli.app import COMMANDS, app

runner = CliRunner()


def test_help_and_version() -> None:
    for flag in ("-h", "--help"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0 and "fetch" in result.output and "sweep" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"medseg-bench {__version__}"


@pytest.mark.parametrize(("what", "expect"), [("tasks", "Task09_Spleen"), ("archs", "deeplab"),
                                              ("losses", "dice_ce"), ("augs", "heavy"), ("augs", "nnunet"),
                                              ("metrics", "hd95"),
                                              ("encoders", "efficientnet-b0")])
def test_list(home: Path, what: str, expect: str) -> None:
    result = runner.invoke(app, ["list", what])
    assert result.exit_code == 0 and expect in result.output


def test_every_loss_has_a_description_for_list_losses() -> None:
    from medseg_bench.losses import LOSSES

    for name, factory in LOSSES.items():
        assert (factory.__doc__ or "").strip(), name
    listed = runner.invoke(app, ["list", "losses"], terminal_width=200)
    assert "Tversky loss, alpha 0.3" in listed.output


@pytest.mark.parametrize(("args", "message"), [
    (["--arch", "unte"], "unknown arch 'unte'; did you mean 'unet'?"),
    (["--loss", "dicece"], "unknown loss 'dicece'; did you mean 'dice_ce'?"),
    (["--aug", "hevy"], "unknown aug 'hevy'; did you mean 'heavy'?"),
    (["--dims", "4d"], "unknown dims '4d'"),
    (["--folds", "x"], "--folds takes comma-separated integers"),
])
def test_bad_sweep_names_exit_2_before_any_work(home: Path, tmp_path: Path, args: list[str],
                                                message: str) -> None:
    results = str(tmp_path / "r")
    result = runner.invoke(app, ["sweep", "--task", "Task04_Hippocampus", "--results-dir", results, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_unknown_task(home: Path) -> None:
    result = runner.invoke(app, ["fetch", "Task04_Hipocampus"])
    assert result.exit_code == 2 and "did you mean 'Task04_Hippocampus'" in result.output


def test_sweep_on_unfetched_task_is_a_data_error(home: Path, tmp_path: Path) -> None:
    args = ["sweep", "--task", "Task04_Hippocampus", "--results-dir", str(tmp_path / "r"), "--epochs", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 3 and "run `medseg-bench fetch Task04_Hippocampus` first" in result.output
    typo = tmp_path / "no-such-data"  # a mistyped --data-dir: nothing is made there (it held a lock file)
    assert runner.invoke(app, [*args, "--data-dir", str(typo)]).exit_code == 3 and not typo.exists()


def test_dry_run_lists_runs_with_skips(home: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep", "--task", "Task04_Hippocampus", "--arch", "unet,deeplab",
                                 "--dims", "2d,3d", "--dry-run", "--results-dir", str(tmp_path)])
    assert result.exit_code == 3, result.output  # listed, then as the sweep: the task is not fetched here
    assert "deeplab in 3d: skipped" in result.output
    assert "pending  Task04_Hippocampus/2d-unet.resnet34-dice_ce-none-f0-s0-" in result.output
    assert "3 runs" in result.output


def test_report_without_results(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", "--results-dir", str(tmp_path)])
    assert result.exit_code == 6 and "no finished runs" in result.output


@pytest.mark.parametrize(("args", "named"), [
    (["report", "--results-dir", ""], "--results-dir is empty"),
    (["sweep", "--task", "Task04_Hippocampus", "--results-dir=", "--dry-run"], "--results-dir is empty"),
    (["predict", "", "--images", "x", "--out", "y"], "an argument is empty"),
])
def test_an_empty_argument_is_refused_not_taken_as_the_current_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], named: str) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {named}: give a value (an unset shell variable?)"
    assert list(tmp_path.iterdir()) == []


def test_any_other_os_error_is_one_line_naming_the_path(home: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # No command lets a file-system failure escape as a traceback (here: one no check foresaw).
    import errno

    from medseg_bench.data import fetch

    def fails(*args: object, **kwargs: object) -> None:
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(tmp_path / "a-file" / "data"))

    monkeypatch.setattr(fetch, "fetch_task", fails)
    (tmp_path / "src").mkdir()
    result = runner.invoke(app, ["fetch", "Task04_Hippocampus", "--source", str(tmp_path / "src")])
    assert result.exit_code == 7, result.output
    assert result.output.strip().splitlines()[-1] == f"error: {tmp_path / 'a-file' / 'data'}: Not a directory"


def test_an_error_raised_while_a_sigterm_unwinds_is_that_interruption(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.save cut by the signal raises RuntimeError in the KeyboardInterrupt's place: it escaped as a
    # traceback, exit 1, not as the interruption it is (exit 143, one line).
    import signal

    from medseg_bench.data import fetch
    from tests.conftest import save_cut_by_signal

    monkeypatch.setattr(fetch, "fetch_task", lambda *args, **kwargs: save_cut_by_signal(signal.SIGTERM))
    (tmp_path / "src").mkdir()
    result = runner.invoke(app, ["fetch", "Task04_Hippocampus", "--source", str(tmp_path / "src")])
    assert result.exit_code == 143, result.output
    assert result.output.strip().splitlines() == [
        "error: interrupted (SIGTERM): nothing finished was lost; rerun the same command to carry on"]


def test_running_out_of_memory_is_one_line(tmp_path: Path, monkeypatch) -> None:
    # e.g. `report --resamples 100000000000`, or predict on an image of spacing 1e6 mm: numpy's MemoryError
    # escaped as a traceback, exit 1 (a bug's code).
    import numpy as np

    from medseg_bench.report import tables
    from tests.report.fake_results import write_fake_results

    def huge(*args: object, **kwargs: object) -> None:
        np.empty((10**12, 10**3))  # numpy's own error, whatever the machine

    monkeypatch.setattr(tables, "bootstrap_ci", huge)
    results = write_fake_results(tmp_path / "results")
    result = runner.invoke(app, ["report", "--results-dir", str(results)])
    assert result.exit_code == 8, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: out of memory: Unable to allocate")
    assert "Traceback" not in result.output
    too_many = runner.invoke(app, ["report", "--results-dir", str(results), "--resamples", "100000000000"])
    assert too_many.exit_code == 2 and "--resamples must be from 100 to 1000000" in too_many.output


def test_a_library_that_cannot_be_mapped_in_memory_is_one_line(tmp_path: Path, monkeypatch) -> None:
    # `ulimit -v 4000000; medseg-bench sweep ...`: torch's libraries did not fit the address space, and the
    # loader's ImportError escaped as a traceback, exit 1 (a bug's code)
    from medseg_bench import results

    def unloadable(*args: object, **kwargs: object) -> None:
        raise ImportError("libtorch_cpu.so: failed to map segment from shared object")

    monkeypatch.setattr(results, "check_results_dir", unloadable)  # the first thing `status` calls
    result = runner.invoke(app, ["status", "--results-dir", str(tmp_path)])
    assert result.exit_code == 8, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: out of memory: a library could not be loaded")
    assert "(libtorch_cpu.so: failed to map segment from shared object); run with more memory" in lines[0]
    assert "Traceback" not in result.output


def test_any_other_import_error_is_not_called_out_of_memory(tmp_path: Path, monkeypatch) -> None:
    from medseg_bench.errors import OutOfMemory

    assert OutOfMemory.from_import_error(ImportError("No module named 'submitit'")) is None


def test_an_error_is_one_line_even_when_a_name_holds_a_newline(home: Path) -> None:
    result = runner.invoke(app, ["fetch", "Task04\nfake: all good"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: unknown task 'Task04\\nfake: all good'; choose from")


def test_a_reader_that_goes_away_stops_the_command_quietly(home: Path, tmp_path: Path) -> None:
    # `medseg-bench ... | head -1` printed "error: Broken pipe" and exited 7 (a file-system error).
    import os
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("medseg-bench")
    result = subprocess.run(f"set -o pipefail; '{exe}' sweep --config sweeps/survey.yaml --dry-run "
                            f"--results-dir '{tmp_path}' | true", shell=True, executable="/bin/bash",
                            capture_output=True, text=True, cwd=Path(__file__).parents[2],
                            env={**os.environ, "MEDSEG_BENCH_HOME": str(home)}, timeout=120)
    assert result.returncode == 141 and result.stderr == "", (result.returncode, result.stderr)


def _into_a_closed_pipe(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`argv` run with its stdout a pipe no one reads any more (the reader of `... | head` gone)."""
    import os

    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(argv, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, **env})
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [["report"], ["report", "--format", "markdown"], ["status"]])
def test_a_table_printed_into_a_closed_pipe_exits_as_a_shell_reports_sigpipe(tmp_path: Path,
                                                                              args: list[str]) -> None:
    # rich's Console on a closed pipe raised SystemExit(1): `report | head` exited 1 (`plan` too)
    import sys

    from tests.conftest import fake_finished_run

    results = tmp_path / "results"
    for seed in range(3):
        fake_finished_run(results, seed, "T")
    exe = Path(sys.executable).with_name("medseg-bench")
    result = _into_a_closed_pipe([str(exe), *args, "--results-dir", str(results)],
                                 {"MEDSEG_BENCH_HOME": str(tmp_path / "home")})
    assert isinstance(result, subprocess.CompletedProcess)
    assert result.returncode == 141 and result.stderr == "", (result.returncode, result.stderr)


def test_ctrl_c_while_the_app_loads_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Ctrl-C in the first 0.15 s (typer, rich and our modules importing) printed a 36-line traceback
    import builtins
    import sys

    from medseg_bench.cli import run

    real_import = builtins.__import__

    def interrupted(name: str, *args: object, **kwargs: object) -> object:
        if name == "medseg_bench.cli.app":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "medseg_bench.cli.app")
    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as stopped:
        run()
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "error: interrupted (SIGINT) while starting: nothing was done\n"


def test_ctrl_c_while_the_command_line_is_parsed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # typer 0.29 turns it into a silent exit 130, click before it into "Aborted!" and exit 1
    from typer.core import TyperGroup

    def interrupted(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(TyperGroup, "parse_args", interrupted)  # the command line, before the command
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 130
    assert result.output == "error: interrupted (SIGINT) while starting: nothing was done\n"


@pytest.mark.parametrize("args", ["--help", "--version", "list archs", "sweep --help"])
def test_help_and_list_into_a_closed_pipe_exit_as_a_shell_reports_sigpipe(args: str) -> None:
    # They printed through rich/typer, which exit 1 on a broken pipe: `set -o pipefail` scripts failed.
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("medseg-bench")
    result = subprocess.run(f"set -o pipefail; '{exe}' {args} | true", shell=True, executable="/bin/bash",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 141) and result.stderr == "", (result.returncode, result.stderr)


def test_a_command_help_shows_its_docstring_and_the_list_its_one_liner() -> None:
    # `plan --help` showed only the one-liner of the command list: where plan.json lives went unsaid.
    listing = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "Show the task's plan (spacing, normalisation, patch/batch sizes); re-size it." in listing.output
    plan = runner.invoke(app, ["plan", "--help"], env={"COLUMNS": "200"})
    assert "The plan lives in DATA_DIR/preprocessed/TASK/plan.json; edit it to override" in plan.output
    assert "re-size it." not in plan.output


@pytest.mark.parametrize(("args", "command", "message"), [
    (["sweep", "--epochs", "abc"], "medseg-bench sweep", "Invalid value for '--epochs': "),
    # click's words: "No such option: --bogus" (the click typer 0.29 carries), "No such option '--bogus'.
    # (Did you mean one of: '--jobs', '--loss'?)" (click 8.5, which typer 0.18 uses)
    (["sweep", "--bogus"], "medseg-bench sweep", ("No such option: --bogus", "No such option '--bogus'.")),
    # typer before 0.18 passed a missing argument as None with click 8.3 and later ("'NoneType' object has
    # no attribute 'lower'", exit 1)
    (["fetch"], "medseg-bench fetch", "Missing argument 'TASK'."),
    # an option without its value: click's error knows no command; it was "error: Option '--epochs' ..."
    (["sweep", "--epochs"], "medseg-bench sweep", "Option '--epochs' requires an argument."),
    (["bogus"], "medseg-bench", "No such command 'bogus'."),
    # click's list over lines came out as escaped codes: "Choose from:\n\ttasks,\n\tarchs,..."
])
def test_a_command_line_click_cannot_parse_is_one_line_exit_2(args: list[str], command: str,
                                                              message: str | tuple[str, ...]) -> None:
    # was typer's boxed block: "Usage: ...", "Try ... for help.", and the message in a frame over 3-5 lines
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    messages = (message,) if isinstance(message, str) else message
    assert result.output.startswith(tuple(f"error: {command}: {each}" for each in messages)), result.output
    assert result.output.rstrip().endswith(f"(see `{command} --help`)")


def test_no_arguments_print_the_help_once(capsys: pytest.CaptureFixture[str]) -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 2 and result.output.count("Usage: medseg-bench [OPTIONS] COMMAND") == 1


@pytest.mark.parametrize(("no_color", "red"), [("1", False), ("", True)])
def test_error_lines_honour_no_color(home: Path, tmp_path: Path, no_color: str, red: bool) -> None:
    # click's secho ignores NO_COLOR (https://no-color.org): error lines stayed red, rich's output did not.
    result = CliRunner().invoke(app, ["status", "--task", "Task04_Hipocampus", "--results-dir",
                                      str(tmp_path)], color=True, env={"NO_COLOR": no_color})
    assert result.exit_code == 2
    assert ("\x1b[31m" in result.output) is red and "error: unknown task" in result.output
    assert ("\x1b[" in result.output) is red  # not even click's reset code at the end of the line


@pytest.mark.parametrize(("args", "message"), [
    (["validate", "Task04_Hippocampus", "--workers", "0"], "--workers must be from 1 to 1024, not 0"),
    (["plan", "Task04_Hippocampus", "--workers", "0"], "--workers must be from 1 to 1024, not 0"),
    (["evaluate", "--pred", ".", "--ref", ".", "--workers", "0"], "--workers must be from 1 to 1024, not 0"),
    (["sweep", "--task", "Task04_Hippocampus", "--workers", "-1"],
     "--workers must be from 0 to 1024, not -1"),
    # as many processes (or DataLoader workers) started as a typo asks
    (["validate", "Task04_Hippocampus", "--workers", "80000"], "--workers must be from 1 to 1024, not 80000"),
    (["plan", "Task04_Hippocampus", "--workers", "1025"], "--workers must be from 1 to 1024, not 1025"),
    (["evaluate", "--pred", ".", "--ref", ".", "--workers", "80000"],
     "--workers must be from 1 to 1024, not 80000"),
    (["sweep", "--task", "Task04_Hippocampus", "--workers", "80000"],
     "--workers must be from 0 to 1024, not 80000"),
    (["sweep", "--task", "Task04_Hippocampus", "--jobs", "80000"],
     "--jobs must be from 1 to 1024, not 80000"),
    (["report", "--seed", "-1"], "--seed must be at least 0, not -1"),
    (["fetch", "Task04_Hippocampus", "--timeout", "0"], "--timeout must be from 0.1 to 86400, not 0"),
])
def test_a_number_out_of_range_is_said_alike_by_every_command(home: Path, args: list[str],
                                                               message: str) -> None:
    # typer's min= said "Invalid value for '--workers': Input should be greater than or equal to 1" for some
    # commands, ours "--workers must be at least 1, got 0" or "..., not -1" for others.
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {message}"


@pytest.mark.parametrize("args", [
    ["report", "--task", ","], ["report", "--task", " , "],
    ["status", "--task", ","], ["sweep", "--task", ",", "--dry-run"],
    ["sweep", "--task", "Task04_Hippocampus", "--arch", ",", "--dry-run"],
    ["sweep", "--task", "Task04_Hippocampus", "--folds", ",", "--dry-run"],
    ["report", "--metrics", ","],
])
def test_a_list_option_of_commas_only_is_refused(home: Path, tmp_path: Path, args: list[str]) -> None:
    # report --task , reported every task; status --task , found "no runs of  here"; sweep --arch , said the
    # sweep "expands to no runs"
    result = runner.invoke(app, [*args, "--results-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    option = next(arg for arg in args if arg.startswith("--") and args[args.index(arg) + 1].strip(" ") == ",")
    assert result.output.startswith(f"error: {option} "), result.output
    assert result.output.rstrip().endswith(": no value in it; give one or more, comma-separated")
    assert len(result.output.strip().splitlines()) == 1


def _path_parameters(function: object) -> dict[str, str]:
    """A command's parameters that take paths (Path, Path | None, list[Path]): name -> `list` or `one`."""
    import typing

    found = {}
    for name, hint in typing.get_type_hints(function).items():
        kinds = set(typing.get_args(hint)) or {hint}  # Path | None: {Path, None}; list[Path]: {Path}
        if Path in kinds or list[Path] in kinds:
            found[name] = "list" if list in (hint, typing.get_origin(hint)) or list[Path] in kinds else "one"
    return found


@pytest.mark.parametrize("name", [name for name, _, _ in COMMANDS])
def test_a_tilde_in_any_path_option_of_any_command_is_the_home_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # bash leaves `--data-dir=~/data` and a quoted '~/res' as they are: fetch made a folder named `~` in the
    # current folder (where `fetch --source` and MEDSEG_BENCH_HOME expanded it), status read ./~/res
    import typer

    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    function = next(function for command, _, function in COMMANDS if command == name)
    group = typer.main.get_command(app)
    command = group.commands[name]  # type: ignore[attr-defined]
    paths = _path_parameters(function)
    args: list[str] = []
    for param in command.params:
        if param.name in paths:
            given = f"~/{param.name}"
            args += [f"{param.opts[0]}={given}"] if param.param_type_name == "option" else [given]
        elif param.required:
            args.append("Task04_Hippocampus")
    seen: dict[str, object] = {}
    command.callback = lambda **values: seen.update(values)
    group.main([name, *args], standalone_mode=False)
    for parameter, kind in paths.items():
        expected = tmp_path / "user" / parameter
        value = seen[parameter]
        assert (list(value) if kind == "list" else value) == ([expected] if kind == "list" else expected), (
            parameter, value)
    assert name == "list" or paths  # every command but `list` takes a path


@pytest.mark.parametrize(("args", "said"), [
    (["report", "--format", "mardown"], "unknown format 'mardown'; did you mean 'markdown'?"),
    (["report", "--group-by", "arc"], "cannot group by 'arc'; did you mean 'arch'?"),
    (["sweep", "--task", "Task04_Hippocampus", "--optimizer", "adamm", "--dry-run"],
     "unknown optimizer 'adamm'; did you mean 'adamw'?"),
    (["sweep", "--task", "Task04_Hippocampus", "--launcher", "slrum"],
     "unknown launcher 'slrum'; did you mean 'slurm'?"),
    (["evaluate", "--pred", ".", "--ref", ".", "--surface", "aera"],
     "unknown surface convention 'aera'; did you mean 'area'?"),
    (["evaluate", "--pred", ".", "--ref", ".", "--empty-policy", "penalise"],
     "unknown empty-mask policy 'penalise'; did you mean 'penalize'?"),
    (["evaluate", "--pred", ".", "--ref", ".", "--format", "jsn"],
     "unknown format 'jsn'; did you mean 'json'?"),
    (["sweep", "--task", "Task04_Hippocampus", "--dims", "3D", "--dry-run"],
     "unknown dims '3D'; did you mean '3d'?"),
])
def test_a_mistyped_choice_gets_a_did_you_mean_as_a_mistyped_name_does(home: Path, tmp_path: Path,
                                                                      args: list[str], said: str) -> None:
    # these listed their choices only, where an architecture, loss or task name got a did-you-mean
    result = runner.invoke(app, [*args, "--results-dir", str(tmp_path)] if args[0] == "report" else args)
    assert result.exit_code == 2, result.output
    assert result.output == f"error: {said}\n"
