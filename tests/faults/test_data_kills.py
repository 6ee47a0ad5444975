"""Kill -9 while the cache is built and while an archive is extracted: rerun, and the result is the one an
uninterrupted command gives; nothing half-written is read or marked complete, and nothing is left over."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from medseg_bench.data.fetch import MARKER
from tests.conftest import copy_subset, write_image
from tests.faults.conftest import (
    TASK,
    Ledger,
    check_done_once,
    run_cli,
    sweep_argv,
    wait_for_no_processes,
)

pytestmark = pytest.mark.faults
CACHE_CASES = 40
# The sweep after the kills: one tiny run; 20 folds keep its held-out fold (what it evaluates) at two cases.
QUICK = ("--epochs", "1", "--iters-per-epoch", "1", "--num-folds", "20")


def _kill_when(process: subprocess.Popen[str], ready: Callable[[], bool], timeout_s: float = 300) -> bool:
    """SIGKILL the process (not its children: `kill -9 PID`) once `ready()`; False if it ended first."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if ready():
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return True
        if time.monotonic() > deadline:
            raise AssertionError("the moment to kill never came")
        time.sleep(0.002)
    return False


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".part", ".partial"))]


# ---------------------------------------------------------------------------------------------- the cache


def _cache_entries(cache: Path) -> list[Path]:
    """Finished cases (their properties JSON is written last)."""
    return [p for p in cache.glob("*.json") if p.name != "complete.json"] if cache.is_dir() else []


def _check_nothing_half_written(root: Path) -> None:
    """Every file under its final name is whole: arrays load to their full size, JSON parses, and a finished
    case has both arrays."""
    for path in root.rglob("*.npy"):
        if not path.name.startswith("."):
            np.load(path)  # raises on a truncated array
    for path in root.rglob("*.json"):
        if not path.name.startswith("."):
            json.loads(path.read_text())
    for entry in _cache_entries_all(root):
        case = entry.name[: -len(".json")]
        assert (entry.parent / f"{case}.img.npy").is_file() and (entry.parent / f"{case}.seg.npy").is_file()


def _cache_entries_all(root: Path) -> list[Path]:
    return [p for d in root.iterdir() if d.is_dir() for p in _cache_entries(d)] if root.is_dir() else []


