"""Fetch against a local HTTP server on 127.0.0.1 serving archives that the tests build."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from medseg_bench.data.catalog import get_task
from medseg_bench.data.download import download
from medseg_bench.data.fetch import MARKER, FetchOutcome, fetch_task, is_complete
from medseg_bench.errors import DataError, FetchError, FileSystemError, UsageError


def make_tar(folder: Path, dest: Path) -> tuple[Path, str]:
    with tarfile.open(dest, "w") as tar:
        tar.add(folder, arcname=folder.name)
    return dest, hashlib.md5(dest.read_bytes()).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    payload = b""
    drop_after: int | None = None  # close the connection after this many bytes of the first response
    fail_first: int = 0  # answer 500 to this many requests first
    requests: list[str | None] = []
    gate: threading.Event | None = None  # when set: send half the body, wait for the gate, then the rest
    etag: str | None = None  # sent as ETag, and a Range is honoured only if If-Range (when sent) matches it
    last_modified: str | None = None  # sent as Last-Modified, and matched by If-Range as well
    if_ranges: list[str | None] = []
    paths: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        cls = type(self)
        cls.paths.append(self.path)
        cls.requests.append(self.headers.get("Range"))
        cls.if_ranges.append(self.headers.get("If-Range"))
        if cls.fail_first > 0:
            cls.fail_first -= 1
            self.send_error(500)
            return
        start = 0
        if_range = self.headers.get("If-Range")
        if self.headers.get("Range") and if_range in (None, cls.etag, cls.last_modified):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(cls.payload):  # as S3 and nginx answer a range past the end
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(cls.payload)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(cls.payload) - 1}/{len(cls.payload)}")
        else:
            self.send_response(200)
        body = cls.payload[start:]
        for name, value in (("ETag", cls.etag), ("Last-Modified", cls.last_modified)):
            if value is not None:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.drop_after is not None:
            self.wfile.write(body[: cls.drop_after])
            cls.drop_after = None
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        if cls.gate is not None:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            cls.gate.wait(30)
            body = body[len(body) // 2:]
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type(
        "Handler", (_Handler,),
        {"payload": b"", "drop_after": None, "fail_first": 0, "requests": [], "gate": None, "etag": None,
         "last_modified": None, "if_ranges": [], "paths": []}
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def test_download_verify_extract_validate(server, hippo_subset: Path, tmp_path: Path) -> None:
    url, handler = server
    archive, md5 = make_tar(hippo_subset, tmp_path / "t.tar")
    handler.payload = archive.read_bytes()
    data = tmp_path / "data"
    outcome = fetch_task(
        get_task("Task04_Hippocampus"), data, f"{url}/Task04_Hippocampus.tar", md5, progress=False
    )
    assert not outcome.already_present and is_complete(data / "Task04_Hippocampus")
    assert len(list((data / "Task04_Hippocampus" / "imagesTr").glob("*.nii.gz"))) == 10
    again = fetch_task(get_task("Task04_Hippocampus"), data, f"{url}/x.tar", md5, progress=False)
    assert again.already_present and len(handler.requests) == 1
    assert not list(data.glob(".*.partial"))


def test_two_fetches_of_one_task_at_once_download_it_once(server, hippo_subset: Path, tmp_path: Path) -> None:
    """The second fetch waits for the first (it says so), then finds the task complete: one download, no
    shared staging folder pulled from under the first."""
    url, handler = server
    archive, md5 = make_tar(hippo_subset, tmp_path / "t.tar")
    handler.payload, handler.gate = archive.read_bytes(), threading.Event()
    data, task = tmp_path / "data", get_task("Task04_Hippocampus")
    outcomes: dict[str, object] = {}
    said: list[str] = []

    def fetch(name: str) -> None:
        try:
            outcomes[name] = fetch_task(task, data, f"{url}/t.tar", md5, progress=False, say=said.append)
        except Exception as exc:  # reported by the asserts below
            outcomes[name] = exc

    first = threading.Thread(target=fetch, args=("first",))
    first.start()
    _wait_for(lambda: len(handler.requests) == 1)  # the first one is downloading, holding the lock
    second = threading.Thread(target=fetch, args=("second",))
    second.start()
    _wait_for(lambda: bool(said))
    assert said == [f"Task04_Hippocampus: another fetch of this task is running in {data}; waiting for it"]
    assert second.is_alive() and len(handler.requests) == 1
    handler.gate.set()
    first.join(30)
    second.join(30)
    assert isinstance(outcomes["first"], FetchOutcome) and not outcomes["first"].already_present
    assert isinstance(outcomes["second"], FetchOutcome) and outcomes["second"].already_present
    assert len(handler.requests) == 1 and is_complete(data / "Task04_Hippocampus")
    assert not list(data.glob(".*.partial"))


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_wrong_md5_leaves_nothing_marked(server, hippo_subset: Path, tmp_path: Path) -> None:
    url, handler = server
    archive, _ = make_tar(hippo_subset, tmp_path / "t.tar")
    handler.payload = archive.read_bytes()
    data = tmp_path / "data"
    with pytest.raises(FetchError, match="md5 mismatch"):
        fetch_task(get_task("Task04_Hippocampus"), data, f"{url}/t.tar", "0" * 32, progress=False)
    assert not (data / "Task04_Hippocampus").exists()
    assert not list(data.rglob(MARKER))
    # the download is kept under its own md5, not as the archive asked for
    md5 = hashlib.md5(handler.payload).hexdigest()
    assert [p.name for p in (data / ".downloads").iterdir()] == [f"Task04_Hippocampus.tar.md5-{md5}"]


def test_mirror_env_is_used_and_catalog_md5_checked(server, hippo_subset: Path, tmp_path: Path) -> None:
    url, handler = server
    archive, _ = make_tar(hippo_subset, tmp_path / "t.tar")
    handler.payload = archive.read_bytes()
    with pytest.raises(FetchError, match="expected 9d24dba78a72977dbd1d2e110310f31b"):
        fetch_task(get_task("Task04_Hippocampus"), tmp_path / "data", mirror=url, progress=False)
    assert handler.requests  # the mirror was asked, and the catalog checksum refused the repackaged archive


def test_resume_after_dropped_connection(server, tmp_path: Path) -> None:
    url, handler = server
    handler.payload = bytes(range(256)) * 4096  # 1 MiB
    handler.drop_after = 300_000
    md5 = hashlib.md5(handler.payload).hexdigest()
    dest = download(f"{url}/blob", tmp_path / "blob.tar", md5, timeout_s=5, progress=False)
    assert dest.read_bytes() == handler.payload
    assert handler.requests[0] is None and handler.requests[-1] == "bytes=300000-"


def test_a_whole_part_file_is_kept_when_the_server_answers_416(server, tmp_path: Path) -> None:
    # A fetch stopped while it checked the md5 of a finished download: the rerun asks for the bytes after the
    # last, which such servers refuse with 416; the part file was deleted and downloaded again.
    url, handler = server
    handler.payload = bytes(range(256)) * 4096
    (tmp_path / "blob.tar.part").write_bytes(handler.payload)
    md5 = hashlib.md5(handler.payload).hexdigest()
    dest = download(f"{url}/blob", tmp_path / "blob.tar", md5, timeout_s=5, progress=False)
    assert dest.read_bytes() == handler.payload and handler.requests == [f"bytes={len(handler.payload)}-"]
    (tmp_path / "other.tar.part").write_bytes(handler.payload + b"extra")  # not this file: started over
    dest = download(f"{url}/blob", tmp_path / "other.tar", md5, timeout_s=5, progress=False)
    assert dest.read_bytes() == handler.payload
    assert handler.requests[1:] == [f"bytes={len(handler.payload) + 5}-", None]


def test_a_malformed_content_length_is_read_to_the_end(tmp_path: Path) -> None:
    body = b"archive bytes"
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\n" + body
    with _raw_server(reply) as url:
        dest = download(url, tmp_path / "t.tar", hashlib.md5(body).hexdigest(), timeout_s=5, progress=False)
    assert dest.read_bytes() == body


@pytest.mark.parametrize(("etag", "validator"), [('"v1"', '"v1"'), (None, "Tue, 01 Dec 2026 03:00:00 GMT")])
def test_a_file_changed_on_the_server_is_downloaded_again_not_spliced(
        server, tmp_path: Path, etag: str, validator: str) -> None:
    """A resumed request asks for the rest only of the file the part began with (If-Range: its strong ETag,
    without one its Last-Modified): the same file resumes, a changed one comes whole and replaces the part."""
    url, handler = server
    old, new = bytes(range(256)) * 4096, bytes(range(255, -1, -1)) * 4096
    handler.payload, handler.etag, handler.drop_after = old, etag, 300_000
    handler.last_modified = "Tue, 01 Dec 2026 03:00:00 GMT"
    dest, md5_new = tmp_path / "blob.tar", hashlib.md5(new).hexdigest()
    with pytest.raises(FetchError, match="rerun to resume"):
        download(f"{url}/blob", dest, md5_new, timeout_s=5, progress=False, attempts=1)
    assert (tmp_path / "blob.tar.part").stat().st_size == 300_000
    assert (tmp_path / "blob.tar.part.validator").read_text() == validator
    handler.payload, handler.etag, handler.last_modified = new, '"v2"', "Wed, 02 Dec 2026 03:00:00 GMT"
    assert download(f"{url}/blob", dest, md5_new, timeout_s=5, progress=False).read_bytes() == new
    assert handler.requests[-1] == "bytes=300000-" and handler.if_ranges[-1] == validator
    assert not (tmp_path / "blob.tar.part.validator").exists()
    # the same file: resumed from where it stopped
    handler.drop_after, handler.requests = 300_000, []
    other = tmp_path / "other.tar"
    with pytest.raises(FetchError, match="rerun to resume"):
        download(f"{url}/blob", other, md5_new, timeout_s=5, progress=False, attempts=1)
    assert download(f"{url}/blob", other, md5_new, timeout_s=5, progress=False).read_bytes() == new
    assert handler.requests == [None, "bytes=300000-"] and handler.if_ranges[-1] == '"v2"'


def test_a_weak_etag_is_no_validator(server, tmp_path: Path) -> None:
    """RFC 9110: no If-Range with a weak ETag, nor with a date when there is an ETag; resumed as before."""
    url, handler = server
    handler.payload, handler.etag, handler.drop_after = b"z" * 1000, 'W/"v1"', 400
    handler.last_modified = "Tue, 01 Dec 2026 03:00:00 GMT"
    md5 = hashlib.md5(handler.payload).hexdigest()
    with pytest.raises(FetchError, match="rerun to resume"):
        download(f"{url}/blob", tmp_path / "w.tar", md5, timeout_s=5, progress=False, attempts=1)
    assert not (tmp_path / "w.tar.part.validator").exists()
    assert download(f"{url}/blob", tmp_path / "w.tar", md5, timeout_s=5, progress=False).read_bytes() == (
        handler.payload)
    assert handler.requests == [None, "bytes=400-"] and handler.if_ranges == [None, None]


def test_a_range_answered_from_elsewhere_starts_over(server, tmp_path: Path) -> None:
    url, handler = server
    handler.payload = b"y" * 1000
    (tmp_path / "b.tar.part").write_bytes(b"y" * 400)
    sent = handler.do_GET

    def off_by_100(self) -> None:  # a 206 from byte 300 when asked from 400
        if self.headers.get("Range"):
            self.headers.replace_header("Range", "bytes=300-")
        sent(self)

    handler.do_GET = off_by_100
    md5 = hashlib.md5(handler.payload).hexdigest()
    dest = download(f"{url}/blob", tmp_path / "b.tar", md5, progress=False)
    assert dest.read_bytes() == handler.payload and handler.requests == ["bytes=300-", None]


def test_a_partial_reply_that_does_not_say_where_it_starts_starts_over(server, tmp_path: Path) -> None:
    # A 206 without Content-Range was appended as if it began where asked: here from byte 300, when asked from
    # 400, so the md5 check discarded the whole download.
    url, handler = server
    handler.payload = b"y" * 600 + b"z" * 400
    (tmp_path / "b.tar.part").write_bytes(b"y" * 400)
    sent, header = handler.do_GET, handler.send_header

    def from_300(self) -> None:
        if self.headers.get("Range"):
            self.headers.replace_header("Range", "bytes=300-")
        sent(self)

    def no_range(self, name: str, value: str) -> None:
        if name != "Content-Range":
            header(self, name, value)

    handler.do_GET, handler.send_header = from_300, no_range
    md5 = hashlib.md5(handler.payload).hexdigest()
    dest = download(f"{url}/blob", tmp_path / "b.tar", md5, progress=False)
    assert dest.read_bytes() == handler.payload and handler.requests == ["bytes=300-", None]


def test_a_partial_reply_that_ends_short_of_the_file_is_resumed_not_taken_whole(server,
                                                                               tmp_path: Path) -> None:
    # A 206 of bytes 400-1399/3000 was taken as the rest of the file: "md5 mismatch", the part file kept as a
    # finished download.
    url, handler = server
    handler.payload = bytes(range(250)) * 12
    (tmp_path / "b.tar.part").write_bytes(handler.payload[:400])
    sent = handler.do_GET

    def capped(self) -> None:  # at most 1000 bytes a reply, as it says
        start = int(self.headers["Range"].split("=")[1].rstrip("-"))
        end = min(start + 1000, len(handler.payload)) - 1
        type(self).requests.append(self.headers["Range"])
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(handler.payload)}")
        self.send_header("Content-Length", str(end + 1 - start))
        self.end_headers()
        self.wfile.write(handler.payload[start:end + 1])

    handler.do_GET = capped
    md5 = hashlib.md5(handler.payload).hexdigest()
    assert download(f"{url}/blob", tmp_path / "b.tar", md5, progress=False).read_bytes() == handler.payload
    assert handler.requests == ["bytes=400-", "bytes=1400-", "bytes=2400-"]
    handler.do_GET, handler.requests = sent, []
    (tmp_path / "c.tar.part").write_bytes(handler.payload[:400])
    handler.do_GET = capped
    with pytest.raises(FetchError, match=r"after 1 attempt \(the server's partial reply ended after 1400 of "
                                         r"3000 bytes\); rerun to resume$"):
        download(f"{url}/blob", tmp_path / "c.tar", md5, progress=False, attempts=1)
    assert (tmp_path / "c.tar.part").read_bytes() == handler.payload[:1400]


def test_a_resumed_reply_of_a_file_of_another_size_starts_over(server, tmp_path: Path) -> None:
    """Without a validator, a file changed on the server was spliced on where its size changed too: the size
    of the file the part began with is kept beside it (`.part.size`)."""
    url, handler = server
    old, new = b"a" * 1000, b"b" * 1500
    handler.payload, handler.drop_after = old, 400
    md5_new = hashlib.md5(new).hexdigest()
    with pytest.raises(FetchError, match="rerun to resume"):
        download(f"{url}/blob", tmp_path / "b.tar", md5_new, timeout_s=5, progress=False, attempts=1)
    assert (tmp_path / "b.tar.part.size").read_text() == "1000"
    handler.payload = new
    assert download(f"{url}/blob", tmp_path / "b.tar", md5_new, progress=False).read_bytes() == new
    assert handler.requests == [None, "bytes=400-", None] and sorted(p.name for p in tmp_path.iterdir()) == [
        "b.tar"]


@pytest.mark.parametrize("drop", [300, 800])
def test_a_whole_reply_to_a_resumed_request_keeps_the_part_until_it_is_longer(server, tmp_path: Path,
                                                                             drop: int) -> None:
    # A server that ignores Range sends the whole file again: the part file was truncated before any byte
    # came, so a reply that dropped lost the bytes the part held.
    url, handler = server
    handler.payload, handler.drop_after = bytes(range(200)) * 5, drop
    part = tmp_path / "b.tar.part"
    part.write_bytes(handler.payload[:600])
    sent, ranges = handler.do_GET, []

    def ignores_range(self) -> None:
        ranges.append(self.headers.get("Range"))
        del self.headers["Range"]
        sent(self)

    handler.do_GET = ignores_range
    md5 = hashlib.md5(handler.payload).hexdigest()
    with pytest.raises(FetchError, match=rf"connection closed after {drop} of 1000 bytes"):
        download(f"{url}/blob", tmp_path / "b.tar", md5, timeout_s=5, progress=False, attempts=1)
    assert part.read_bytes() == handler.payload[:max(drop, 600)]  # replaced once the reply was longer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar.part"] + ["b.tar.part.size"] * (drop > 600)
    assert download(f"{url}/blob", tmp_path / "b.tar", md5, progress=False).read_bytes() == handler.payload
    assert ranges == ["bytes=600-", f"bytes={max(drop, 600)}-"]


def test_a_whole_reply_without_a_length_that_ends_short_of_the_part_keeps_the_part(tmp_path: Path) -> None:
    # A reply to a resumed request that ignores Range and says no Content-Length: its end may be a dropped
    # connection. It replaced the longer part file, which the md5 check then kept as another archive.
    part = tmp_path / "t.tar.part"
    part.write_bytes(b"x" * 600)
    with _raw_server(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 300) as url, \
            pytest.raises(FetchError) as info:
        download(url, tmp_path / "t.tar", "0" * 32, timeout_s=5, progress=False, attempts=1)
    assert str(info.value) == (f"{url}: download failed after 1 attempt (the server's reply (no "
                               "Content-Length) ended after 300 bytes, short of the 600 already downloaded, "
                               "which are kept); rerun to resume")
    assert part.read_bytes() == b"x" * 600 and sorted(p.name for p in tmp_path.iterdir()) == ["t.tar.part"]


def test_a_whole_reply_beside_the_part_needs_room_for_the_larger_of_the_two_steps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside the part file the disk holds the part and the reply up to the part's size, then the reply alone:
    `max(have, length - have)` more bytes; the whole length was asked for, refusing what fits."""
    import shutil

    part = tmp_path / "t.tar.part"
    part.write_bytes(b"x" * 600)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=700))
    body = b"x" * 1000
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with _raw_server(head + body) as url:
        done = download(url, tmp_path / "t.tar", hashlib.md5(body).hexdigest(), timeout_s=5, progress=False)
    assert done.read_bytes() == body


