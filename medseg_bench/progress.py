"""Sweep progress: a rich live display on a terminal, plain log lines otherwise (CI, SLURM logs); a step bar
on a terminal for the commands' longer loops (`step_bar`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape


@contextmanager
def step_bar(description: str, total: int, console: Console, enabled: bool) -> Iterator[Callable[[], None]]:
    """A transient rich bar of `total` steps on `console` where `enabled` (on a terminal), the block given the
    function that advances it one step; nothing at all where not: a rich Progress made with `disable=True`
    still printed an empty line as it stopped (rich 13.0), one per bar in a command's output."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True, console=console) as bar:
        task_id = bar.add_task(description, total=total)
        yield lambda: bar.advance(task_id)


class StdoutConsole(Console):
    """A rich Console on stdout whose closed pipe stops the command as SIGPIPE would (`signals.pipe_closed`),
    where rich's own `on_broken_pipe` raised SystemExit(1)."""

    def on_broken_pipe(self) -> None:
        from medseg_bench import signals

        self.quiet = True
        signals.pipe_closed()


class PlainReporter:
    """One line per event, flushed: for logs."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or StdoutConsole(highlight=False, soft_wrap=True)
        self.total = 0
        self.finished = 0
        self.started = 0  # runs started or skipped: two that start together (--jobs) get numbers of their own
        self.ran = 0  # finished runs that were executed (not skipped): the basis of the ETA
        self.failed = self.skipped = 0
        self.refused = 0  # failed before they started (`refuse`): no basis of the ETA
        self._numbered: set[str] = set()  # runs that have their number (a run started, then found busy: one)
        self._evaluating: set[str] = set()  # runs trained and evaluating, not ended: a stop counts them apart
        self._start = time.perf_counter()

    def say(self, message: str) -> None:
        self.console.print(message)

    def start(self, total: int) -> None:
        self.total = total
        self._start = time.perf_counter()

    def _number(self, run_id: str) -> None:
        if run_id not in self._numbered:
            self._numbered.add(run_id)
            self.started += 1

    def skip(self, run_id: str, reason: str) -> None:
        self._evaluating.discard(run_id)
        self.finished += 1
        self.skipped += 1
        self._number(run_id)
        self.say(f"[{self.finished}/{self.total}] {run_id}: skipped ({escape(reason)})")

    def refuse(self, run_id: str, error: str) -> None:
        """A run failed before it started: an interrupted run that cannot resume
        (`worker.refuse_unresumable`), said as a failed run is."""
        self.finished += 1
        self.refused += 1
        self._number(run_id)
        self.say(f"[{self.finished}/{self.total}] {run_id}: [red]failed[/red]: {escape(error)}")

    def run_start(self, run_id: str) -> None:
        self._number(run_id)
        self.say(f"[{self.started}/{self.total}] {run_id}: training")

    def epoch_end(self, run_id: str, epoch: int, epochs: int, train_loss: float, val_dice: float) -> None:
        self.say(f"  {run_id} epoch {epoch}/{epochs}  loss {train_loss:.4f}  val Dice {val_dice:.4f}")

    def evaluating(self, run_id: str) -> None:
        """`run_id` finished training and evaluates its held-out cases: stopped now, it is counted as stopped
        while evaluating."""
        self._evaluating.add(run_id)

    def eta_s(self) -> float | None:
        """Seconds left: elapsed time per executed run times the runs left (parallel jobs included)."""
        if not self.ran:
            return None
        return (time.perf_counter() - self._start) / self.ran * (self.total - self.finished)

    def run_end(self, run_id: str, summary: dict[str, Any] | None, error: str | None = None) -> None:
        self._evaluating.discard(run_id)
        self.finished += 1
        self.ran += 1
        self.failed += bool(error)
        eta = self.eta_s()
        left = f", ETA {eta / 60:.1f} min" if eta and self.finished < self.total else ""
        if error:
            # the error is text, not markup: a message's "[case ids]" would vanish as an unknown style
            self.say(f"[{self.finished}/{self.total}] {run_id}: [red]failed[/red]: {escape(error)}{left}")
        else:
            dice = (summary or {}).get("mean", {}).get("dice", float("nan"))
            self.say(f"[{self.finished}/{self.total}] {run_id}: done, mean Dice {dice:.4f}{left}")

    def close(self) -> None:
        elapsed = time.perf_counter() - self._start
        stopped = max(0, self.started - self.finished)  # they resume next time
        evaluating = min(stopped, len(self._evaluating))
        counts = {"trained": self.ran - self.failed, "failed": self.failed + self.refused,
                  "skipped": self.skipped, "stopped while training": stopped - evaluating,
                  "stopped while evaluating": evaluating,
                  "not reached": self.total - max(self.started, self.finished)}
        parts = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
        minutes = elapsed / 60
        runs = f"{self.total} run{'' if self.total == 1 else 's'}"
        self.say(f"sweep finished: {parts or 'nothing to do'} (of {runs}) in {minutes:.1f} min")


class LiveReporter(PlainReporter):
    """Overall runs with ETA, and each active run's epoch, loss and val Dice (several with --jobs), live."""

    def __init__(self, console: Console | None = None) -> None:
        super().__init__(console)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=self.console)
        self.progress.start()
        self.overall = self.progress.add_task("runs", total=0)
        self.active: dict[str, Any] = {}

    def say(self, message: str) -> None:
        self.progress.console.print(message)

    def start(self, total: int) -> None:
        super().start(total)
        self.progress.update(self.overall, total=total)

    def skip(self, run_id: str, reason: str) -> None:
        if run_id in self.active:  # started, then found held by another process
            self.progress.remove_task(self.active.pop(run_id))
        super().skip(run_id, reason)
        self.progress.advance(self.overall)

    def refuse(self, run_id: str, error: str) -> None:
        super().refuse(run_id, error)
        self.progress.advance(self.overall)

    def run_start(self, run_id: str) -> None:
        super().run_start(run_id)
        self.active[run_id] = self.progress.add_task(f"  {run_id}", total=None)

    def epoch_end(self, run_id: str, epoch: int, epochs: int, train_loss: float, val_dice: float) -> None:
        if run_id in self.active:
            self.progress.update(self.active[run_id], total=epochs, completed=epoch,
                                 description=f"  {run_id} loss {train_loss:.3f} val Dice {val_dice:.3f}")

    def evaluating(self, run_id: str) -> None:
        super().evaluating(run_id)
        if run_id in self.active:
            self.progress.update(self.active[run_id], description=f"  {run_id} evaluating")

    def run_end(self, run_id: str, summary: dict[str, Any] | None, error: str | None = None) -> None:
        if run_id in self.active:
            self.progress.remove_task(self.active.pop(run_id))
        super().run_end(run_id, summary, error)
        self.progress.advance(self.overall)

    def close(self) -> None:
        self.progress.stop()
        super().close()


def make_reporter() -> PlainReporter:
    return LiveReporter() if sys.stdout.isatty() else PlainReporter()
