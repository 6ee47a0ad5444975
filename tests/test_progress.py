"""Progress: plain lines with counts and ETA for logs; the live display tracks several active runs."""

from __future__ import annotations

import io

from rich.console import Console

from medseg_bench.progress import LiveReporter, PlainReporter


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, highlight=False, soft_wrap=True, width=200), out


def test_plain_lines_with_counts_and_eta() -> None:
    console, out = _console()
    reporter = PlainReporter(console)
    reporter.start(4)
    reporter.skip("r0", "already done")
    reporter.run_start("r1")
    reporter.epoch_end("r1", 1, 2, 0.5, 0.25)
    reporter.run_end("r1", {"mean": {"dice": 0.8}})
    reporter.run_end("r2", None, "RunError: boom")
    reporter.run_end("r3", {"mean": {"dice": 0.7}})
    reporter.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/4] r0: skipped (already done)"
    assert lines[1] == "[2/4] r1: training"
    assert lines[2] == "  r1 epoch 1/2  loss 0.5000  val Dice 0.2500"
    assert lines[3].startswith("[2/4] r1: done, mean Dice 0.8000, ETA ")
    assert lines[4].startswith("[3/4] r2: failed: RunError: boom, ETA ")
    assert lines[5] == "[4/4] r3: done, mean Dice 0.7000"  # nothing left: no ETA
    assert lines[6].startswith("sweep finished: 2 trained, 1 failed, 1 skipped (of 4 runs) in ")


def test_a_sweep_of_one_run_says_run() -> None:
    # "sweep finished: 1 trained (of 1 runs)"
    console, out = _console()
    reporter = PlainReporter(console)
    reporter.start(1)
    reporter.run_start("r0")
    reporter.run_end("r0", {"mean": {"dice": 0.8}})
    reporter.close()
    assert out.getvalue().splitlines()[-1].startswith("sweep finished: 1 trained (of 1 run) in ")


def test_a_run_refused_before_it_started_is_said_failed_and_no_basis_of_the_eta() -> None:
    # an interrupted run whose plan changed since it started fails before the cache is built
    console, out = _console()
    reporter = PlainReporter(console)
    reporter.start(3)
    reporter.refuse("r0", "setup.json: the run started with patch 40x56x40")
    reporter.run_start("r1")
    reporter.run_end("r1", {"mean": {"dice": 0.8}})
    reporter.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/3] r0: failed: setup.json: the run started with patch 40x56x40"  # not "training"
    assert lines[1] == "[2/3] r1: training"
    assert reporter.ran == 1  # the ETA: r1's time for each run left
    assert lines[-1].startswith("sweep finished: 1 trained, 1 failed, 1 not reached (of 3 runs) in ")


def test_a_sweep_stopped_mid_run_counts_that_run_apart_from_those_not_reached() -> None:
    # The run a Ctrl-C stopped was counted "not reached" with those never started.
    console, out = _console()
    reporter = PlainReporter(console)
    reporter.start(3)
    reporter.run_start("r0")
    reporter.run_end("r0", {"mean": {"dice": 0.8}})
    reporter.run_start("r1")
    reporter.close()
    assert out.getvalue().splitlines()[-1].startswith(
        "sweep finished: 1 trained, 1 stopped while training, 1 not reached (of 3 runs) in ")


def test_a_stopped_sweep_counts_runs_stopped_while_evaluating_apart_from_those_training() -> None:
    # A run stopped after its training, while it predicted its held-out cases, was "stopped while training".
    console, out = _console()
    reporter = PlainReporter(console)
    reporter.start(4)
    reporter.run_start("r0")
    reporter.evaluating("r0")
    reporter.run_end("r0", {"mean": {"dice": 0.8}})  # evaluated, then done: trained
    reporter.run_start("r1")
    reporter.evaluating("r1")
    reporter.run_start("r2")
    reporter.close()
    assert out.getvalue().splitlines()[-1].startswith(
        "sweep finished: 1 trained, 1 stopped while training, 1 stopped while evaluating, 1 not reached "
        "(of 4 runs) in ")


def test_runs_that_start_together_get_numbers_of_their_own() -> None:
    console, out = _console()
    reporter = PlainReporter(console)
    reporter.start(3)
    reporter.skip("r0", "already done")
    reporter.run_start("r1")  # --jobs 2: two runs start before either ends
    reporter.run_start("r2")
    assert out.getvalue().splitlines()[1:] == ["[2/3] r1: training", "[3/3] r2: training"]


def test_a_run_found_busy_after_its_start_keeps_its_number() -> None:
    # Once: "[3/2] s1: training" after s0 was started, then skipped as held by another sweep.
    console, out = _console()
    reporter = PlainReporter(console)
    reporter.start(2)
    reporter.run_start("s0")
    reporter.skip("s0", "running in another process")
    reporter.run_start("s1")
    reporter.run_end("s1", {"mean": {"dice": 0.5}})
    reporter.close()
    lines = out.getvalue().splitlines()
    assert lines[2] == "[2/2] s1: training"
    assert lines[-1].startswith("sweep finished: 1 trained, 1 skipped (of 2 runs) in ")


def test_live_display_tracks_parallel_runs() -> None:
    console, out = _console()
    reporter = LiveReporter(console)
    reporter.start(3)
    reporter.run_start("a")
    reporter.run_start("b")
    reporter.epoch_end("b", 1, 3, 0.9, 0.1)
    assert set(reporter.active) == {"a", "b"}
    task = next(t for t in reporter.progress.tasks if t.id == reporter.active["b"])
    assert (task.completed, task.total) == (1, 3) and "val Dice 0.100" in task.description
    reporter.run_end("a", {"mean": {"dice": 0.5}})
    assert set(reporter.active) == {"b"}
    reporter.run_end("b", None, "boom")
    reporter.refuse("c", "[changed] plan")  # refused before it started: counted, never shown as active
    assert reporter.active == {}
    reporter.close()
    overall = next(t for t in reporter.progress.tasks if t.id == reporter.overall)
    assert overall.completed == 3 and "b: failed: boom" in out.getvalue()
    assert "c: failed: [changed] plan" in out.getvalue()


def test_messages_are_text_not_markup() -> None:
    # an error naming "[case ids]" or a "[bold]" in a path keeps its brackets
    console, out = _console()
    reporter = PlainReporter(console)
    reporter.start(2)
    reporter.skip("r0", "held by [pid 12]")
    error = 'splits.json: not an object with "train" and "val" [case ids] in /x/[bold]/y'
    reporter.run_end("r1", None, error)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/2] r0: skipped (held by [pid 12])"
    assert lines[1] == f"[2/2] r1: failed: {error}"


def test_a_step_bar_off_a_terminal_prints_nothing() -> None:
    # a rich Progress made with disable=True printed an empty line as it stopped (rich 13.0): `plan`'s error
    # came after an empty line, a sweep's output held one per cache bar
    from medseg_bench.progress import step_bar

    out = io.StringIO()
    console = Console(file=out)
    with step_bar("validating", 3, console, console.is_terminal) as advance:
        for _ in range(3):
            advance()
    assert out.getvalue() == ""


def test_a_step_bar_on_a_terminal_is_drawn() -> None:
    from medseg_bench.progress import step_bar

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80)
    with step_bar("validating", 4, console, console.is_terminal) as advance:
        advance()
    assert "validating" in out.getvalue()