@pytest.mark.parametrize("resumed", [False, True])
def test_a_download_larger_than_the_free_space_is_refused_before_writing(tmp_path: Path,
                                                                        resumed: bool) -> None:
    # A Content-Length of 10^15 filled the disk first.
    size = 10**15
    if resumed:
        (tmp_path / "t.tar.part").write_bytes(b"x" * 400)
        head = (f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 400-{size - 1}/{size}\r\n"
                f"Content-Length: {size - 400}\r\n\r\n")
    else:
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n"
    with _raw_server(head.encode() + b"x" * 1000) as url, pytest.raises(FileSystemError) as info:
        download(url, tmp_path / "t.tar", "0" * 32, timeout_s=5, progress=False)
    part = tmp_path / "t.tar.part"
    coming = size - 400 * resumed
    assert re.fullmatch(rf"{part}: no room for the download \({coming} bytes to come, \d+ free\); nothing "
                        "was written: make room, then rerun", str(info.value))
    assert [p.name for p in tmp_path.iterdir()] == (["t.tar.part"] if resumed else [])
    assert not resumed or part.read_bytes() == b"x" * 400


def test_http_500_then_success(server, tmp_path: Path) -> None:
    url, handler = server
    handler.payload = b"x" * 1000
    handler.fail_first = 2
    dest = download(
        f"{url}/blob", tmp_path / "b.tar", hashlib.md5(handler.payload).hexdigest(), progress=False
    )
    assert dest.read_bytes() == handler.payload and len(handler.requests) == 3


