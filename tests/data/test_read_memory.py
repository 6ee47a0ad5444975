"""The memory of the stages that read every case before the cache (validation, the fingerprint): sized from
the headers, a case that cannot be read even alone named before any is read, fewer cases at once where only
that many fit."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medseg_bench.checks import MemoryLimit
from medseg_bench.data import fingerprint as fingerprint_module
from medseg_bench.data import validate
from medseg_bench.data.catalog import get_task
from medseg_bench.data.fingerprint import fingerprint
from medseg_bench.data.msd import Case, training_cases
from medseg_bench.data.preprocess_memory import WORKER_BYTES
from medseg_bench.data.read_memory import (
    FINGERPRINT,
    VALIDATION,
    StoredCase,
    least_read_bytes,
    read_bytes,
    read_problem,
    reads_at_once,
    stored_case,
    stored_cases,
)
from medseg_bench.data.validate import validate_folder
from medseg_bench.errors import DataError
from tests.conftest import make_synthetic_task, write_image, write_task_file
from tests.data.test_nifti import nifti_bytes

MIB, GIB = 2**20, 2**30
JOB = "the container's or job's memory limit"


def _metaimage(path: Path, size_xyz: tuple[int, ...], element: str, channels: int = 1) -> Path:
    """A MetaImage header whose data file is empty: only the header can be read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / f"{path.stem}.raw").write_bytes(b"")
    components = f"ElementNumberOfChannels = {channels}\n" if channels > 1 else ""
    path.write_text(f"ObjectType = Image\nNDims = {len(size_xyz)}\nDimSize = {' '.join(map(str, size_xyz))}\n"
                    f"ElementSpacing = {' '.join(['1'] * len(size_xyz))}\n{components}"
                    f"ElementType = {element}\nElementDataFile = {path.stem}.raw\n")
    return path


def test_a_case_is_sized_from_its_headers_without_reading_a_voxel(tmp_path: Path) -> None:
    image = _metaimage(tmp_path / "image.mhd", (300, 200, 100), "MET_SHORT")
    label = _metaimage(tmp_path / "label.mhd", (300, 200, 100), "MET_UCHAR")
    assert stored_case(Case("a", image, label)) == StoredCase(image, (100, 200, 300), 1, 2, 6_000_000, 1)
    four = tmp_path / "four.nii.gz"
    write_image(four, np.zeros((3, 4, 5, 6), np.float64))  # channels along a fourth axis, as MSD's
    vector = _metaimage(tmp_path / "rgb.mhd", (6, 5, 4), "MET_FLOAT", channels=3)
    nifti = tmp_path / "label.nii.gz"
    write_image(nifti, np.zeros((4, 5, 6), np.int16))
    assert stored_case(Case("b", four, nifti)) == StoredCase(four, (4, 5, 6), 3, 8, 120, 2)
    assert stored_case(Case("c", vector, nifti)) == StoredCase(vector, (4, 5, 6), 3, 4, 120, 2)
    missing = Case("d", tmp_path / "none.nii.gz", nifti)
    assert stored_case(missing) is None  # validation names it; nothing to size
    assert stored_cases([missing, Case("b", four, nifti)]) == [stored_case(Case("b", four, nifti))]


def _scaled(path: Path, slope: float, inter: float) -> Path:
    """A copy of the uncompressed NIfTI-1 `path` whose header scales its values (`scl_slope`, `scl_inter`)."""
    raw = bytearray(path.read_bytes())
    raw[112:120] = struct.pack("<2f", slope, inter)
    copy = path.with_name(f"scaled_{slope:g}_{inter:g}.nii")
    copy.write_bytes(bytes(raw))
    return copy


