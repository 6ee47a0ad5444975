"""`medseg-bench status` on runs submitted to SLURM: what squeue says of their jobs."""

from __future__ import annotations

import errno
import json
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg_bench.cli.app import app
from medseg_bench.files import write_json_atomic
from medseg_bench.run_folder import append_event
from medseg_bench.spec import spec_hash_of
from tests.conftest import fake_squeue

runner = CliRunner()


SPEC = {"task": "T", "dims": "3d", "arch": "unet", "loss": "dice_ce", "aug": "none"}
HASH = spec_hash_of(SPEC)  # a run id ends in its spec's hash (`status` lists no folder without a run's)


def _run(results: Path, name: str) -> Path:
    """The folder of an unfinished run, `T/<name>-HASH`, with the spec.json a run writes first."""
    folder = results / "T" / f"{name}-{HASH}"
    folder.mkdir(parents=True)
    write_json_atomic(folder / "spec.json", {"run_id": folder.name, **SPEC})
    return folder


def _queued(results: Path, name: str, job: str) -> Path:
    folder = _run(results, name)
    write_json_atomic(folder / "queued.json", {"job_id": job, "time": time.time()})
    return folder


def test_status_names_a_pending_jobs_reason_and_a_job_gone_without_starting_its_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "r"
    _queued(results, "a", "42_0")
    _queued(results, "b", "42_1")
    _queued(results, "c", "42_2")
    log = results / ".slurm" / "42_2" / "42_2_0_log.err"
    log.parent.mkdir(parents=True)
    log.write_text("ModuleNotFoundError: No module named 'medseg_bench'\n")
    fake_squeue(tmp_path, monkeypatch, ["42_0|PENDING|PartitionTimeLimit", "42_1|RUNNING|None",
                                        "7|PENDING|None"])
    result = runner.invoke(app, ["status", "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"queued   T/a-{HASH}  job 42_0 (PENDING: PartitionTimeLimit)" in lines  # cannot start: why
    assert f"queued   T/b-{HASH}  job 42_1 (RUNNING)" in lines
    # Cancelled while pending, or dead before its run began: it said `queued` for ever, with nothing to run it
    assert f"pending  T/c-{HASH}  job 42_2 left the queue without starting the run (its log: {log})" in lines
    assert lines[-1] == "3 runs: 1 pending, 2 queued"


def test_status_without_an_answer_from_squeue_says_so_and_keeps_queued(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "r"
    _queued(results, "a", "42_0")
    started = _queued(results, "b", "42_1")
    append_event(started, "start")  # started since: no longer queued, whatever squeue says
    append_event(started, "interrupted", reason="SIGTERM")
    fake_squeue(tmp_path, monkeypatch, None)
    result = runner.invoke(app, ["status", "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    assert ("warning: squeue failed: slurm_load_jobs error: Unable to contact slurm controller (connect "
            "failure): the SLURM state of queued runs is unknown") in result.output
    lines = result.output.splitlines()
    assert f"queued   T/a-{HASH}  job 42_0" in lines and f"pending  T/b-{HASH}  job 42_1" in lines
    assert lines[-1] == "2 runs: 1 pending, 1 queued"


def test_a_run_submitted_again_is_queued_and_says_it_resumes_or_retries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped with a checkpoint, or failed, then submitted again showed `partial`/`failed` with its new
    job pending: it is queued until the job starts it. One requeued by SLURM itself (its job preempted after
    the run started) is partial, its job pending again; a resubmitted run whose job left the queue unstarted
    is what it was before."""
    from medseg_bench.run_folder import write_status

    results = tmp_path / "r"
    stopped, failed, gone = (_run(results, name) for name in ("stopped", "failed", "gone"))
    for folder in (stopped, failed, gone):
        append_event(folder, "start")
        append_event(folder, "interrupted" if folder != failed else "failed")
    for folder in (stopped, gone):
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    write_status(failed, "failed", error="run failed: CUDA out of memory")
    time.sleep(0.01)  # submitted after those attempts
    for folder, job in ((stopped, "43_0"), (failed, "43_1"), (gone, "43_2")):
        write_json_atomic(folder / "queued.json", {"job_id": job, "time": time.time()})
    requeued = _queued(results, "requeued", "44_0")  # SLURM requeued the job after the run started
    append_event(requeued, "start")
    append_event(requeued, "interrupted")
    (requeued / "checkpoints").mkdir()
    (requeued / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    fake_squeue(tmp_path, monkeypatch, ["43_0|PENDING|Priority", "43_1|PENDING|Priority",
                                        "44_0|PENDING|BeginTime"])
    result = runner.invoke(app, ["status", "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"queued   T/stopped-{HASH}  job 43_0 (PENDING: Priority)  resumes from its checkpoint" in lines
    assert f"queued   T/failed-{HASH}  job 43_1 (PENDING: Priority)  retries a failed run" in lines
    assert f"partial  T/gone-{HASH}  job 43_2 left the queue without starting the run" in lines
    assert f"partial  T/requeued-{HASH}  job 44_0 (PENDING: BeginTime)" in lines
    assert lines[-1] == "4 runs: 2 partial, 2 queued"


@pytest.mark.parametrize("args", [
    ["status"], ["report"], ["sweep", "--task", "Task04_Hippocampus", "--dry-run"],
    ["sweep", "--task", "Task04_Hippocampus"],
])
@pytest.mark.parametrize("below", [False, True])
def test_a_results_dir_that_is_a_file_is_named_as_such(tmp_path: Path, args: list[str], below: bool) -> None:
    # A sweep said "results dir is not writable (File exists)", its dry run listed every run as pending and
    # exited 0, status and report said there were no runs.
    afile = tmp_path / "results"
    afile.write_text("not a folder")
    results = afile / "sub" if below else afile
    result = runner.invoke(app, [*args, "--results-dir", str(results)])
    assert result.exit_code == 6, result.output
    assert result.output == f"error: {results}: not a results dir ({afile} is a file, not a folder)\n"
    assert afile.read_text() == "not a folder"


@pytest.mark.parametrize("loop", [False, True])
def test_a_results_dir_that_is_a_broken_link_is_named_as_such(tmp_path: Path, loop: bool) -> None:
    # it was "a file, not a folder"
    results = tmp_path / "results"
    results.symlink_to(results if loop else tmp_path / "gone")
    gone = f"a link to {tmp_path / 'gone'}, which does not exist"
    why = "a link that leads back to itself" if loop else gone
    result = runner.invoke(app, ["status", "--results-dir", str(results)])
    assert result.exit_code == 6, result.output
    assert result.output == f"error: {results}: not a results dir ({results} is {why}, not a folder)\n"


def test_status_takes_several_tasks_and_names_a_results_dir_that_is_not_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # --task took one name (`A,B` was an unknown task), as report's and sweep's take several; a results dir
    # that does not exist said "no runs here", where the default is a folder of the current one.
    from tests.conftest import fake_finished_run

    results = tmp_path / "results"
    for task in ("T", "U", "V"):
        fake_finished_run(results, 0, task)
    result = runner.invoke(app, ["status", "--results-dir", str(results), "--task", "T,U", "-q"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("2 runs: 2 done")
    repeated = runner.invoke(app, ["status", "--results-dir", str(results), "--task", "T", "--task", "U",
                                   "-q"])
    assert repeated.output == result.output  # a repeated --task kept its last value alone
    monkeypatch.chdir(tmp_path / "results" / "T")
    missing = runner.invoke(app, ["status"])
    assert missing.exit_code == 6
    assert missing.output.strip() == ("error: results: no such results dir (the default, results, is a "
                                      "folder of the current one); pass the sweep's --results-dir")



def test_names_in_a_results_folder_cannot_forge_lines_or_send_escape_sequences(tmp_path: Path) -> None:
    # someone else's results folder: its names were printed as they were (a window title set, a line forged)
    from tests.conftest import fake_finished_run

    task = "T\x1b]0;owned\x07\ndone     forged"
    fake_finished_run(tmp_path / "results", 0, task)
    result = runner.invoke(app, ["status", "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    lines = result.output.splitlines()
    assert len(lines) == 2 and lines[0].startswith("done     T\\x1b]0;owned\\x07\\ndone     forged/3d-unet")


def test_status_reads_each_finished_run_once_for_its_line_and_the_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # status checked every run whole (its metrics.csv rows included), then rebuilt the index, which read and
    # checked every run again: 22 s for 1000 runs, half of it the second time.
    import pandas as pd

    from medseg_bench import finished
    from medseg_bench import results as results_module
    from medseg_bench.results import INDEX_NAME
    from tests.conftest import fake_finished_run

    results = tmp_path / "r"
    for seed in range(3):
        fake_finished_run(results, seed)
    damaged = sorted((results / "T").iterdir())[2]
    (damaged / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\na,1,abc,False,False\n")
    reads: list[str] = []
    real = finished.read_finished_run

    def counted(folder: Path) -> object:
        reads.append(folder.name)
        return real(folder)

    for module in (finished, results_module):
        monkeypatch.setattr(module, "read_finished_run", counted)
    result = runner.invoke(app, ["status", "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    assert "3 runs: 1 damaged, 2 done" in result.output
    assert sorted(reads) == sorted(p.name for p in (results / "T").iterdir())
    assert set(pd.read_parquet(results / INDEX_NAME)["run_id"]) == {p.name for p in (results / "T").iterdir()
                                                                  if p != damaged}


def test_a_run_changed_since_it_was_read_is_read_again(tmp_path: Path) -> None:
    # What status read of a run is used for the index only where none of the files read has changed since (a
    # run damaged, or finished again, between its line and the index).
    from medseg_bench.errors import DamagedRunError
    from medseg_bench.files import write_json_atomic
    from medseg_bench.finished import FinishedReads
    from tests.conftest import dice_means, fake_finished_run, finished_summary

    fake_finished_run(tmp_path, 0)
    (folder,) = (tmp_path / "T").iterdir()
    reads = FinishedReads()
    first = reads.read(folder)
    assert reads.read(folder) is first
    write_json_atomic(folder / "summary.json", finished_summary(
        run_id=folder.name, num_cases=2, cost={"params": 7}, per_label_dice=dice_means(folder)))
    assert reads.read(folder)[1]["cost"]["params"] == 7
    (folder / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\na,1,0.5,False,False\n")
    with pytest.raises(DamagedRunError, match="metrics.csv: has 1 row, summary.json counts 2"):
        reads.read(folder)
    (folder / "events.jsonl").unlink()
    with pytest.raises(DamagedRunError, match="metrics.csv: has 1 row,"):
        reads.read(folder)  # read again (a file is gone), and damaged still


def test_one_run_is_counted_as_one_run(tmp_path: Path) -> None:
    # it said "1 runs: 1 done" (`sweep --dry-run` says "1 run: 1 pending")
    from tests.conftest import fake_finished_run

    fake_finished_run(tmp_path / "results", 0, "T")
    result = runner.invoke(app, ["status", "--results-dir", str(tmp_path / "results"), "-q"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "1 run: 1 done"


@pytest.mark.parametrize("ended", [None, "interrupted"])
def test_a_run_whose_last_attempt_ended_unrecorded_says_its_process_was_killed(
        tmp_path: Path, ended: str | None) -> None:
    # A sequential sweep killed -9 (or by the out-of-memory killer) mid-run left `running` and a `start`
    # event: status showed it `partial` like any interrupted run, with no word of why it stopped.
    from medseg_bench.run_folder import write_status

    folder = _run(tmp_path, "run-a")
    write_status(folder, "running")
    append_event(folder, "start")
    append_event(folder, "interrupted", reason="SIGINT")
    append_event(folder, "resume")
    if ended:
        append_event(folder, ended, reason="SIGTERM")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    result = runner.invoke(app, ["status", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    killed = (f"partial  T/run-a-{HASH}  its last attempt ended without a record: its process was killed "
              "(kill -9, the out-of-memory killer: see `dmesg`, or its SLURM job's end)")
    assert result.output.splitlines()[0] == (killed if ended is None else f"partial  T/run-a-{HASH}")


def test_a_stray_folder_holding_a_spec_json_is_no_run_and_is_named(tmp_path: Path) -> None:
    # `mkdir junk2 && echo '{}' > junk2/spec.json` beside finished runs: status listed `pending  T/junk2` and
    # counted 3 runs, where report and `sweep --dry-run` saw none; a finished run's spec.json copied into
    # another folder was a pending run too. An unfinished run's spec.json, of this version or an older one
    # (keys added since absent), is a run's as before.
    from medseg_bench.run_folder import write_status
    from medseg_bench.spec import RunSpec
    from tests.conftest import fake_finished_run

    results = tmp_path / "r"
    for seed in range(2):
        fake_finished_run(results, seed)
    finished = sorted((results / "T").iterdir())
    junk, copied = results / "T" / "junk2", results / "T" / "copied"
    for folder in (junk, copied):
        folder.mkdir()
    (junk / "spec.json").write_text("{}\n")
    (copied / "spec.json").write_bytes((finished[0] / "spec.json").read_bytes())
    older = _run(results, "older")  # its spec lacks every key with a default, as an older version's
    write_status(older, "running")
    append_event(older, "start")
    append_event(older, "interrupted", reason="SIGTERM")
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", seed=7)
    starting = results / "T" / spec.run_id  # a `--jobs` sweep writes its spec.json as its worker starts
    starting.mkdir()
    write_json_atomic(starting / "spec.json", {"run_id": spec.run_id, **spec.to_dict()})
    result = runner.invoke(app, ["status", "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert (f"warning: {junk / 'spec.json'}: not a run's spec (lacks task, dims, arch, loss, aug): not "
            "counted as a run") in lines
    copied_id = json.dumps(finished[0].name)
    assert (f"warning: {copied / 'spec.json'}: not a run's spec (its run_id {copied_id} is not its folder's "
            "name): not counted as a run") in lines
    assert not any("junk2" in line or "copied" in line for line in lines if not line.startswith("warning: "))
    assert f"pending  T/older-{HASH}" in lines and f"pending  T/{spec.run_id}" in lines
    assert lines[-1] == "4 runs: 2 done, 2 pending"
    (results / "index.parquet").unlink()
    for folder in (*finished, older, starting):
        shutil.rmtree(folder)
    alone = runner.invoke(app, ["status", "--results-dir", str(results)])
    assert alone.exit_code == 6, alone.output  # as for no runs at all
    assert alone.output.splitlines()[-1] == f"error: {results}: no runs here"


@pytest.mark.parametrize("error", [
    OSError(errno.EROFS, "Failed to open local file '{tmp}'. Detail: [errno 30] Read-only file system"),
    OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device"),
])
def test_status_says_when_it_cannot_rebuild_the_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError) -> None:
    # A read-only results dir or a full disk: status said nothing (`except OSError: pass`) and left the index
    # as it was, where a sweep warns. Its answer and exit code stand; the index is untouched, no temp is left.
    import pandas as pd

    from medseg_bench.results import INDEX_NAME
    from tests.conftest import fake_finished_run

    results = tmp_path / "r"
    fake_finished_run(results, 0)
    assert runner.invoke(app, ["status", "--results-dir", str(results)]).exit_code == 0
    index = results / INDEX_NAME
    before = index.read_bytes()
    fake_finished_run(results, 1)

    def failing(frame: pd.DataFrame, path: Path, **kwargs: object) -> None:
        if error.errno == errno.ENOSPC:
            Path(path).write_bytes(b"PAR1 half")  # a full disk stops it part way
        raise OSError(error.errno, str(error.strerror).format(tmp=path))  # as pyarrow words it

    monkeypatch.setattr(pd.DataFrame, "to_parquet", failing)
    result = runner.invoke(app, ["status", "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    why = "Read-only file system" if error.errno == errno.EROFS else "No space left on device"
    lines = result.output.splitlines()
    assert lines[-1] == f"warning: {index}: index not rebuilt ({why})", result.output
    assert lines[-2] == "2 runs: 2 done"
    assert index.read_bytes() == before
    assert sorted(p.name for p in results.iterdir()) == ["T", INDEX_NAME]