def test_a_download_that_fails_its_md5_is_kept_for_the_md5_it_has(server, tmp_path: Path) -> None:
    """A mistyped --md5 discarded the whole download (7 GB for Task01), and the rerun with the right one
    downloaded it again; an archive verified for one md5 was deleted when a fetch asked for another."""
    url, handler = server
    handler.payload = b"x" * 1000
    right, dest = hashlib.md5(handler.payload).hexdigest(), tmp_path / "b.tar"
    kept = tmp_path / f"b.tar.md5-{right}"
    with pytest.raises(FetchError) as info:
        download(f"{url}/blob", dest, "0" * 32, progress=False)
    assert str(info.value) == (f"{url}/blob: md5 mismatch (expected {'0' * 32}, got {right}); the download "
                               f"is kept as {kept}: if it is the archive you meant, rerun with --md5 "
                               f"{right}, which uses it (not downloaded again); else delete it")
    assert kept.read_bytes() == handler.payload and not dest.exists()
    assert download(f"{url}/blob", dest, right, progress=False).read_bytes() == handler.payload
    assert len(handler.requests) == 1 and not kept.exists()  # not downloaded again
    with pytest.raises(FetchError, match="md5 mismatch"):  # the kept archive asked for with another md5
        download(f"{url}/blob", dest, "1" * 32, progress=False)
    assert len(handler.requests) == 2 and [p.name for p in tmp_path.iterdir()] == [kept.name]  # one kept
    assert download(f"{url}/blob", dest, right, progress=False).read_bytes() == handler.payload
    assert len(handler.requests) == 2


def test_a_kept_download_is_used_when_another_verified_one_is_in_its_place(server, tmp_path: Path) -> None:
    """The archive verified for one md5 was kept first, which removed the kept archive of the md5 now asked
    for before it was looked up: downloaded again. They are swapped."""
    url, handler = server
    handler.payload = b"x" * 1000
    right, dest = hashlib.md5(handler.payload).hexdigest(), tmp_path / "b.tar"
    dest.write_bytes(b"other archive")
    other = hashlib.md5(b"other archive").hexdigest()
    (tmp_path / f"b.tar.md5-{right}").write_bytes(handler.payload)
    assert download(f"{url}/blob", dest, right, progress=False).read_bytes() == handler.payload
    assert handler.requests == []  # not downloaded again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar", f"b.tar.md5-{other}"]
    assert (tmp_path / f"b.tar.md5-{other}").read_bytes() == b"other archive"


def test_a_redirect_loop_is_one_line_and_not_retried(server, tmp_path: Path) -> None:
    # urllib's loop error was retried 4 times and quoted as three lines, ending "rerun to resume".
    url, handler = server

    def loop(self) -> None:
        type(self).requests.append(self.path)
        self.send_response(302)
        self.send_header("Location", self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    handler.do_GET = loop
    with pytest.raises(FetchError) as info:
        download(f"{url}/blob", tmp_path / "b.tar", "0" * 32, progress=False)
    assert str(info.value) == (f"{url}/blob: the server redirects in a loop (back to a URL it redirected "
                               "from, or more than 10 times)")
    assert len(handler.requests) <= 10


def _empty_reply(code: int, location: str | None) -> Callable[[Any], None]:
    """A test server's GET answering `code` with no body, and `location` as its Location, if any."""

    def answer(self: Any) -> None:
        type(self).requests.append(self.path)
        self.send_response(code)
        if location is not None:
            self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    return answer


@pytest.mark.parametrize(("code", "location", "said"), [
    (302, None, "HTTP 302 Found, without a Location: no place to go for the file"),
    (300, "/elsewhere", "HTTP 300 Multiple Choices: not the file, and not a redirect that is followed"),
    (304, None, "HTTP 304 Not Modified, without a Location: no place to go for the file"),
])
def test_a_3xx_reply_that_is_not_followed_says_what_it_is(server, tmp_path: Path, code: int,
                                                          location: str | None, said: str) -> None:
    # Each was "the server redirects in a loop".
    url, handler = server
    handler.do_GET = _empty_reply(code, location)
    with pytest.raises(FetchError) as info:
        download(f"{url}/blob", tmp_path / "b.tar", "0" * 32, progress=False)
    assert str(info.value) == f"{url}/blob: the server answered {said}"
    assert handler.requests == ["/blob"]


def test_a_redirect_to_a_location_that_is_not_a_url_is_one_line_not_retried(server, tmp_path: Path) -> None:
    # urljoin's ValueError ("Invalid IPv6 URL") was a traceback.
    url, handler = server
    handler.do_GET = _empty_reply(302, "http://[::1")
    with pytest.raises(FetchError) as info:
        download(f"{url}/blob", tmp_path / "b.tar", "0" * 32, progress=False)
    assert str(info.value) == (f"{url}/blob: the server redirects to http://[::1, not a valid URL (Invalid "
                               "IPv6 URL)")
    assert handler.requests == ["/blob"]


def test_a_redirect_target_that_refuses_the_connection_is_named(server, tmp_path: Path) -> None:
    # The error named the URL asked for alone, whose server answered.
    import socket

    url, handler = server
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    target = f"http://127.0.0.1:{port}/x.tar"

    def redirect(self) -> None:
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    handler.do_GET = redirect
    with pytest.raises(FetchError) as info:
        download(f"{url}/blob", tmp_path / "b.tar", "0" * 32, progress=False, attempts=1)
    assert str(info.value) == (f"{url}/blob: download failed after 1 attempt (redirected to {target}: "
                               "[Errno 111] Connection refused); rerun to resume")


def test_a_tls_failure_is_one_line_not_retried(server, tmp_path: Path) -> None:
    # https to a port that speaks plain HTTP: WRONG_VERSION_NUMBER, retried 4 times, then "rerun to resume".
    url, handler = server
    https = "https" + url[4:] + "/blob"
    started = time.monotonic()
    with pytest.raises(FetchError, match=rf"^{https}: TLS failed \(\[SSL: WRONG_VERSION_NUMBER\] .*\); not "
                                         "retried$"):
        download(https, tmp_path / "b.tar", "0" * 32, timeout_s=5, progress=False)
    assert time.monotonic() - started < 2  # the retries sleep 3.75 s


@pytest.mark.parametrize(("header", "said"), [
    (("Content-Type", "text/html; charset=utf-8"), "an HTML page (Content-Type: text/html), not the file: a "
                                                   "login or error page?"),
])
def test_a_reply_that_is_not_the_files_bytes_is_refused_when_it_comes(server, tmp_path: Path,
                                                                        header: tuple[str, str],
                                                                        said: str) -> None:
    # Only the md5 check found them, and its message offered to use the page with --md5.
    url, handler = server
    handler.payload = b"<html>sign in</html>"
    (tmp_path / "b.tar.part").write_bytes(b"x" * 10)  # a download begun: kept
    sent = handler.send_header

    def with_header(self, name: str, value: str) -> None:
        sent(self, name, value)
        if name == "Content-Length":
            sent(self, *header)

    handler.send_header = with_header
    with pytest.raises(FetchError) as info:
        download(f"{url}/blob", tmp_path / "b.tar", "0" * 32, progress=False)
    assert str(info.value) == f"{url}/blob: the server sent {said}"
    assert len(handler.requests) == 1 and [p.name for p in tmp_path.iterdir()] == ["b.tar.part"]
    assert (tmp_path / "b.tar.part").read_bytes() == b"x" * 10


@pytest.mark.parametrize("right", [True, False])
def test_a_body_with_a_content_encoding_is_downloaded_as_it_comes_and_the_md5_decides(
        server, tmp_path: Path, right: bool) -> None:
    # Apache's AddEncoding says gzip of a .tar.gz whose bytes are the file's own: refusing it (as for a day)
    # refused a good archive. A mismatch names the encoding.
    url, handler = server
    handler.payload = b"\x1f\x8b" + b"z" * 100
    sent = handler.send_header

    def with_header(self, name: str, value: str) -> None:
        sent(self, name, value)
        if name == "Content-Length":
            sent(self, "Content-Encoding", "gzip")

    handler.send_header = with_header
    md5 = hashlib.md5(handler.payload).hexdigest()
    if right:
        assert download(f"{url}/b.tar.gz", tmp_path / "b.tar", md5, progress=False).read_bytes() == \
            handler.payload
        return
    with pytest.raises(FetchError) as info:
        download(f"{url}/b.tar.gz", tmp_path / "b.tar", "0" * 32, progress=False)
    said = (f"md5 mismatch (expected {'0' * 32}, got {md5}); the server sent it with Content-Encoding: gzip, "
            "so these may be compressed bytes, not the archive's own; the download is kept as")
    assert said in str(info.value)


def test_a_server_error_names_its_status(server, tmp_path: Path) -> None:
    url, handler = server
    handler.fail_first = 10
    with pytest.raises(FetchError, match=r"download failed after 2 attempts \(HTTP 500 Internal Server "
                                         r"Error\); rerun to resume$"):
        download(f"{url}/blob", tmp_path / "b.tar", "0" * 32, progress=False, attempts=2)


def test_a_resumed_reply_of_another_version_of_the_file_starts_over(server, tmp_path: Path) -> None:
    """A server that ignores If-Range sent the rest of a changed file as a 206, spliced onto the old one's
    start: only the md5 check found it, a whole download later. Its ETag tells it apart at once."""
    url, handler = server
    old, new = b"a" * 1000, b"b" * 1000
    handler.payload, handler.etag, handler.drop_after = old, '"v1"', 400
    md5_new = hashlib.md5(new).hexdigest()
    with pytest.raises(FetchError, match="rerun to resume"):
        download(f"{url}/blob", tmp_path / "b.tar", md5_new, timeout_s=5, progress=False, attempts=1)
    handler.payload, handler.etag = new, '"v2"'
    sent = handler.do_GET

    def ignores_if_range(self) -> None:
        if self.headers.get("If-Range"):
            del self.headers["If-Range"]
            self.headers["If-Range"] = '"v2"'
        sent(self)

    handler.do_GET = ignores_if_range
    dest = download(f"{url}/blob", tmp_path / "b.tar", md5_new, timeout_s=5, progress=False)
    assert dest.read_bytes() == new and handler.requests[1:] == ["bytes=400-", None]


def test_local_folder_and_local_tar(hippo_subset: Path, tmp_path: Path) -> None:
    (hippo_subset / "imagesTr" / "._hippocampus_001.nii.gz").write_bytes(b"resource fork")
    data = tmp_path / "data"
    fetch_task(get_task("Task04_Hippocampus"), data, str(hippo_subset), progress=False)
    assert not list((data / "Task04_Hippocampus").rglob("._*"))
    archive, md5 = make_tar(hippo_subset, tmp_path / "t.tar")
    other = tmp_path / "other"
    with pytest.raises(FetchError, match=r"md5 mismatch \(expected .*\): not Task04_Hippocampus's official "
                       r"archive\? pass the md5 of your own with --md5$"):
        fetch_task(get_task("Task04_Hippocampus"), other, str(archive), progress=False)
    with pytest.raises(FetchError, match=r"md5 mismatch \(expected 0{32}, got [0-9a-f]+\)$"):  # no hint
        fetch_task(get_task("Task04_Hippocampus"), other, str(archive), "0" * 32, progress=False)
    fetch_task(get_task("Task04_Hippocampus"), other, str(archive), md5, progress=False)
    assert is_complete(other / "Task04_Hippocampus")


def test_only_http_urls(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="only http"):
        fetch_task(
            get_task("Task04_Hippocampus"), tmp_path, "ftp://example.org/x.tar", "0" * 32, progress=False
        )


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:abc/x.tar", "https://h:99999/x.tar",
                                 "http:///x.tar", "http://127.0.0.1:9/a\x01b", "http://127.0.0.1:9/a\tb",
                                 "http://127.0.0.1:9/a\x7f", "http://a b/x.tar",
                                 "http://" + "a" * 70 + "ö/x"])
