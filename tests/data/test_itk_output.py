"""ITK's own stderr lines are kept off the terminal; everything else written to stderr still gets there."""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from medseg_bench.data.itk_output import Printed, captured
from medseg_bench.errors import DataError


def _stderr_file() -> tuple[int, int]:
    info = os.fstat(2)
    return info.st_dev, info.st_ino


def _unparsable_mha(path: Path) -> Path:
    """A MetaImage header without its ElementType, which ITK's MetaIO refuses printing four lines to stderr
    ("ElementType required and not defined.", ...). (A MetaImage cut short, which SimpleITK 2.5 refuses so, is
    refused before ITK reads it: SimpleITK 2.2 read it without an error, `metaimage`.)"""
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 10 10 10\nElementDataFile = LOCAL\n")
    return path


# What reading `_unparsable_mha` raises: ITK's error, its reason the first line ITK printed
UNPARSABLE = "not a readable image (damaged or cut short: ElementType required and not defined)"


def test_what_a_call_that_succeeded_printed_is_written_after_it(capfd: pytest.CaptureFixture[str]) -> None:
    with captured() as printed:
        os.write(2, b"from C\n")
    assert printed.text == "from C\n"
    assert capfd.readouterr().err == "from C\n"


def test_a_command_prints_its_error_alone_and_python_text_still(tmp_path: Path) -> None:
    # Under pytest sys.stderr is not descriptor 2: a process of its own shows what a user's terminal gets.
    import subprocess

    bad = _unparsable_mha(tmp_path / "bad.mha")
    script = f"""
import sys
from pathlib import Path
from medseg_bench.data.io import read_image
from medseg_bench.data.itk_output import captured
from medseg_bench.errors import DataError
try:
    read_image(Path({str(bad)!r}))
except DataError as exc:
    print("error:", exc, file=sys.stderr)
with captured():
    print("Python, while a call ran", file=sys.stderr)
print("Python, after", file=sys.stderr)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    error = f"error: {bad}: {UNPARSABLE}"
    assert done.stderr == f"{error}\nPython, while a call ran\nPython, after\n"


def test_what_a_call_that_failed_printed_is_kept_for_its_error(capfd: pytest.CaptureFixture[str]) -> None:
    before = _stderr_file()
    with pytest.raises(RuntimeError), captured() as printed:
        os.write(2, b"MetaImage: M_ReadElementsData: data not read completely\n   ideal = 8 : actual = 4\n")
        raise RuntimeError("ITK ERROR")
    assert printed.detail == "data not read completely"
    assert capfd.readouterr().err == "" and _stderr_file() == before
    print("after", file=sys.stderr)  # stderr is stderr again
    assert capfd.readouterr().err == "after\n"


@pytest.mark.parametrize(("text", "detail"), [
    ("MetaImage: Read: Cannot open data file\n", "cannot open data file"),
    ("\nElementType required and not defined.\nMetaObject: Read: MET_Read Failed\n",
     "ElementType required and not defined"),
    ("", ""),
    ("\x1b[2Kvalidating 40%\rMetaImage: M_ReadElementsData: data not read completely\n",  # a progress bar
     "data not read completely"),
])
def test_the_detail_is_the_first_line_without_the_printers_names(text: str, detail: str) -> None:
    assert Printed(text).detail == detail


def test_threads_reading_at_once_leave_stderr_as_it_was(tmp_path: Path,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    # fd 2 is the process's: two threads redirecting it at once restored each other's copy, stderr in a file.
    import SimpleITK as sitk

    from medseg_bench.data.io import read_image

    good, bad = tmp_path / "good.mha", _unparsable_mha(tmp_path / "bad.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30, 40), np.float32)), str(good))
    capfd.readouterr()
    before = _stderr_file()

    def read(i: int) -> str:
        try:
            read_image(bad if i % 2 else good)
        except DataError as exc:
            return str(exc)
        return "read"

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(read, range(200)))
    error = f"{bad}: {UNPARSABLE}"
    assert results == ["read", error] * 100
    assert _stderr_file() == before and capfd.readouterr().err == ""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_fork_waits_for_the_call_so_the_child_has_the_real_stderr(
        capfd: pytest.CaptureFixture[str]) -> None:
    # A child forked while another thread's call had stderr in the capture file wrote its own errors there.
    started = threading.Event()

    def failing_call() -> None:
        with pytest.raises(RuntimeError), captured():
            started.set()
            time.sleep(0.5)
            raise RuntimeError("ITK ERROR")

    thread = threading.Thread(target=failing_call)
    thread.start()
    started.wait()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(2, b"the child's error\n")
        os._exit(0)
    thread.join()
    assert os.waitpid(pid, 0)[1] == 0
    assert capfd.readouterr().err == "the child's error\n"


def test_only_metaimage_reads_are_captured(capfd: pytest.CaptureFixture[str]) -> None:
    from medseg_bench.data import itk_output

    with itk_output.captured_for("case.nii.gz") as printed:  # no lock: NIfTI reads run at once in threads
        assert not itk_output._lock.locked()
        os.write(2, b"left alone\n")
    assert printed.text == ""
    with itk_output.captured_for("case.MHA"):
        assert itk_output._lock.locked()
        os.write(2, b"kept back\n")
    assert capfd.readouterr().err == "left alone\nkept back\n"


def test_a_signal_just_after_the_redirection_still_restores_stderr(monkeypatch: pytest.MonkeyPatch,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    # Ctrl-C handled right after fd 2 was pointed at the capture file raised before the block that restores
    # it: the interrupted command's one line, and all it printed after, went into the temporary file.
    import signal

    from medseg_bench.data import itk_output

    capture = itk_output._capture_file()
    assert capture is not None
    real_dup2 = os.dup2

    def dup2_then_interrupt(fd: int, fd2: int) -> None:
        real_dup2(fd, fd2)
        if fd == capture.fileno():
            os.kill(os.getpid(), signal.SIGINT)  # handled on return, as a Ctrl-C during the system call

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(os, "dup2", dup2_then_interrupt)
    before = _stderr_file()
    try:
        with pytest.raises(KeyboardInterrupt), captured():
            pass
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGINT, previous)
    assert _stderr_file() == before
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
