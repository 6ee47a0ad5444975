"""Download an archive over HTTP(S): resumable (Range, with If-Range so a changed file is not spliced),
retried, md5-verified before it is kept.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import re
import shutil
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg_bench.errors import FetchError, FileSystemError

CHUNK_BYTES = 1 << 20


class Refused(FetchError):
    """A reply no retry can change (a redirect elsewhere than http(s), a page instead of the file): not
    retried."""


class RefusedRedirect(Refused):
    """A redirect to a URL that is not http(s), or not a URL: not retried."""


class _TargetFailed(urllib.error.URLError):
    """A redirect's target that could not be reached, `url`: the error named only the URL asked for."""

    def __init__(self, url: str, reason: Any) -> None:
        super().__init__(reason)
        self.url = url


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects followed to http(s) URLs only: urllib follows one to `ftp://` (no Range, no If-Range), and
    refused one to `file://` as an HTTPError that was retried as a broken reply; a Location that is not a URL
    (`http://[::1`) raised a ValueError traceback."""

    def http_error_302(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                       headers: http.client.HTTPMessage) -> Any:
        location = headers.get("location") or headers.get("uri")
        if not location:
            return super().http_error_302(req, fp, code, msg, headers)  # None: not followed
        try:
            target = urllib.parse.urljoin(req.full_url, location)
            urllib.parse.urlsplit(target).port  # noqa: B018 (ValueError for a port that is not a number)
        except ValueError as exc:
            raise RefusedRedirect(f"{req.full_url}: the server redirects to {location}, not a valid URL "
                                  f"({exc})") from None
        if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
            raise RefusedRedirect(f"{req.full_url}: the server redirects to {target}: only http(s) URLs "
                                  "are fetched")
        try:
            return super().http_error_302(req, fp, code, msg, headers)
        except urllib.error.URLError as exc:  # named where it failed, the innermost redirect's target
            if isinstance(exc, urllib.error.HTTPError | _TargetFailed):
                raise
            raise _TargetFailed(target, exc.reason) from exc

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def request_url(url: str) -> str:
    """`url` as it is sent: http.client sends ASCII alone (a UnicodeEncodeError traceback for `/ök`), so a
    non-ASCII host is written in IDNA and non-ASCII characters and spaces elsewhere percent-encoded (UTF-8).
    ValueError, saying why, where it cannot be: a control character (http.client refuses it, which was retried
    as a broken reply), or a host name IDNA cannot write."""
    if re.search(r"[\x00-\x1f\x7f]", url):
        raise ValueError("it holds a control character")
    head = re.fullmatch(r"([^:/?#]+://)([^/?#]*)(.*)", url, re.S)
    if head is None:
        return url  # no host: the caller's own check says so
    scheme, netloc, rest = head.groups()
    userinfo, at, host_port = netloc.rpartition("@")
    if not host_port.startswith("["):  # an IPv6 address is ASCII, or urlsplit refused it
        host, colon, port = host_port.partition(":")
        try:
            host = host.encode("idna").decode("ascii") if not host.isascii() else host
        except UnicodeError as exc:
            raise ValueError(f"its host {host} is not a host name ({exc})") from None
        if not re.fullmatch(r"[\x21-\x7e]*", host):
            raise ValueError(f"its host {host!r} holds a space")
        host_port = host + colon + port
    quote = urllib.parse.quote
    rest = re.sub(r"[^\x21-\x7e]+", lambda m: quote(m.group(), safe="", errors="surrogateescape"), rest)
    return scheme + userinfo + at + host_port + rest


def shown_url(url: str) -> str:
    """`url` with the password it holds, if any, shown as `***`: for messages."""
    head = re.fullmatch(r"([^:/?#]+://)([^/?#]*)(.*)", url, re.S)
    if head is None or "@" not in head.group(2):
        return url
    userinfo, _, host_port = head.group(2).rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{head.group(1)}{user}{colon}{'***' if colon else ''}@{host_port}{head.group(3)}"


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    actual = md5_of(path)
    if actual != expected.lower():
        raise FetchError(f"{path}: md5 mismatch (expected {expected}, got {actual})")


def download(
    url: str, dest: Path, md5: str, timeout_s: float = 60.0, progress: bool = True, attempts: int = 4
) -> Path:
    """Download `url` to `dest`, resuming `dest.part` with HTTP Range; verified by md5 before it is kept.

    A resumed request carries `If-Range` with the validator (strong ETag, else Last-Modified) of the response
    the part file began with, kept beside it in `dest.part.validator`: if the file on the server has changed
    since, the server sends all of it and the download starts over instead of splicing two files. The size of
    that file, kept in `dest.part.size`, is compared with a resumed reply's too.
    """
    kept = _kept_name(dest, md5)  # a download that did not match the md5 asked for then
    if dest.is_file():
        actual = md5_of(dest)
        if actual == md5:
            return dest
        # verified for another --md5 before: kept, as one that did not match is; swapped with the kept one
        # asked for now, which must be looked up first (`_keep` removes the other kept ones)
        usable = kept.is_file() and md5_of(kept) == md5
        _keep(dest, actual, spare=kept if usable else None)
        if usable:
            kept.replace(dest)
            return dest
    elif kept.is_file() and md5_of(kept) == md5:
        kept.replace(dest)
        return dest
    try:
        request_url(url)
    except ValueError as exc:
        raise FetchError(f"{shown_url(url)}: not a valid URL ({exc})") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error = ""
    encoding: str | None = None
    for attempt in range(attempts):
        try:
            encoding = _download_once(url, part, timeout_s, progress)
            break
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException, FetchError) as exc:
            if isinstance(exc, Refused):
                raise
            if isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code != 416:
                raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            if isinstance(exc, urllib.error.HTTPError) and 300 <= exc.code < 400:
                raise FetchError(_not_followed(url, exc)) from None
            reason = getattr(exc, "reason", None) or exc
            where = f"redirected to {exc.url}: " if isinstance(exc, _TargetFailed) else ""
            if isinstance(exc, urllib.error.URLError) and _tls_failed(reason):  # at the handshake
                raise FetchError(f"{url}: {where}TLS failed ({reason}); not retried") from None
            last_error = where + (
                f"no data from the server for {timeout_s:g} s (timed out)"
                if isinstance(reason, TimeoutError)
                else f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError)
                else f"{type(exc).__name__}: {exc}" if isinstance(exc, http.client.HTTPException)
                else str(reason).removeprefix(f"{url}: ")  # ours: named once
            )
            time.sleep(min(2.0**attempt, 8.0) * 0.25)
    else:
        tries = f"{attempts} attempt{'' if attempts == 1 else 's'}"
        raise FetchError(f"{url}: download failed after {tries} ({last_error}); rerun to resume")
    for sidecar in _sidecars(part):
        sidecar.unlink(missing_ok=True)
    actual = md5_of(part)
    if actual != md5:
        kept = _keep(part, actual)
        encoded = (f"; the server sent it with Content-Encoding: {encoding}, so these may be compressed "
                   "bytes, not the archive's own" if encoding else "")
        raise FetchError(f"{url}: md5 mismatch (expected {md5}, got {actual}){encoded}; the download is kept "
                         f"as {kept}: if it is the archive you meant, rerun with --md5 {actual}, which uses "
                         "it (not downloaded again); else delete it")
    part.replace(dest)
    return dest


def _not_followed(url: str, exc: urllib.error.HTTPError) -> str:
    """The message of a 3xx reply urllib did not follow: a redirect loop (its check), or a 3xx that goes
    nowhere (a 302 without Location, 300, 304), which was said to be a loop as well."""
    location = exc.headers.get("Location") or exc.headers.get("URI") if exc.headers else None
    if location and exc.code in (301, 302, 303, 307, 308):
        limit = _HttpOnlyRedirects.max_redirections
        return (f"{url}: the server redirects in a loop (back to a URL it redirected from, or more than "
                f"{limit} times)")
    at = f" (redirected to {exc.url})" if exc.url != request_url(url) else ""
    what = ": not the file, and not a redirect that is followed" if location else (
        ", without a Location: no place to go for the file")
    return f"{url}: the server answered HTTP {exc.code} {exc.reason}{at}{what}"


def _tls_failed(reason: object) -> bool:
    """Whether a connection failed in TLS itself (a port that speaks plain HTTP, a certificate not trusted),
    which no retry mends; not a connection closed during the handshake."""
    closed = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
    return isinstance(reason, ssl.SSLError) and not isinstance(reason, closed)


def _kept_name(dest: Path, md5: str) -> Path:
    """Where a whole download of `dest` whose md5 is `md5` is kept when another md5 was asked for."""
    return dest.with_name(f"{dest.name}.md5-{md5}")


def _keep(path: Path, md5: str, spare: Path | None = None) -> Path:
    """Keep the whole download `path` (of md5 `md5`) under `_kept_name`, for a fetch that asks for its md5
    (a mistyped --md5 discarded a 7 GB download, and the rerun with the right one downloaded it again); one
    such file per archive, the latest: the others are removed, but `spare` (about to be used)."""
    kept = _kept_name(path.with_suffix("") if path.suffix == ".part" else path, md5)
    for other in kept.parent.glob(f"{glob.escape(kept.name.rsplit('.md5-', 1)[0])}.md5-*"):
        if other not in (kept, spare):
            other.unlink(missing_ok=True)
    path.replace(kept)
    return kept


def _validator_file(part: Path) -> Path:
    return part.with_name(part.name + ".validator")


def _size_file(part: Path) -> Path:
    """Beside the part file: the size of the whole file it began with (part files of older versions have
    none: then it is not compared)."""
    return part.with_name(part.name + ".size")


def _sibling(part: Path) -> Path:
    """Where a whole reply to a resumed request is written until it has grown past the part file."""
    return part.with_name(part.name + ".new")


def _sidecars(part: Path) -> tuple[Path, Path, Path]:
    return _validator_file(part), _size_file(part), _sibling(part)


def _saved(path: Path) -> str | None:
    return path.read_text().strip() or None if path.is_file() else None


def _saved_size(part: Path) -> int | None:
    size = _saved(_size_file(part))
    return int(size) if size is not None and size.isdigit() else None


def _validator(headers: http.client.HTTPMessage) -> str | None:
    """What identifies this version of the file for `If-Range` (RFC 9110 13.1.5): a strong ETag; without
    one, Last-Modified; nothing when the ETag is weak (neither may then be sent)."""
    etag = headers.get("ETag")
    if etag:
        return None if etag.startswith("W/") else etag
    return headers.get("Last-Modified")


def _content_range(headers: http.client.HTTPMessage) -> tuple[int, int, int | None] | None:
    """A 206's `Content-Range: bytes START-END/TOTAL` (TOTAL `*`: None), or None where it is absent or
    malformed: then where its bytes start is not known."""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (headers.get("Content-Range") or "").strip())
    if match is None or int(match.group(2)) < int(match.group(1)):
        return None
    total = match.group(3)
    return int(match.group(1)), int(match.group(2)), int(total) if total != "*" else None


def _download_once(url: str, part: Path, timeout_s: float, progress: bool) -> str | None:
    """Download what `part` lacks; the reply's Content-Encoding, where it says one (urllib decodes none)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {}
    if have:
        headers["Range"] = f"bytes={have}-"
        validator = _saved(_validator_file(part))
        if validator is not None:
            headers["If-Range"] = validator
    request = urllib.request.Request(request_url(url), headers=headers)
    try:
        response = _OPENER.open(request, timeout=timeout_s)  # scheme checked by the caller, a redirect's here
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # range not satisfiable: the part file is already whole (a fetch stopped while
            # it checked the md5), or bad
            whole = re.fullmatch(r"bytes \*/(\d+)", (exc.headers.get("Content-Range") or "").strip())
            if whole is not None and int(whole.group(1)) == have:
                return None  # every byte is here: the md5 check decides
            part.unlink(missing_ok=True)  # start over
        raise
    with response:
        _check_body(url, response.headers)
        length = _content_length(response.headers)
        place = _content_range(response.headers)
        partial = response.status == 206 and (have > 0 or place is not None)
        if partial:
            if have:
                _check_same_file(url, part, response.headers, place[2] if place is not None else None)
            if place is None or place[0] != have:  # none: where its bytes start is not known
                part.unlink(missing_ok=True)
                sent = f"bytes from {place[0]}" if place is not None else "a part without its place"
                raise FetchError(f"{url}: the server sent {sent} when asked from {have}; starting over")
            length = length if length is not None else place[1] + 1 - have
            size = place[2]
        else:
            # a whole file: the server ignored the range, or the file changed since the part began (If-Range)
            size = length
        # A whole reply to a resumed request of the same file (the server ignores Range) is written beside
        # the part file, which it replaces once longer: truncating it first lost it where the reply dropped.
        aside = not partial and have > 0 and not _changed(part, response.headers, length)
        # the disk holds, at most: the reply over the part file (written over it), beside it (the part freed
        # once the reply is past it: `have` + `have`, then `length`), or after it (the rest)
        _check_room(part, max(have, length - have) if aside and length is not None else length,
                    have if not partial and not aside else 0)
        body = _Body(partial, aside, have if partial else 0, length, size)
        _write_body(url, response, part, body, progress)
        encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
        return None if encoding == "identity" else encoding