def test_a_malformed_url_is_one_line_before_any_download(tmp_path: Path, url: str) -> None:
    # A control character was refused by http.client as a broken reply, retried 4 times.
    with pytest.raises(UsageError, match=r"^.*: not a valid URL \("):
        fetch_task(get_task("Task04_Hippocampus"), tmp_path, url, "0" * 32, progress=False)
    assert not (tmp_path / ".downloads").exists()


def test_a_url_of_non_ascii_characters_is_sent_percent_encoded(server, tmp_path: Path) -> None:
    # http.client sends ASCII only: a UnicodeEncodeError traceback.
    url, handler = server
    handler.payload = b"x" * 100
    md5 = hashlib.md5(handler.payload).hexdigest()
    assert download(f"{url}/ök a.tar?b=ü", tmp_path / "t.tar", md5, progress=False).read_bytes() == b"x" * 100
    assert handler.paths == ["/%C3%B6k%20a.tar?b=%C3%BC"]


def test_an_upper_case_scheme_is_an_http_url(server, tmp_path: Path) -> None:
    # "HTTP://..." was refused: only http(s) URLs and local paths are accepted.
    url, handler = server
    handler.payload = b"x" * 100
    with pytest.raises(FetchError, match="md5 mismatch"):
        fetch_task(get_task("Task04_Hippocampus"), tmp_path, "HTTP" + url[4:] + "/t.tar", "0" * 32,
                   progress=False)
    assert handler.paths == ["/t.tar"]


@pytest.mark.parametrize("userinfo", ["user:secret@", "user@", ":secret@"])
def test_a_url_with_a_user_or_password_is_refused_without_showing_it(server, tmp_path: Path,
                                                                      userinfo: str) -> None:
    # urllib sends neither (it looked up the host "user:secret@127.0.0.1"): retried 4 times, then "rerun".
    url, handler = server
    given = url.replace("://", f"://{userinfo}") + "/t.tar"
    with pytest.raises(UsageError) as info:
        fetch_task(get_task("Task04_Hippocampus"), tmp_path, given, "0" * 32, progress=False)
    shown = given.replace("secret", "***")
    assert str(info.value) == (f"{shown}: a URL with a user or password is not fetched (they would not be "
                               "sent); download the archive yourself and pass it with --source FILE")
    assert handler.paths == [] and not (tmp_path / ".downloads").exists()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(params=["filter", "no filter"])