def test_a_nifti_header_is_read_as_itk_reads_it_without_itk(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Through ITK, the 400 headers of Task04_Hippocampus's 200 cases took 0.45 s before its validation (2.1 s
    in all, 1.5 before the headers were read first): a plain NIfTI's are read here, what ITK would say."""
    import SimpleITK as sitk

    from medseg_bench.data import io, read_memory

    files = []
    for name, array in (("int16.nii.gz", np.zeros((4, 5, 6), np.int16)),
                        ("float64.nii", np.zeros((4, 5, 6), np.float64)),
                        ("uint8.nii.gz", np.zeros((7, 3, 2), np.uint8)),
                        ("float32_4d.nii.gz", np.zeros((3, 4, 5, 6), np.float32)),
                        ("uint16_4d.nii", np.zeros((2, 4, 5, 6), np.uint16))):
        write_image(tmp_path / name, array)
        files.append(tmp_path / name)
    (tmp_path / "big_endian.nii").write_bytes(nifti_bytes(1, ">"))
    files.append(tmp_path / "big_endian.nii")
    for path in files:
        geometry, channels, value_bytes = io.read_geometry_and_type(path)
        assert read_memory._nifti_shape_and_type(path, 2**40) == (tuple(reversed(geometry.size)), channels,
                                                            value_bytes), path
    # what ITK reads otherwise than the header stores it: through ITK
    one_slice = tmp_path / "one_slice.nii.gz"  # an axis of one voxel, which ITK drops
    write_image(one_slice, np.zeros((1, 5, 6), np.int16))
    rgb = tmp_path / "rgb.nii"  # three values per voxel
    sitk.WriteImage(sitk.Image([6, 5, 4], sitk.sitkVectorUInt8, 3), str(rgb))
    scaled = [_scaled(tmp_path / "uint16_4d.nii", *scale) for scale in ((2.0, 0.0), (1.0, -1024.0),
                                                                        (0.0, 5.0))]  # read as float
    beside = tmp_path / "int16.nii"  # ITK reads it for int16.nii.gz
    write_image(beside, np.zeros((9, 9, 9), np.float64))
    (tmp_path / "nifti2.nii").write_bytes(nifti_bytes(2, "<"))  # which ITK does not read
    for path in [one_slice, rgb, *scaled, tmp_path / "int16.nii.gz", tmp_path / "nifti2.nii",
                 tmp_path / "no such.nii.gz"]:
        assert read_memory._nifti_shape_and_type(path, 2**40) is None, path
    # more voxel bytes than an image may hold (`nifti.too_large`): ITK's read refuses it
    assert read_memory._nifti_shape_and_type(tmp_path / "uint16_4d.nii", 2 * 120 * 2 - 1) is None
    assert io.read_geometry_and_type(scaled[0])[2] == 4  # 32-bit float
    assert stored_case(Case("s", scaled[0], tmp_path / "uint8.nii.gz")) == StoredCase(
        scaled[0], (4, 5, 6), 2, 4, 42, 1)
    # a case of plain NIfTI files is sized without ITK
    monkeypatch.setattr(read_memory, "read_geometry_and_type", lambda path: pytest.fail(f"ITK read {path}"))
    assert stored_case(Case("a", tmp_path / "float32_4d.nii.gz", tmp_path / "uint8.nii.gz")) == StoredCase(
        tmp_path / "float32_4d.nii.gz", (4, 5, 6), 3, 4, 42, 1)


def _stored(shape: tuple[int, int, int] = (100, 200, 300), channels: int = 2, value_bytes: int = 2,
            label_bytes: int = 1) -> StoredCase:
    return StoredCase(Path("/data/imagesTr/a.nii.gz"), shape, channels, value_bytes, int(np.prod(shape)),
                      label_bytes)