@dataclass(frozen=True)
class _Body:
    """How a reply's body is written: after the part file's `start` bytes (`partial`), or over it, at once
    or (`aside`) once it is longer; `length` bytes of a file of `size` (None: not known)."""

    partial: bool
    aside: bool
    start: int
    length: int | None
    size: int | None


def _write_body(url: str, response: http.client.HTTPResponse, part: Path, body: _Body,
                progress: bool) -> None:
    have = part.stat().st_size if body.aside else 0  # the part file kept until the reply is past it
    target = _sibling(part) if body.aside else part
    fh = _open(part, target, "ab" if body.partial else "wb")
    if body.start == 0 and not body.aside:  # once the part file holds this response's start (truncated)
        _remember(part, response.headers, body.size)
    elif body.partial and _saved_size(part) is None and body.size is not None:  # an older version's part
        _remember_size(part, body.size)
    received = 0
    try:
        with _progress(progress, url, body.size, body.start) as advance:
            try:
                while chunk := response.read1(CHUNK_BYTES):  # what has come: a stall keeps it
                    try:
                        fh.write(chunk)
                    except OSError as exc:  # disk full: retrying cannot help; the part file is kept to resume
                        raise FileSystemError(f"{part}: cannot write the download ({exc.strerror or exc}); "
                                              "rerun to resume once there is room") from None
                    received += len(chunk)
                    advance(len(chunk))
                    if target != part and received > have:  # past the part file: it is replaced
                        fh.close()
                        target.replace(part)
                        target = part
                        _remember(part, response.headers, body.size)
                        fh = _open(part, part, "ab")
            finally:
                fh.close()
        done = body.start + received
        if body.length is not None and received < body.length:
            raise FetchError(f"{url}: connection closed after {done} of {body.start + body.length} bytes")
        if target != part:  # the reply never grew past the part file
            if body.length is None:  # no length said: its end may be a dropped connection, not the file's
                raise FetchError(f"{url}: the server's reply (no Content-Length) ended after {received} "
                                 f"bytes, short of the {have} already downloaded, which are kept")
            target.replace(part)  # the whole file, no longer than the part file was
            target = part
            _remember(part, response.headers, body.size)
        if body.partial and body.size is not None and done < body.size:  # a part of the rest only
            raise FetchError(f"{url}: the server's partial reply ended after {done} of {body.size} bytes")
    finally:
        if target != part:
            target.unlink(missing_ok=True)