def tar_filters(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """An archive test runs twice: with tarfile's "data" filter, and as on a Python without extraction
    filters (before 3.10.12 and 3.11.4: `extractall` takes no `filter` and filters nothing), where the fetch's
    own checks alone stand between an archive and the disk."""
    from medseg_bench.data import archive

    if request.param == "filter":
        if not archive.TAR_FILTERS:
            pytest.skip("this Python's tarfile has no extraction filters")
        return request.param
    monkeypatch.setattr(archive, "TAR_FILTERS", False)
    if hasattr(tarfile, "data_filter"):  # this Python has filters: extract as an older one does
        extractall = tarfile.TarFile.extractall

        def unfiltered(self: tarfile.TarFile, path: str | Path = ".", members: object = None, *,
                       numeric_owner: bool = False) -> None:
            # No filter at all: "fully_trusted" (the default until 3.14, "data" since).
            options = {"numeric_owner": numeric_owner, "filter": "fully_trusted"}
            extractall(self, path, members, **options)  # type: ignore[arg-type]

        monkeypatch.setattr(tarfile.TarFile, "extractall", unfiltered)
    return request.param


@pytest.mark.parametrize("entry", ["../evil.txt", "/abs/evil.txt", "link", "dev", "fifo", "hard link"])
def test_unsafe_archives_are_refused(entry: str, tmp_path: Path, tar_filters: str) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        _add_bytes(tar, "Task04_Hippocampus/dataset.json", b"{}")
        if entry == "link":
            info = tarfile.TarInfo("Task04_Hippocampus/link")
            info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
            tar.addfile(info)
        elif entry in ("dev", "fifo"):
            info = tarfile.TarInfo("Task04_Hippocampus/dev")
            info.type = tarfile.CHRTYPE if entry == "dev" else tarfile.FIFOTYPE
            tar.addfile(info)
        elif entry == "hard link":
            info = tarfile.TarInfo("Task04_Hippocampus/hard")
            info.type, info.linkname = tarfile.LNKTYPE, "Task04_Hippocampus/../../evil.txt"
            tar.addfile(info)
        else:
            _add_bytes(tar, entry)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    data = tmp_path / "data"
    with pytest.raises(FetchError, match="unsafe archive entry"):
        fetch_task(get_task("Task04_Hippocampus"), data, str(archive), md5, progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (data / "Task04_Hippocampus").exists()


def test_truncated_archive(hippo_subset: Path, tmp_path: Path, tar_filters: str) -> None:
    archive, _ = make_tar(hippo_subset, tmp_path / "t.tar")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    md5 = hashlib.md5(cut.read_bytes()).hexdigest()
    with pytest.raises((FetchError, DataError)):
        fetch_task(get_task("Task04_Hippocampus"), tmp_path / "data", str(cut), md5, progress=False)
    assert not (tmp_path / "data" / "Task04_Hippocampus").exists()


def test_hanging_server_times_out_with_a_clear_message(hanging_server: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with pytest.raises(
        FetchError, match=r"download failed after 4 attempts \(no data from the server for 0.2 s"
    ):
        fetch_task(
            get_task("Task04_Hippocampus"),
            data,
            f"{hanging_server}/t.tar",
            "0" * 32,
            timeout_s=0.2,
            progress=False,
        )
    assert not (data / "Task04_Hippocampus").exists() and not list(data.glob(".*.partial"))


def test_subset_of_the_catalog_warns_but_works(hippo_subset: Path, tmp_path: Path) -> None:
    outcome = fetch_task(get_task("Task04_Hippocampus"), tmp_path / "data", str(hippo_subset), progress=False)
    assert is_complete(outcome.folder)
    assert (
        len(outcome.warnings) == 1
        and "10 training cases, the catalog lists 260: a subset" in outcome.warnings[0]
    )


def test_a_data_dir_with_a_backslash_in_its_name(hippo_subset: Path, tmp_path: Path) -> None:
    # The warning names files in the data dir: its path went into re.sub as a template ("bad escape \\d").
    data = tmp_path / "d8\\data"
    bad = hippo_subset / "labelsTr" / "hippocampus_001.nii.gz"
    bad.write_bytes(bad.read_bytes()[:100])
    outcome = fetch_task(get_task("Task04_Hippocampus"), data, str(hippo_subset), progress=False)
    assert is_complete(outcome.folder) and outcome.report is not None
    kept = data / "Task04_Hippocampus" / "labelsTr" / "hippocampus_001.nii.gz"
    assert [problem.file for problem in outcome.report.problems] == [str(kept)]  # named where it is now


def test_strict_fetch_keeps_nothing_when_a_case_is_bad(home: Path, tmp_path: Path) -> None:
    from tests.conftest import make_synthetic_task, write_task_file

    write_task_file(home, "Task90_Synth")
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth")
    (src / "labelsTr" / "case_002.nii.gz").unlink()
    data = tmp_path / "data"
    with pytest.raises(
        DataError, match=r"labelsTr/case_002.nii.gz: label file missing \(--strict: nothing was kept"
    ):
        fetch_task(get_task("Task90_Synth"), data, str(src), progress=False, strict=True)
    assert not (data / "Task90_Synth").exists() and not list(data.glob(".*.partial"))
    relaxed = fetch_task(get_task("Task90_Synth"), data, str(src), progress=False)
    assert relaxed.report is not None and relaxed.report.excluded == {"case_002"}


def test_bad_files_are_named_where_the_user_has_them(home: Path, tmp_path: Path) -> None:
    """Kept: named in the task folder, not the staging copy; nothing kept: in the source (ARCHIVE:member)."""
    from tests.conftest import make_synthetic_task, write_task_file

    write_task_file(home, "Task90_Synth")
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth")
    (src / "labelsTr" / "case_002.nii.gz").unlink()
    archive, md5 = make_tar(src, tmp_path / "synth.tar")
    data = tmp_path / "data"
    task = get_task("Task90_Synth")
    with pytest.raises(DataError) as folder_error:
        fetch_task(task, data, str(src), progress=False, strict=True)
    assert str(folder_error.value).startswith(f"{src}/labelsTr/case_002.nii.gz: label file missing")
    with pytest.raises(DataError) as tar_error:
        fetch_task(task, data, str(archive), md5, progress=False, strict=True)
    assert str(tar_error.value).startswith(f"{archive}:Task90_Synth/labelsTr/case_002.nii.gz: label file")
    kept = fetch_task(task, data, str(archive), md5, progress=False)
    assert kept.report is not None
    assert [p.file for p in kept.report.problems] == [str(data / "Task90_Synth/labelsTr/case_002.nii.gz")]
    marker = json.loads((data / "Task90_Synth" / MARKER).read_text())
    assert [e["file"] for e in marker["excluded"]] == [str(data / "Task90_Synth/labelsTr/case_002.nii.gz")]


def test_no_usable_case_is_an_error_and_nothing_is_kept(home: Path, tmp_path: Path) -> None:
    from tests.conftest import make_synthetic_task, write_task_file

    write_task_file(home, "Task90_Synth")
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=3)
    for label in (src / "labelsTr").iterdir():
        label.unlink()
    data = tmp_path / "data"
    with pytest.raises(DataError, match=r"case_000.nii.gz: label file missing and 2 more problem\(s\) in 2 "
                                        r"case\(s\) \(no usable training case: nothing was kept\)"):
        fetch_task(get_task("Task90_Synth"), data, str(src), progress=False)
    assert not (data / "Task90_Synth").exists() and not list(data.glob(".*.partial"))


def test_staging_left_by_a_kill_after_the_rename_is_removed(hippo_subset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    task = get_task("Task04_Hippocampus")
    fetch_task(task, data, str(hippo_subset), progress=False)
    (data / ".Task04_Hippocampus.partial").mkdir()  # what a kill between rename and clean-up leaves
    again = fetch_task(task, data, str(hippo_subset), progress=False)
    assert again.already_present and not (data / ".Task04_Hippocampus.partial").exists()


def test_an_unmarked_task_folder_is_never_deleted_it_can_be_checked_in_place(hippo_subset: Path,
                                                                             tmp_path: Path) -> None:
    import shutil

    task, data = get_task("Task04_Hippocampus"), tmp_path / "data"
    placed = data / "Task04_Hippocampus"  # the user put the dataset where fetch would
    shutil.copytree(hippo_subset, placed)
    files = sorted(p.relative_to(placed) for p in placed.rglob("*"))
    for source in (None, str(hippo_subset), str(tmp_path / "missing.tar")):
        with pytest.raises(DataError, match=f"{placed}: a folder that `medseg-bench fetch` did not make .* "
                                            f"`medseg-bench fetch Task04_Hippocampus --source {placed} "
                                            f"--data-dir {data}`"):
            fetch_task(task, data, source, "0" * 32, mirror="http://127.0.0.1:9", progress=False)
        assert sorted(p.relative_to(placed) for p in placed.rglob("*")) == files
    in_place = fetch_task(task, data, str(placed), progress=False)
    assert not in_place.already_present and in_place.report is not None
    assert len(in_place.report.usable_cases) == 10
    assert sorted(p.relative_to(placed) for p in placed.rglob("*")) == sorted([*files, Path(MARKER)])
    marker = json.loads((placed / MARKER).read_text())
    assert marker["source"] == str(placed.resolve()) and marker["md5"] is None  # a folder has no checksum
    assert fetch_task(task, data, None, progress=False).already_present


def test_strict_refuses_a_complete_task_that_has_excluded_cases(hippo_subset: Path, tmp_path: Path) -> None:
    (hippo_subset / "labelsTr" / "hippocampus_001.nii.gz").unlink()
    task, data = get_task("Task04_Hippocampus"), tmp_path / "data"
    fetch_task(task, data, str(hippo_subset), progress=False)
    with pytest.raises(DataError, match=r"hippocampus_001.nii.gz: label file missing \(--strict: .* was "
                                        r"fetched with excluded cases; fix them, then run `medseg-bench "
                                        rf"validate Task04_Hippocampus --strict --data-dir {data}`\)"):
        fetch_task(task, data, None, progress=False, strict=True)
    assert fetch_task(task, data, None, progress=False).already_present


def test_a_bad_dataset_json_is_named_where_the_user_has_it(hippo_subset: Path, tmp_path: Path) -> None:
    (hippo_subset / "dataset.json").write_text('{"training": [')
    archive, md5 = make_tar(hippo_subset, tmp_path / "t.tar")
    task = get_task("Task04_Hippocampus")
    with pytest.raises(DataError) as folder_error:
        fetch_task(task, tmp_path / "d1", str(hippo_subset), progress=False)
    assert str(folder_error.value).startswith(f"{hippo_subset}/dataset.json: invalid JSON")
    with pytest.raises(DataError) as tar_error:
        fetch_task(task, tmp_path / "d2", str(archive), md5, progress=False)
    assert str(tar_error.value).startswith(f"{archive}:Task04_Hippocampus/dataset.json: invalid JSON")


@pytest.mark.parametrize(("kind", "error", "message"), [
    ("empty source", UsageError, "--source is empty"),
    ("bad md5", UsageError, "--md5 'zz' is not an md5 checksum"),
    ("not a file or folder", FetchError, "/dev/null: not a folder or a .tar archive"),
    ("zip", FetchError, "z.zip: not a readable tar archive (file could not be opened successfully)"),
    ("data dir in source", UsageError, "the data folder is inside the source folder"),
    ("two tasks", DataError, "several task folders (A, B); one task per archive"),
])
def test_bad_sources_are_one_line_errors(kind: str, error: type[Exception], message: str, hippo_subset: Path,
                                         tmp_path: Path) -> None:
    data, md5, source = tmp_path / "data", None, str(hippo_subset)
    if kind == "empty source":
        source = ""
    elif kind == "bad md5":
        md5 = "zz"
    elif kind == "not a file or folder":
        source = "/dev/null"
    elif kind == "zip":
        path = tmp_path / "z.zip"
        path.write_bytes(b"PK\x03\x04 not a tar")
        source, md5 = str(path), hashlib.md5(path.read_bytes()).hexdigest()
    elif kind == "data dir in source":
        data = hippo_subset / "data"
    else:
        path = tmp_path / "two.tar"
        with tarfile.open(path, "w") as tar:
            _add_bytes(tar, "A/dataset.json", b"{}")
            _add_bytes(tar, "B/dataset.json", b"{}")
        source, md5 = str(path), hashlib.md5(path.read_bytes()).hexdigest()
    with pytest.raises(error) as info:
        fetch_task(get_task("Task04_Hippocampus"), data, source, md5, progress=False)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (hippo_subset / "data").exists()


def _tar_with_link(task: Path, archive: Path, name: str, target: str, then: bytes | None = None) -> str:
    """Write `archive`: the task folder, then a link `name` (in it) to `target`, then, with `then`, a file
    of the link's name holding it; returns its md5."""
    with tarfile.open(archive, "w") as tar:
        tar.add(task, arcname="Task04_Hippocampus")
        info = tarfile.TarInfo(f"Task04_Hippocampus/{name}")
        info.type, info.linkname = tarfile.SYMTYPE, target
        tar.addfile(info)
        if then is not None:
            _add_bytes(tar, f"Task04_Hippocampus/{name}", then)
    return hashlib.md5(archive.read_bytes()).hexdigest()


def test_a_link_that_stays_inside_the_task_is_extracted(hippo_subset: Path, tmp_path: Path,
                                                         tar_filters: str) -> None:
    archive = tmp_path / "t.tar"
    md5 = _tar_with_link(hippo_subset, archive, "imagesTs/alias.nii.gz", "../imagesTr/hippocampus_001.nii.gz")
    fetch_task(get_task("Task04_Hippocampus"), tmp_path / "data", str(archive), md5, progress=False)
    alias = tmp_path / "data" / "Task04_Hippocampus" / "imagesTs" / "alias.nii.gz"
    assert alias.is_symlink() and alias.read_bytes()[:2] == b"\x1f\x8b"


def test_a_task_folder_that_is_a_link_is_refused(hippo_subset: Path, tmp_path: Path,
                                                 tar_filters: str) -> None:
    # The link (to a folder inside the archive) was moved into place as DATA_DIR/Task04_Hippocampus, and the
    # staging folder it led into removed: fetch said "10 usable training cases" and left a link to
    # DATA_DIR/real/Task04_Hippocampus, a folder outside the task that does not exist (or another one).
    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(hippo_subset, arcname="real/Task04_Hippocampus")
        info = tarfile.TarInfo("Task04_Hippocampus")
        info.type, info.linkname = tarfile.SYMTYPE, "real/Task04_Hippocampus"
        tar.addfile(info)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    data = tmp_path / "data"
    with pytest.raises(FetchError, match=r"t.tar: unsafe archive entry 'Task04_Hippocampus' \(the task "
                                         r"folder is a link\)$"):
        fetch_task(get_task("Task04_Hippocampus"), data, str(archive), md5, progress=False)
    assert [p.name for p in data.iterdir()] == [".Task04_Hippocampus.fetch.lock"]


@pytest.mark.parametrize(("links", "why"), [
    ([("b/c", ".."), ("a", "b/c/..")], "link pointing outside the task folder"),  # each alone stays inside
    ([("sub", "imagesTr"), ("sub2", "sub/../..")], "link pointing outside the task folder"),
    ([("a", "b"), ("b", "a")], "a loop of links"),
])
def test_a_chain_of_links_out_of_the_task_is_refused(hippo_subset: Path, tmp_path: Path,
                                                     links: list[tuple[str, str]], why: str,
                                                     tar_filters: str) -> None:
    archive = tmp_path / "chain.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(hippo_subset, arcname="Task04_Hippocampus")
        for name, target in links:
            if "/" in name:
                folder = tarfile.TarInfo(f"Task04_Hippocampus/{name.rsplit('/', 1)[0]}")
                folder.type = tarfile.DIRTYPE
                tar.addfile(folder)
            info = tarfile.TarInfo(f"Task04_Hippocampus/{name}")
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    data = tmp_path / "data"
    with pytest.raises(FetchError, match=why) as info:
        fetch_task(get_task("Task04_Hippocampus"), data, str(archive), md5, progress=False)
    assert "\n" not in str(info.value)
    assert [p.name for p in data.iterdir()] == [".Task04_Hippocampus.fetch.lock"]  # staging removed


@pytest.mark.parametrize(("code", "reason"), [("ENOSPC", "No space left on device"),
                                            ("EDQUOT", "Disk quota exceeded")])
def test_a_full_disk_is_named_as_such_not_blamed_on_the_source(hippo_subset: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, code: str,
                                                                reason: str) -> None:
    import errno
    import shutil

    from medseg_bench.errors import FileSystemError

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(getattr(errno, code), reason)

    archive, md5 = make_tar(hippo_subset, tmp_path / "t.tar")
    task, data = get_task("Task04_Hippocampus"), tmp_path / "data"
    monkeypatch.setattr(tarfile.TarFile, "extractall", full)
    with pytest.raises(FileSystemError, match=f"^{data}: cannot extract {archive} here \\({reason}\\)$"):
        fetch_task(task, data, str(archive), md5, progress=False)
    monkeypatch.setattr(shutil, "copyfile", full)  # what copytree's copy2 calls
    with pytest.raises(FileSystemError, match=rf"hippocampus_\d+.nii.gz: cannot copy it into .*data "
                                              rf"\({reason}\) and \d+ more file"):
        fetch_task(task, data, str(hippo_subset), progress=False)


def test_a_disk_that_fills_during_the_extraction_names_the_entry_it_was_writing(
        hippo_subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The room is checked before anything is written; another process can still fill the disk after it."""
    import errno

    from medseg_bench.errors import FileSystemError

    archive, md5 = make_tar(hippo_subset, tmp_path / "t.tar")
    written = []
    makefile = tarfile.TarFile.makefile

    def fills(self: tarfile.TarFile, tarinfo: tarfile.TarInfo, targetpath: str) -> None:
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(tarinfo.name)
        makefile(self, tarinfo, targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", fills)
    data = tmp_path / "data"
    with pytest.raises(FileSystemError) as info:
        fetch_task(get_task("Task04_Hippocampus"), data, str(archive), md5, progress=False)
    message = str(info.value)
    assert message.startswith(f"{data}: cannot extract {archive} here (No space left on device, at entry "
                              "'Task04_Hippocampus/"), message
    assert message.endswith(".nii.gz')") and "\n" not in message
    assert [p.name for p in data.iterdir()] == [".Task04_Hippocampus.fetch.lock"]  # staging removed
    assert not (data / "Task04_Hippocampus").exists() and not list(data.glob(".*.partial"))


def test_a_full_disk_at_the_marker_names_it_in_the_task_folder_not_the_staging_copy(
        hippo_subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A disk that held the cases but not the marker said
    # "DATA/.Task04_Hippocampus.partial/Task04_Hippocampus/.medseg-bench-valid.json: No space left on device"
    import errno

    from medseg_bench.data import fetch
    from medseg_bench.errors import FileSystemError

    def full(path: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    archive, md5 = make_tar(hippo_subset, tmp_path / "t.tar")
    task, data = get_task("Task04_Hippocampus"), tmp_path / "data"
    monkeypatch.setattr(fetch, "write_json_atomic", full)
    for source, checksum in ((str(hippo_subset), None), (str(archive), md5)):
        with pytest.raises(FileSystemError) as info:
            fetch_task(task, data, source, checksum, progress=False)
        assert str(info.value) == (f"{data / 'Task04_Hippocampus' / MARKER}: No space left on device; the "
                                   "task folder could not be finished, nothing was kept")
        assert info.value.exit_code == 7
        assert [p.name for p in data.iterdir()] == [".Task04_Hippocampus.fetch.lock"]


def test_an_archive_larger_than_the_free_space_is_refused_before_extraction(
        hippo_subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tar.gz of zeros (a "tar bomb") filled the disk before extraction failed naming it: now nothing is
    # written. (On a disk that fills meanwhile, the error above still names it.)
    import shutil

    from medseg_bench.data import archive as archive_module
    from medseg_bench.errors import FileSystemError

    archive, md5 = make_tar(hippo_subset, tmp_path / "t.tar")
    size = sum(p.stat().st_size for p in hippo_subset.rglob("*") if p.is_file())
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(archive_module.shutil, "disk_usage", lambda path: usage._replace(free=size - 1))
    data = tmp_path / "data"
    with pytest.raises(FileSystemError, match=f"^{data}: cannot extract {archive} here \\(its files hold "
                                              f"{size} bytes, {size - 1} are free\\)$"):
        fetch_task(get_task("Task04_Hippocampus"), data, str(archive), md5, progress=False)
    assert [p.name for p in data.iterdir()] == [".Task04_Hippocampus.fetch.lock"]
    monkeypatch.setattr(archive_module.shutil, "disk_usage", lambda path: usage._replace(free=size))
    fetch_task(get_task("Task04_Hippocampus"), data, str(archive), md5, progress=False)


def test_an_archive_of_too_many_entries_is_refused_while_they_are_listed(
        hippo_subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tar of millions of empty files (a few MB compressed) was listed whole before any check, then
    # extracted: hours, and the disk's inodes. The listing stops at the bound, before anything is written
    from medseg_bench.data import archive as archive_module

    archive, md5 = make_tar(hippo_subset, tmp_path / "t.tar")
    entries = len(tarfile.open(archive).getmembers())
    bound = 5
    monkeypatch.setattr(archive_module, "MAX_ARCHIVE_MEMBERS", bound, raising=False)
    read: list[str] = []
    listed = tarfile.TarFile.next

    def counted(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
        member = listed(tar)
        if member is not None:
            read.append(member.name)
        return member

    monkeypatch.setattr(tarfile.TarFile, "next", counted)
    data = tmp_path / "data"
    with pytest.raises(FetchError, match=rf"^{archive}: too many entries \(more than {bound}; an MSD task "
                                         r"archive holds a few thousand at most\)$"):
        fetch_task(get_task("Task04_Hippocampus"), data, str(archive), md5, progress=False)
    assert len(set(read)) == bound + 1 < entries  # listed no further than the first entry past the bound
    assert [p.name for p in data.iterdir()] == [".Task04_Hippocampus.fetch.lock"]
    monkeypatch.setattr(archive_module, "MAX_ARCHIVE_MEMBERS", entries)
    fetch_task(get_task("Task04_Hippocampus"), data, str(archive), md5, progress=False)


def test_an_archive_of_more_entries_than_free_inodes_is_refused_before_extraction(
        hippo_subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    from types import SimpleNamespace

    from medseg_bench.data import archive as archive_module
    from medseg_bench.errors import FileSystemError

    archive, md5 = make_tar(hippo_subset, tmp_path / "t.tar")
    entries = len(tarfile.open(archive).getmembers())
    real = os.statvfs(tmp_path)

    def inodes(free: int) -> SimpleNamespace:  # the file system's own figures, but for its free inodes
        fields = {name: getattr(real, name) for name in dir(real) if name.startswith("f_")}
        return SimpleNamespace(**{**fields, "f_files": max(real.f_files, free), "f_favail": free})

    monkeypatch.setattr(archive_module.os, "statvfs", lambda path: inodes(entries - 1))
    data = tmp_path / "data"
    with pytest.raises(FileSystemError, match=f"^{data}: cannot extract {archive} here \\(its {entries} "
                                              f"entries need as many inodes, {entries - 1} are free\\)$"):
        fetch_task(get_task("Task04_Hippocampus"), data, str(archive), md5, progress=False)
    monkeypatch.setattr(archive_module.os, "statvfs", lambda path: inodes(entries))
    fetch_task(get_task("Task04_Hippocampus"), data, str(archive), md5, progress=False)


@pytest.mark.parametrize(("reply", "reason"), [
    (b"HELLO WORLD\r\n\r\n", "BadStatusLine"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nabc", "IncompleteRead"),
])
def test_a_broken_server_reply_is_retried_then_one_line(reply: bytes, reason: str, tmp_path: Path) -> None:
    with _raw_server(reply) as url, pytest.raises(
            FetchError, match=rf"{url}: download failed after 2 attempts \({reason}"):
        download(url, tmp_path / "t.tar", "0" * 32, timeout_s=5, progress=False, attempts=2)


def test_a_folder_holding_one_task_folder_is_searched_one_level_down(hippo_subset: Path,
                                                                      tmp_path: Path) -> None:
    (hippo_subset / "labelsTr" / "hippocampus_001.nii.gz").unlink()
    # The folder an archive was extracted into: searched one level down, as an archive is.
    outcome = fetch_task(get_task("Task04_Hippocampus"), tmp_path / "data", str(hippo_subset.parent),
                         progress=False)
    assert outcome.report is not None and len(outcome.report.usable_cases) == 9
    with pytest.raises(DataError) as strict:
        fetch_task(get_task("Task04_Hippocampus"), tmp_path / "d2", str(hippo_subset.parent), progress=False,
                   strict=True)
    assert str(strict.value).startswith(f"{hippo_subset}/labelsTr/hippocampus_001.nii.gz: label file missing")


def test_a_stalled_download_keeps_every_byte_received(tmp_path: Path) -> None:
    # `read(1 MiB)` waited for a whole MiB: a server that stalled mid-way took what had come with the timeout.
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 300_000
    with _raw_server(reply, hold=True) as url, pytest.raises(
            FetchError, match=r"after 1 attempt \(no data from the server for 0.5 s"):
        download(url, tmp_path / "t.tar", "0" * 32, timeout_s=0.5, progress=False, attempts=1)
    assert (tmp_path / "t.tar.part").stat().st_size == 300_000  # the next fetch resumes from there


@contextlib.contextmanager
def _raw_server(reply: bytes, hold: bool = False) -> Iterator[str]:
    """A URL whose server answers each request with the raw bytes `reply`, then closes the connection (with
    `hold`: keeps it open, sending nothing more, until the test is done)."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    release = threading.Event()

    def serve() -> None:
        try:
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(4096)
                    conn.sendall(reply)
                    if hold:
                        release.wait(20)
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/t.tar"
    finally:
        release.set()
        listener.close()


@pytest.mark.parametrize("location", ["ftp://127.0.0.1:9/x.tar", "file:///etc/passwd", "http"])
def test_a_redirect_to_another_scheme_than_http_is_refused_at_once(location: str, tmp_path: Path,
                                                                   server) -> None:
    # urllib followed a redirect to ftp:// (no Range, no If-Range); one to file:// it refused, but the refusal
    # was retried as a broken reply, 4 times, then "rerun to resume". One to http(s) is followed.
    requests: list[str] = []
    if location == "http":
        mirror, handler = server
        handler.payload = b"archive"
        location = f"{mirror}/elsewhere.tar"

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            requests.append(self.path)
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/t.tar"
    try:
        if location.startswith("http"):
            md5 = hashlib.md5(b"archive").hexdigest()
            assert download(url, tmp_path / "t.tar", md5, progress=False).read_bytes() == b"archive"
            return
        with pytest.raises(FetchError) as error:
            download(url, tmp_path / "t.tar", "0" * 32, timeout_s=5, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert str(error.value) == f"{url}: the server redirects to {location}: only http(s) URLs are fetched"
    assert requests == ["/t.tar"] and not (tmp_path / "t.tar.part").exists()


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """Makes a tree read-only (files and folders, as /work/shared/data is); the modes come back afterwards
    so that pytest can remove tmp_path. (Root ignores the bits: the tests check the modes of the copies.)"""
    made: list[Path] = []

    def make(folder: Path) -> None:
        for path in sorted(folder.rglob("*"), reverse=True):  # deepest first
            path.chmod(0o555 if path.is_dir() else 0o444)
        folder.chmod(0o555)
        made.append(folder)

    yield make
    for folder in made:
        if not folder.exists():  # removed by the test
            continue
        folder.chmod(0o755)
        for path in folder.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)


def _not_owner_writable(folder: Path, files: bool = True) -> list[str]:
    import stat

    return [str(p) for p in [folder, *folder.rglob("*")] if (files or p.is_dir())
            and not p.lstat().st_mode & stat.S_IWUSR]


def test_a_read_only_source_folder_is_imported_as_a_writable_copy(hippo_subset: Path, tmp_path: Path,
                                                                  read_only: Callable[[Path], None]) -> None:
    """A non-root user could not mark the copy (copytree kept the modes: "Permission denied", exit 7)."""
    read_only(hippo_subset)
    assert _not_owner_writable(hippo_subset)
    outcome = fetch_task(get_task("Task04_Hippocampus"), tmp_path / "data", str(hippo_subset), progress=False)
    assert is_complete(outcome.folder) and _not_owner_writable(outcome.folder) == []


def test_a_read_only_staging_folder_left_by_an_older_version_is_removed(
        hippo_subset: Path, tmp_path: Path, read_only: Callable[[Path], None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An older version's copy of a read-only source stayed read-only; rmtree cannot empty a read-only
    folder (for a non-root user), so every fetch after failed with "Permission denied". Its folders are made
    writable before it is removed."""
    import shutil

    from medseg_bench.data import fetch

    data = tmp_path / "data"
    left = data / ".Task04_Hippocampus.partial"
    shutil.copytree(hippo_subset, left / "Task04_Hippocampus")
    read_only(left)
    removed: list[list[str]] = []
    rmtree = shutil.rmtree

    def checking_rmtree(path: Path, *args: object, **kwargs: object) -> None:
        removed.append(_not_owner_writable(Path(path), files=False))  # a file's own mode does not matter
        rmtree(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fetch.shutil, "rmtree", checking_rmtree)
    outcome = fetch_task(get_task("Task04_Hippocampus"), data, str(hippo_subset), progress=False)
    assert is_complete(outcome.folder) and not left.exists()
    assert removed and removed[0] == []  # every folder was owner-writable when it was removed


def test_a_path_through_links_that_lead_out_later_is_refused(tmp_path: Path, tar_filters: str) -> None:
    """`p -> q/..` points inside while `q` does not exist; `q -> ..` points inside too; together `p` is the
    folder above the extraction folder, and `p/evil.txt` would be written there. Each entry is checked through
    the links on disk just before it is written, with or without tarfile's filter."""
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        _add_bytes(tar, "Task04_Hippocampus/dataset.json", b"{}")
        for name, target in (("p", "q/.."), ("q", "..")):
            info = tarfile.TarInfo(f"Task04_Hippocampus/{name}")
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        _add_bytes(tar, "Task04_Hippocampus/p/evil.txt")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    data = tmp_path / "data"
    with pytest.raises(FetchError, match=r"evil.tar: unsafe archive entry 'Task04_Hippocampus/p/evil.txt' "
                                         r"\(written through a link pointing outside\)$"):
        fetch_task(get_task("Task04_Hippocampus"), data, str(archive), md5, progress=False)
    assert not list(tmp_path.rglob("evil.txt"))


def test_a_file_entry_after_a_link_of_its_name_is_refused(hippo_subset: Path, tmp_path: Path,
                                                          tar_filters: str) -> None:
    """A link `imagesTr/zz.nii.gz -> ../dataset.json`, then a file of that name: tarfile wrote the file
    through the link, over dataset.json, and fetch blamed the archive's dataset.json, which is intact."""
    archive = tmp_path / "dup.tar"
    md5 = _tar_with_link(hippo_subset, archive, "imagesTr/zz.nii.gz", "../dataset.json", then=b"overwritten!")
    data = tmp_path / "data"
    with pytest.raises(FetchError, match=r"dup.tar: entry 'Task04_Hippocampus/imagesTr/zz.nii.gz' cannot be "
                                         r"extracted \(the archive holds a link of that name before it, "):
        fetch_task(get_task("Task04_Hippocampus"), data, str(archive), md5, progress=False)
    assert [p.name for p in data.iterdir()] == [".Task04_Hippocampus.fetch.lock"]  # staging removed


def test_extracted_entries_are_the_owners_without_setuid_bits(hippo_subset: Path, tmp_path: Path,
                                                               tar_filters: str) -> None:
    """As tarfile's "data" filter leaves them, also without it: files and folders owner-writable (a read-only
    archive, like a read-only folder, gave a task folder fetch could not mark), no setuid or setgid bit, no
    write for others, owned by whoever extracts (root extracting took the archive's owners)."""
    import os
    import stat

    def read_only(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mode = 0o555 if info.isdir() else 0o444
        info.uid, info.gid, info.uname, info.gname = 4321, 4321, "someone", "others"
        return info

    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(hippo_subset, arcname="Task04_Hippocampus", filter=read_only)
        for name, mode in (("setuid.sh", 0o4755), ("setgid", 0o2777)):
            info = tarfile.TarInfo(f"Task04_Hippocampus/imagesTs/{name}")
            info.size, info.mode = 1, mode
            tar.addfile(info, io.BytesIO(b"x"))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    outcome = fetch_task(get_task("Task04_Hippocampus"), tmp_path / "data", str(archive), md5, progress=False)
    modes = {p.relative_to(outcome.folder).as_posix(): p.lstat() for p in outcome.folder.rglob("*")}
    assert _not_owner_writable(outcome.folder) == []
    privileged = stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH
    assert [name for name, st in modes.items() if st.st_mode & privileged] == []
    assert stat.S_IMODE(modes["imagesTs/setuid.sh"].st_mode) == 0o755
    assert {(st.st_uid, st.st_gid) for st in modes.values()} == {(os.geteuid(), os.getegid())}


@pytest.mark.parametrize(("order", "entry", "why"), [
    ("after", "Task04_Hippocampus/imagesTr", "Is a directory: the archive also holds a folder of that name"),
    ("before", "Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz",
     "Not a directory: the archive holds a file where a folder on its path should be"),
])
def test_a_file_and_a_folder_of_one_name_are_blamed_on_the_archive(
        hippo_subset: Path, tmp_path: Path, order: str, entry: str, why: str, tar_filters: str) -> None:
    """Not on the disk ("DATA_DIR: cannot extract ARCHIVE here (Is a directory)", exit 7): exit 4, with the
    entry."""
    archive = tmp_path / "clash.tar"
    with tarfile.open(archive, "w") as tar:
        if order == "before":
            _add_bytes(tar, "Task04_Hippocampus/imagesTr")
        tar.add(hippo_subset, arcname="Task04_Hippocampus")
        if order == "after":
            _add_bytes(tar, "Task04_Hippocampus/imagesTr")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    data = tmp_path / "data"
    with pytest.raises(FetchError) as info:
        fetch_task(get_task("Task04_Hippocampus"), data, str(archive), md5, progress=False)
    assert str(info.value) == f"{archive}: entry '{entry}' cannot be extracted ({why})"
    assert not (data / "Task04_Hippocampus").exists() and not list(data.glob(".*.partial"))


def test_the_command_suggested_for_a_folder_in_the_way_can_be_copied(hippo_subset: Path,
                                                                      tmp_path: Path) -> None:
    """Its path is quoted for the shell: a data folder with a space in its name."""
    import shlex
    import shutil

    data = tmp_path / "my data"
    placed = data / "Task04_Hippocampus"
    shutil.copytree(hippo_subset, placed)
    with pytest.raises(DataError) as info:
        fetch_task(get_task("Task04_Hippocampus"), data, str(hippo_subset), progress=False)
    command = str(info.value).split("`")[-2]
    assert command == f"medseg-bench fetch Task04_Hippocampus --source '{placed}' --data-dir '{data}'"
    assert shlex.split(command)[-3:] == [str(placed), "--data-dir", str(data)]


@pytest.mark.parametrize("kind", ["file outside", "folder outside", "folder above", "loop"])
def test_a_link_in_an_imported_folder_leading_out_or_to_a_folder_is_refused(kind: str, hippo_subset: Path,
                                                                          tmp_path: Path) -> None:
    """The copy followed links: a file outside the folder (a secret) was copied into the task, a link to a
    folder copied that folder's whole tree (to a folder above it: without end)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    link = {"file outside": hippo_subset / "imagesTr" / "extra.nii.gz",
            "folder outside": hippo_subset / "imagesTs",
            "folder above": hippo_subset / "imagesTr" / "up",
            "loop": hippo_subset / "imagesTr" / "self.nii.gz"}[kind]
    target = {"file outside": secret, "folder outside": tmp_path, "folder above": Path(".."),
              "loop": link}[kind]
    link.symlink_to(target)
    data = tmp_path / "data"
    with pytest.raises(DataError, match=rf"^{link}: a link "):
        fetch_task(get_task("Task04_Hippocampus"), data, str(hippo_subset), progress=False)
    assert not (data / "Task04_Hippocampus").exists()


@pytest.mark.parametrize("where", ["task folder", "folder holding it"])
def test_a_folder_of_too_many_entries_is_refused_while_it_is_walked(
        where: str, hippo_subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An archive of millions of entries is refused at the first past the bound; a folder of millions was
    # walked whole (os.walk reads a folder's every name first), then copied: hours, and the disk's inodes
    import os
    import shutil

    from medseg_bench.data import fetch as fetch_module

    if where == "folder holding it":  # the folder an archive was extracted into: searched one level down
        for index in range(10):
            (hippo_subset.parent / f"notes{index}.txt").write_text("x")
    source = hippo_subset if where == "task folder" else hippo_subset.parent
    entries = sum(len(dirs) + len(names) for _, dirs, names in os.walk(source))
    bound = 5
    monkeypatch.setattr(fetch_module, "MAX_SOURCE_ENTRIES", bound, raising=False)
    listed: list[str] = []
    scandir = os.scandir

    class Counted:  # os.scandir's iterator, recording each entry as the system lists it
        def __init__(self, path: str | os.PathLike[str]) -> None:
            self.inner = scandir(path)

        def __enter__(self) -> Counted:
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.close()

        def __iter__(self) -> Counted:
            return self

        def __next__(self) -> os.DirEntry[str]:
            entry = next(self.inner)
            if Path(entry.path).is_relative_to(source):
                listed.append(entry.path)
            return entry

        def close(self) -> None:
            self.inner.close()

    copies: list[object] = []
    copytree = shutil.copytree

    def copied(*args: object, **kwargs: object) -> object:
        copies.append(args)
        return copytree(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", Counted)
    monkeypatch.setattr(shutil, "copytree", copied)
    data = tmp_path / "data"
    with pytest.raises(DataError, match=rf"^{source}: too many entries \(more than {bound}; an MSD task "
                                        r"folder holds a few thousand at most\)$"):
        fetch_task(get_task("Task04_Hippocampus"), data, str(source), progress=False)
    assert len(set(listed)) == bound + 1 < entries  # listed no further than the first entry past the bound
    assert not copies  # nothing copied
    assert [p.name for p in data.iterdir()] == [".Task04_Hippocampus.fetch.lock"]
    monkeypatch.setattr(fetch_module, "MAX_SOURCE_ENTRIES", entries)
    assert fetch_task(get_task("Task04_Hippocampus"), data, str(source), progress=False).report is not None
    assert copies


def test_a_link_to_a_file_inside_an_imported_folder_is_copied_as_that_file(hippo_subset: Path,
                                                                          tmp_path: Path) -> None:
    (hippo_subset / "imagesTr" / "copy.nii.gz").symlink_to("hippocampus_001.nii.gz")
    outcome = fetch_task(get_task("Task04_Hippocampus"), tmp_path / "data", str(hippo_subset), progress=False)
    copied = outcome.folder / "imagesTr" / "copy.nii.gz"
    assert not copied.is_symlink()
    assert copied.read_bytes() == (hippo_subset / "imagesTr" / "hippocampus_001.nii.gz").read_bytes()


@pytest.mark.parametrize("kind", ["named pipe", "socket", "device", "broken link"])
def test_what_is_neither_file_nor_folder_in_an_imported_folder_is_refused(kind: str, hippo_subset: Path,
                                                                        tmp_path: Path) -> None:
    """The copy blocked for ever opening a named pipe, and read a device (here a /dev/zero) without end."""
    import os
    import stat

    entry = hippo_subset / "imagesTr" / "odd.nii.gz"
    if kind == "named pipe":
        os.mkfifo(entry)
    elif kind == "socket":
        os.mknod(entry, 0o600 | stat.S_IFSOCK)
    elif kind == "device":
        try:
            os.mknod(entry, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        except PermissionError:
            pytest.skip("making a device node needs root")
    else:
        entry.symlink_to("missing.nii.gz")
    data = tmp_path / "data"
    why = {"named pipe": "a named pipe, not a file", "socket": "a socket, not a file",
           "device": "a device, not a file", "broken link": "a link to .*, which does not exist"}[kind]
    with pytest.raises(DataError, match=rf"^{entry}: {why}"):
        fetch_task(get_task("Task04_Hippocampus"), data, str(hippo_subset), progress=False)
    assert not (data / "Task04_Hippocampus").exists()