def test_read_and_least_bytes_count_the_copies_of_a_case() -> None:
    size = _stored()
    voxels = 100 * 200 * 300
    assert read_bytes(VALIDATION, size) == voxels * (2 * (2 + 3 * 2) + 1 * 1 + 5)
    # ITK's image, numpy's float32 copy of it, the uint8 label map read before
    assert least_read_bytes(VALIDATION, size) == voxels * (2 * (4 + 2) + 1)
    assert read_bytes(FINGERPRINT, size, samples=1000) == voxels * (2 * 4 + 2 * 1 + 3) + 14 * 1000
    # float32 channels, ITK's label map and its uint8 copy (no float32 copy of it: `io.read_label`)
    assert least_read_bytes(FINGERPRINT, size) == voxels * (2 * 4 + 1 + 1)
    for stage in (VALIDATION, FINGERPRINT):
        assert read_bytes(stage, size) > least_read_bytes(stage, size)


def test_validation_counts_the_float32_copy_of_an_image_stored_in_fewer_bytes() -> None:
    # validation reads the image as float32 (`io.read_image`) beside ITK's image and the label map read
    # before: a 500 x 1000 x 1000 uint8 case was counted 0.93 GiB, passed a 2 GiB `ulimit -v` and failed
    # with numpy's "Unable to allocate 1.86 GiB ... float32", exit 8, where it is one bad case
    voxels = 500 * 1000 * 1000
    size = _stored((500, 1000, 1000), channels=1, value_bytes=1)
    assert least_read_bytes(VALIDATION, size) == voxels * (4 + 1 + 1)
    each = MemoryLimit(2 * GIB, "the process's address-space limit", "ulimit -v, RLIMIT_AS", per_process=True)
    assert read_problem(VALIDATION, size, each).startswith("validating it needs at least 2.79 GiB at once")



def test_a_case_that_fits_the_limit_but_not_beside_what_the_process_holds_is_refused() -> None:
    # `ulimit -v 3000000` (2.86 GiB): the 2.79 GiB that validating a 500 x 1000 x 1000 uint8 case certainly
    # holds fit the limit, not beside the interpreter's, numpy's and SimpleITK's address space; the case was
    # read and failed with numpy's "Unable to allocate 3.73 GiB", exit 8, where it is one bad case
    size = _stored((500, 1000, 1000), channels=1, value_bytes=1)
    ulimit = dict(limit_bytes=3000000 * 1024, kind="the process's address-space limit",
                  origin="ulimit -v, RLIMIT_AS", per_process=True)
    assert read_problem(VALIDATION, size, MemoryLimit(**ulimit)) == ""  # nothing held: it fits
    held = MemoryLimit(**ulimit, held_bytes=int(1.25 * GIB))
    assert read_problem(VALIDATION, size, held) == (
        "validating it needs at least 2.79 GiB at once (1 channel(s), 500 x 1000 x 1000 voxels of 1 "
        "byte(s)), more than the 1.61 GiB this process may use (the process's address-space limit, "
        "ulimit -v, RLIMIT_AS: 2.86 GiB, 1.25 GiB of it held already); run with more memory")


def test_the_memory_a_process_holds_is_its_threads_own() -> None:
    # threads share one process, whose own memory is what it holds (`WORKER_BYTES` where it says less: not
    # counted twice); worker processes each hold their own besides what the parent holds of a shared limit
    size = _stored()
    need = read_bytes(VALIDATION, size)
    assert reads_at_once(VALIDATION, [size], 8, MemoryLimit(GIB + 3 * need, JOB, held_bytes=GIB),
                         threads=True) == 3
    assert reads_at_once(VALIDATION, [size], 8, MemoryLimit(GIB + 3 * need, JOB, held_bytes=GIB + need),
                         threads=True) == 2
    assert reads_at_once(VALIDATION, [size], 8, MemoryLimit(WORKER_BYTES + 3 * need, JOB, held_bytes=1),
                         threads=True) == 3
    job = MemoryLimit(8 * WORKER_BYTES + 2 * need + GIB, JOB, held_bytes=GIB)  # the parent's resident memory
    assert reads_at_once(VALIDATION, [size], 8, job) == 2