def _open(part: Path, path: Path, mode: str) -> Any:
    try:
        return open(path, mode)  # noqa: SIM115 - closed by the caller; its write errors are ours
    except OSError as exc:
        raise FileSystemError(f"{part}: cannot write the download ({exc.strerror or exc})") from None


def _changed(part: Path, headers: http.client.HTTPMessage, length: int | None) -> bool:
    """Whether a whole reply to a resumed request is another version of the file than the part file began
    with (its validator or size differs from the saved one: `If-Range` did its work); where not, the server
    may just ignore Range."""
    then, now, size = _saved(_validator_file(part)), _validator(headers), _saved_size(part)
    return bool(then and now and now != then) or (size is not None and length is not None and length != size)


def _check_room(part: Path, length: int | None, reclaimed: int) -> None:
    """FileSystemError, before anything is written, where the reply's length is more than the free space of
    the part file's disk (with the part file's `reclaimed` bytes, which it replaces): a `Content-Length` of
    10^15 filled the disk first."""
    if length is None:
        return
    try:
        free = shutil.disk_usage(part.parent).free + reclaimed
    except OSError:
        return  # the write's own error says it
    if length > free:
        raise FileSystemError(f"{part}: no room for the download ({length} bytes to come, {free} free); "
                              "nothing was written: make room, then rerun")