def _canonical_cache(root: Path, home: Path) -> dict[str, object]:
    """The preprocessed folder as comparable values: arrays, and JSON with the data home's path replaced."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.suffix == ".npy":
            out[name] = np.load(path)
        elif path.suffix == ".json":
            out[name] = json.loads(path.read_text().replace(str(home), "HOME"))
        elif path.is_file():
            out[name] = path.read_bytes()
    return out


def test_kill_9_while_building_the_cache_then_rerun(shared_task: Path, tmp_path: Path, ledger: Ledger,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    source = copy_subset(shared_task, tmp_path / "src" / TASK, CACHE_CASES)
    homes = {name: tmp_path / name for name in ("reference", "killed")}
    for home in homes.values():
        fetched = run_cli_in(home, ["fetch", TASK, "--source", str(source)])
        assert fetched.returncode == 0, fetched.stderr
    # The reference: the same cache built without interruption (what the sweep calls, timed).
    code = ("import time; from medseg_bench.data.catalog import get_task; "
            "from medseg_bench.settings import get_settings; "
            "from medseg_bench.data.preprocess import prepare_task; start = time.perf_counter(); "
            f"prepare_task(get_task({TASK!r}), get_settings().data_dir, 20); "
            "print(time.perf_counter() - start)")
    built = run_cli_in(homes["reference"], [code], python=True)
    assert built.returncode == 0, built.stderr
    build_s = float(built.stdout.split()[-1])

    home = homes["killed"]
    monkeypatch.setenv("MEDSEG_BENCH_HOME", str(home))
    preprocessed = home / "data" / "preprocessed" / TASK
    results = tmp_path / "results"
    rng = random.Random(20261126)
    # First kill: a seeded moment early in the build (fingerprint, plan); then at seeded counts of finished
    # cases, each plus a seeded delay of up to 30 ms, so that kills land while a case's files are written.
    targets = sorted(rng.sample(range(1, CACHE_CASES - 2), 4))
    kills, temps_seen = 0, 0
    for attempt, target in enumerate([0, *targets]):
        log = tmp_path / f"attempt{attempt}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(sweep_argv(results, *QUICK), stdout=out, stderr=subprocess.STDOUT,
                                       text=True, env=_env(), start_new_session=True)
        early_s = rng.uniform(0.0, 0.3) * build_s
        jitter_s = rng.uniform(0.0, 0.03)
        started: list[float] = []

        def ready(target: int = target, early_s: float = early_s, jitter_s: float = jitter_s,
                  log: Path = log, started: list[float] = started) -> bool:
            if not started:
                if "preparing" not in log.read_text():
                    return False
                started.append(time.monotonic())
            if target == 0:
                return time.monotonic() - started[0] >= early_s
            if len(started) == 1:
                if sum(len(_cache_entries(d)) for d in _subdirs(preprocessed)) < target:
                    return False
                started.append(time.monotonic())
            return time.monotonic() - started[1] >= jitter_s

        killed = _kill_when(process, ready)
        left = wait_for_no_processes(process.pid, timeout_s=5)
        assert left == [], f"processes outlived the killed sweep: {left}"
        if not killed or any(d.joinpath("complete.json").is_file() for d in _subdirs(preprocessed)):
            break  # the build finished before the kill: nothing left to interrupt
        kills += 1
        ledger.injected += 1
        _check_nothing_half_written(preprocessed)
        temps_seen += len([p for p in preprocessed.rglob(".*.tmp")])
    assert kills >= 3, "the kills should land while the cache is built"

    finished = {p: p.stat() for d in _subdirs(preprocessed) for p in d.iterdir()
                if not p.name.startswith(".") and _is_finished_case_file(p)}
    assert finished, "some cases were cached before the last kill"
    final = run_cli(sweep_argv(results, *QUICK))
    assert final.returncode == 0, final.stdout + final.stderr
    check_done_once(results, 1, ledger)
    for path, before in finished.items():  # finished cases were kept, not redone
        after = path.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), path.name
    assert _leftovers(home) == [], f"{temps_seen} temp files seen after kills"
    reference = _canonical_cache(homes["reference"] / "data" / "preprocessed" / TASK, homes["reference"])
    rebuilt = _canonical_cache(preprocessed, home)
    assert sorted(rebuilt) == sorted(reference)
    for name, value in reference.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(rebuilt[name], value), name  # type: ignore[arg-type]
        else:
            assert rebuilt[name] == value, name


def _subdirs(folder: Path) -> list[Path]:
    return [d for d in folder.iterdir() if d.is_dir()] if folder.is_dir() else []


def _is_finished_case_file(path: Path) -> bool:
    case = path.name.split(".")[0]
    return (path.parent / f"{case}.json").is_file() and path.name != "complete.json"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def run_cli_in(home: Path, args: list[str], python: bool = False) -> subprocess.CompletedProcess[str]:
    head = [sys.executable, "-c"] if python else [sys.executable, "-m", "medseg_bench"]
    env = {**_env(), "MEDSEG_BENCH_HOME": str(home)}
    env.pop("MEDSEG_BENCH_MIRROR", None)
    return subprocess.run([*head, *args], capture_output=True, text=True, env=env, timeout=600)


# ----------------------------------------------------------------------------------------- the archive

ARCHIVE_CASES, ARCHIVE_SIDE = 100, 48  # 100 cases of 48^3 float32 noise: 55 MB that no compressor shrinks


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """A Hippocampus-like MSD task as an uncompressed tar of incompressible NIfTI files: (tar, md5, files)."""
    root = tmp_path_factory.mktemp("archive")
    folder = root / TASK
    rng = np.random.default_rng(7)
    side = ARCHIVE_SIDE
    seg = np.zeros((side, side, side), np.uint8)
    seg[side // 4: side // 2, side // 4: side // 2, side // 4: side // 2] = 1
    seg[side // 2: 3 * side // 4, side // 4: side // 2, side // 4: side // 2] = 2
    training = []
    for i in range(ARCHIVE_CASES):
        name = f"hippocampus_{i:03d}.nii"
        write_image(folder / "imagesTr" / name, rng.normal(100, 20, seg.shape).astype(np.float32))
        write_image(folder / "labelsTr" / name, seg)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": TASK, "tensorImageSize": "3D", "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
            "numTraining": ARCHIVE_CASES, "numTest": 0, "training": training, "test": []}
    (folder / "dataset.json").write_text(json.dumps(meta))
    archive = root / f"{TASK}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=TASK)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    return archive, md5, 2 * ARCHIVE_CASES + 1


class _Archive(http.server.BaseHTTPRequestHandler):
    payload = b""
    requests = 0

    def do_GET(self) -> None:  # noqa: N802
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def archive_server(big_archive: tuple[Path, str, int]) -> Iterator[tuple[str, type[_Archive]]]:
    handler = type("Handler", (_Archive,), {"payload": big_archive[0].read_bytes(), "requests": 0})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{TASK}.tar", handler
    httpd.shutdown()
    httpd.server_close()


def _extracted(staging: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(staging)) if staging.is_dir() else 0


@pytest.mark.parametrize("origin", ["local tar", "download"])
def test_kill_9_while_extracting_then_rerun(big_archive: tuple[Path, str, int], tmp_path: Path,
                                            ledger: Ledger, request: pytest.FixtureRequest,
                                            origin: str) -> None:
    archive, md5, members = big_archive
    if origin == "download":
        source, server = request.getfixturevalue("archive_server")
    else:
        source, server = str(archive), None
    home = tmp_path / "home"
    fetch = ["fetch", TASK, "--source", source, "--md5", md5]
    reference_dir, data = tmp_path / "reference", tmp_path / "data"
    uninterrupted = run_cli_in(home, [*fetch, "--data-dir", str(reference_dir)])
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    requests_before = server.requests if server else 0

    staging = data / f".{TASK}.partial"
    rng = random.Random(20261127)
    mid_extraction = 0
    for target in sorted(rng.sample(range(1, members), 6)):  # files extracted when the kill lands
        env = {**_env(), "MEDSEG_BENCH_HOME": str(home)}
        process = subprocess.Popen([sys.executable, "-m", "medseg_bench", *fetch, "--data-dir", str(data)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                   start_new_session=True)
        killed = _kill_when(process, lambda target=target: _extracted(staging) >= target)
        if not killed:
            continue
        ledger.injected += 1
        mid_extraction += _extracted(staging) < members
        # Nothing half-extracted is in place, let alone marked complete: the task folder does not exist yet.
        assert not (data / TASK).exists()
    assert mid_extraction >= 3, "the kills should land while the archive is extracted"

    again = run_cli_in(home, [*fetch, "--data-dir", str(data)])
    assert again.returncode == 0, again.stderr
    assert f"{TASK}: {ARCHIVE_CASES} usable training cases" in again.stdout
    if server:  # the archive was downloaded once and verified: the reruns extracted it again
        assert server.requests - requests_before == 1
    assert _leftovers(data) == [] and not staging.exists()
    expected, got = _files(reference_dir / TASK), _files(data / TASK)
    assert sorted(got) == sorted(expected)
    assert {k: v for k, v in got.items() if k != MARKER} == {k: v for k, v in expected.items() if k != MARKER}
    marker, reference_marker = (json.loads(d[MARKER]) for d in (got, expected))
    del marker["fetched_at"], reference_marker["fetched_at"]
    assert marker == reference_marker
    assert sorted(p.name for p in data.iterdir()) == sorted(
        [f".{TASK}.fetch.lock", TASK, *([".downloads"] if server else [])])