def test_threads_share_every_limit_processes_only_the_shared_one() -> None:
    size = _stored()
    need = read_bytes(VALIDATION, size)
    job = MemoryLimit(WORKER_BYTES + 3 * need + 1, JOB)
    assert reads_at_once(VALIDATION, [size], 8, job, threads=True) == 3  # one process's own memory
    assert reads_at_once(VALIDATION, [size], 8, job) == 1  # 8 processes' own memory: room for none more
    assert reads_at_once(VALIDATION, [size], 8, MemoryLimit(8 * WORKER_BYTES + 2 * need, JOB)) == 2
    assert reads_at_once(VALIDATION, [size], 8, MemoryLimit(8 * WORKER_BYTES + 2 * need, JOB),
                         held=need) == 1  # what the stage gathers in its own process
    # `ulimit -v` as large as 3 cases: each worker process has its own; their threads share it
    machine = MemoryLimit(64 * GIB, "the machine's memory")
    each = MemoryLimit(WORKER_BYTES + 3 * need + 1, "the process's address-space limit",
                       "ulimit -v, RLIMIT_AS", per_process=True, shared=machine)
    assert reads_at_once(VALIDATION, [size], 8, each) == 8
    assert reads_at_once(VALIDATION, [size], 8, each, threads=True) == 3
    alone = MemoryLimit(each.limit_bytes, each.kind, each.origin, per_process=True)  # nothing shared known
    assert reads_at_once(VALIDATION, [size], 8, alone) == 8
    assert reads_at_once(VALIDATION, [size], 8, None) == 8 and reads_at_once(VALIDATION, [], 8, job) == 8


def test_a_case_that_cannot_be_read_even_alone_is_named() -> None:
    huge = _stored((1000, 1000, 1000), channels=1, value_bytes=4)
    for stage, doing, need in ((VALIDATION, "validating", 8.38), (FINGERPRINT, "fingerprinting", 5.59)):
        with pytest.raises(DataError) as info:
            reads_at_once(stage, [_stored((10, 10, 10)), huge], 2,
                          MemoryLimit(4 * GIB, JOB, "cgroup memory.max"))
        assert str(info.value) == (
            f"/data/imagesTr/a.nii.gz: {doing} it needs at least {need} GiB at once (1 channel(s), 1000 x "
            "1000 x 1000 voxels of 4 byte(s)), more than the 4 GiB this process may use (the container's or "
            "job's memory limit, cgroup memory.max); run with more memory")
    # a per-process limit bounds a case alone too: its arrays are all in the process's address space
    each = MemoryLimit(4 * GIB, "the process's address-space limit", "ulimit -v, RLIMIT_AS", per_process=True,
                       shared=MemoryLimit(64 * GIB, "the machine's memory"))
    with pytest.raises(DataError, match=r"^/data/imagesTr/a\.nii\.gz: validating it needs at least 8\.38 GiB "
                                        r".*\(the process's address-space limit, ulimit -v, RLIMIT_AS\)"):
        reads_at_once(VALIDATION, [huge], 8, each)


@pytest.fixture
def synth(home: Path, tmp_path: Path) -> tuple[Path, Any]:
    write_task_file(home, "Task90_Synth")
    return make_synthetic_task(tmp_path / "Task90_Synth", num_cases=4), get_task("Task90_Synth")


def _thread_counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    counts: list[int] = []
    real = validate.ThreadPoolExecutor

    def counting(max_workers: int) -> Any:
        counts.append(max_workers)
        return real(max_workers=max_workers)

    monkeypatch.setattr(validate, "ThreadPoolExecutor", counting)
    return counts