def _check_body(url: str, headers: http.client.HTTPMessage) -> None:
    """Refused, before the part file is touched, where the reply is an HTML page (a login or error page sent
    as 200): only the md5 check found it, and its message offered to use it. A body with a Content-Encoding
    is downloaded as it comes (urllib decodes none) and the md5 decides: a server that says `gzip` of a
    `.tar.gz` (Apache's `AddEncoding`) sends the file's own bytes; the md5 mismatch line names the
    encoding."""
    if headers.get_content_type() == "text/html":
        raise Refused(f"{url}: the server sent an HTML page (Content-Type: text/html), not the file: a login "
                      "or error page?")


def _check_same_file(url: str, part: Path, headers: http.client.HTTPMessage, size: int | None) -> None:
    """FetchError, the part file removed to start over, when a resumed reply names another version of the file
    than the part began with (its validator, `If-Range`'s, or the whole file's size): a server that ignores
    If-Range sent the rest of the new file, spliced onto the old one's start, which only the md5 check found,
    a whole download later."""
    then, now = _saved(_validator_file(part)), _validator(headers)
    size_then = _saved_size(part)
    if then and now and now != then:
        change = f"{then}, now {now}"
    elif size_then is not None and size is not None and size != size_then:
        change = f"{size_then} bytes, now {size}"
    else:
        return
    part.unlink()
    for sidecar in _sidecars(part):
        sidecar.unlink(missing_ok=True)
    raise FetchError(f"{url}: the file on the server changed since the download began ({change}); starting "
                     "over")


def _content_length(headers: http.client.HTTPMessage) -> int | None:
    """The body's length, or None when the header is absent or malformed ("5, 5"): then the body is read
    until the server closes it, and the md5 check decides."""
    value = (headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


def _remember(part: Path, headers: http.client.HTTPMessage, size: int | None) -> None:
    """Keep the validator and size of the response the part file now begins with."""
    _remember_validator(part, _validator(headers))
    _remember_size(part, size)


def _remember_size(part: Path, size: int | None) -> None:
    path = _size_file(part)
    try:
        if size is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(str(size))
    except OSError as exc:
        raise FileSystemError(f"{path}: cannot write the download's size ({exc.strerror or exc})") from None


def _remember_validator(part: Path, validator: str | None) -> None:
    """Keep the validator of the response a new part file begins with (none: resumed without If-Range)."""
    path = _validator_file(part)
    try:
        if validator is None or not re.fullmatch(r"[\x20-\x7e]{1,200}", validator):
            path.unlink(missing_ok=True)
        else:
            path.write_text(validator)
    except OSError as exc:
        reason = exc.strerror or exc
        raise FileSystemError(f"{path}: cannot write the download's validator ({reason})") from None


class _progress:
    """A rich download bar (bytes, rate, ETA), or nothing."""

    def __init__(self, enabled: bool, url: str, total: int | None, done: int) -> None:
        self.enabled, self.url, self.total, self.done = enabled, url, total, done

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(
            TextColumn("download"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self.bar.__enter__()
        task_id = self.bar.add_task("download", total=self.total, completed=self.done)
        return lambda n: self.bar.advance(task_id, n)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(None, None, None)