def test_validation_reads_fewer_cases_at_once_where_memory_is_short(
        synth: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    folder, task = synth
    counts = _thread_counts(monkeypatch)
    need = read_bytes(VALIDATION, stored_cases(training_cases(folder))[0])
    monkeypatch.setattr(validate, "usable_memory", lambda: MemoryLimit(WORKER_BYTES + 2 * need, JOB))
    assert validate_folder(folder, task, workers=4).problems == []
    monkeypatch.setattr(validate, "usable_memory", lambda: MemoryLimit(64 * GIB, JOB))
    assert validate_folder(folder, task, workers=4).problems == []
    validate_folder(folder, task, deep=False, workers=4)  # headers only: not bounded
    assert counts == [2, 4, 4]


def _too_large_case(folder: Path) -> Case:
    """Case 1 of a synthetic task made eight times the others' voxels: the one a memory between theirs and
    its own cannot read."""
    write_image(folder / "imagesTr" / "case_001.nii.gz", np.zeros((24, 40, 40), np.float32))
    write_image(folder / "labelsTr" / "case_001.nii.gz", np.zeros((24, 40, 40), np.uint8))
    return training_cases(folder)[1]


def test_validation_lists_a_case_it_cannot_read_even_alone_and_checks_the_others(
        synth: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # it stopped all of validation, and so fetch, with exit 3, where a corrupt case is listed and excluded
    folder, task = synth
    big = _too_large_case(folder)
    (folder / "labelsTr" / "case_003.nii.gz").write_bytes(b"not an image")  # a corrupt one beside it
    sizes = stored_cases(training_cases(folder))
    need = least_read_bytes(VALIDATION, next(size for size in sizes if size.image == big.image))
    assert max(least_read_bytes(VALIDATION, size) for size in sizes if size.image != big.image) < need - 1
    read: list[Path] = []
    for name in ("read_label", "read_image", "count_nonfinite"):
        real = getattr(validate, name)
        monkeypatch.setattr(validate, name, lambda path, *args, real=real, **kwargs:
                            read.append(path) or real(path, *args, **kwargs))
    memory = MemoryLimit(need - 1, JOB, "cgroup memory.max")
    monkeypatch.setattr(validate, "usable_memory", lambda: memory)
    report = validate_folder(folder, task)
    assert [str(problem) for problem in report.problems] == [
        f"{big.image}: validating it needs at least {need / GIB:.3g} GiB at once (1 channel(s), 24 x 40 x 40 "
        f"voxels of 4 byte(s)), more than the {memory.limit_bytes / GIB:.3g} GiB this process may use (the "
        "container's or job's memory limit, cgroup memory.max); run with more memory",
        f"{folder / 'labelsTr' / 'case_003.nii.gz'}: unreadable (not gzip-compressed data)"]
    assert report.excluded == {"case_001", "case_003"}
    assert [case.case_id for case in report.usable_cases] == ["case_000", "case_002"]
    assert big.image not in read and big.label not in read  # not a voxel of it read
    assert {folder / "imagesTr" / "case_000.nii.gz", folder / "imagesTr" / "case_002.nii.gz"} <= set(read)
    monkeypatch.setattr(validate, "usable_memory", lambda: MemoryLimit(64 * GIB, JOB))
    assert validate_folder(folder, task).excluded == {"case_003"}  # with the memory it needs, read as any


def test_the_fingerprint_reads_fewer_cases_at_once_where_memory_is_short(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_task_file(home, "Task92_CT", ct=True)
    cases = training_cases(make_synthetic_task(tmp_path / "Task92_CT", num_cases=4, ct=True))
    task = get_task("Task92_CT")
    calls: list[tuple[str, int | None]] = []
    real_map = fingerprint_module.parallel_map

    def spy(fn: Any, items: Any, workers: Any = None, progress: bool = False, description: str = "",
            pool: Any = None, at_once: int | None = None) -> Any:
        calls.append((description, at_once))
        return real_map(fn, items, workers, progress, description, pool, at_once)

    monkeypatch.setattr(fingerprint_module, "parallel_map", spy)
    samples = 40_000 // 4  # the conftest's sample, of the one CT channel
    need = read_bytes(FINGERPRINT, stored_cases(cases)[0], samples)
    gathered = 4 * 40_000
    monkeypatch.setattr(fingerprint_module, "usable_memory",
                        lambda: MemoryLimit(2 * WORKER_BYTES + gathered + need, JOB))
    fp = fingerprint(task, cases, workers=2)
    monkeypatch.setattr(fingerprint_module, "usable_memory",
                        lambda: MemoryLimit(2 * WORKER_BYTES + gathered + 2 * need, JOB))
    assert fingerprint(task, cases, workers=2) == fp
    assert calls == [("fingerprint, 1 at a time (memory)", 1), ("fingerprint", 2)]
    monkeypatch.setattr(fingerprint_module, "usable_memory", lambda: MemoryLimit(10_000, JOB))
    with pytest.raises(DataError, match=rf"^{tmp_path}/Task92_CT/imagesTr/case_000\.nii\.gz: fingerprinting "
                                        "it needs at least .* GiB at once"):
        fingerprint(task, cases, workers=2)


def test_fetch_under_ulimit_excludes_a_case_that_fits_the_limit_only_without_the_process(
        home: Path, tmp_path: Path) -> None:
    # `ulimit -v` bounds the interpreter's, numpy's and SimpleITK's own address space: a case whose least
    # need fit the limit passed validation's check and its read failed with numpy's "Unable to allocate",
    # exit 8. The limit here: the case's least need and half of what the process holds before it fetches.
    import subprocess
    import sys

    write_task_file(home, "Task90_Synth")
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=3)
    big = _too_large_case(src)
    write_image(big.image, np.zeros((64, 1024, 1024), np.uint8))  # 0.38 GiB as validation reads it
    write_image(big.label, np.zeros((64, 1024, 1024), np.uint8))
    script = """
import resource, sys
from pathlib import Path
import SimpleITK
import medseg_bench.data.fetch, medseg_bench.data.validate
from medseg_bench.cli.app import main
from medseg_bench.data.msd import training_cases
from medseg_bench.data.read_memory import VALIDATION, least_read_bytes, stored_case

case = next(case for case in training_cases(Path(sys.argv[1])) if case.case_id == "case_001")
need = least_read_bytes(VALIDATION, stored_case(case))
status = Path("/proc/self/status").read_text()
held = int(next(line for line in status.splitlines() if line.startswith("VmSize:")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (need + held // 2, resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.argv = ["medseg-bench", "fetch", "Task90_Synth", "--source", sys.argv[1]]
main()
"""
    done = subprocess.run([sys.executable, "-c", script, str(src)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "400",
                                            "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    image = home / "data" / "Task90_Synth" / "imagesTr" / "case_001.nii.gz"
    assert re.search(rf"^warning: {re.escape(str(image))}: validating it needs at least 0\.375 GiB at once "
                     r"\(1 channel\(s\), 64 x 1024 x 1024 voxels of 1 byte\(s\)\), more than the [0-9.]+ GiB "
                     r"this process may use \(the process's address-space limit, ulimit -v, RLIMIT_AS: "
                     r"[0-9.]+ GiB, [0-9.]+ GiB of it held already\); run with more memory \(case excluded "
                     r"from training\)$", output, re.MULTILINE), output
    assert "2 usable training cases" in output and "(1 excluded)" in output


def test_simpleitk_is_mapped_before_what_the_process_holds_is_read(
        home: Path, tmp_path: Path, synth: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # every read maps SimpleITK's libraries (0.27 GiB of address space): counted as held before a case is
    # held to what is left, not found mapped once the case's read began
    folder, task = synth
    order: list[str] = []
    for module in (validate, fingerprint_module):
        real = module.sitk_module
        monkeypatch.setattr(module, "sitk_module", lambda real=real: order.append("SimpleITK") or real())
        monkeypatch.setattr(module, "usable_memory", lambda: order.append("memory") or None)
    validate_folder(folder, task, workers=2)
    assert order[:2] == ["SimpleITK", "memory"]
    order.clear()
    fingerprint(task, training_cases(folder), workers=1)
    assert order[:2] == ["SimpleITK", "memory"]
