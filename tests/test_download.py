"""Tests for srnet_core.download against a loopback HTTP server serving the real BIRL sample files.

The server binds 127.0.0.1 on an OS-chosen port, runs in a daemon thread, and is shut down after
each test; nothing here touches any other network. Python's http.server has no Range support, so
the handler below implements `Range: bytes=N-` itself, records the Range headers it receives, and
can be told to cut the connection mid-body, to ignore Range, or to fail with a status code.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from srnet_core.download import fetch, sha256_of, unpack
from srnet_core.errors import InputError

SHARED_BIRL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "birl"
SAMPLE = "rat-kidney_/scale-5pc/Rat-Kidney_HE.jpg"

# Every fetch in these tests is bounded: short socket timeout, no sleeping between attempts.
FAST = dict(timeout=5.0, backoff=0)


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def birl() -> Path:
    """The shared BIRL sample folder; skipped when absent, failed when SRNET_REQUIRE_SHARED=1."""
    if not SHARED_BIRL.is_dir():
        reason = (f"shared BIRL sample data not found at {SHARED_BIRL} "
                  "(the download tests serve these real files over a loopback HTTP server)")
        if os.environ.get("SRNET_REQUIRE_SHARED") == "1":
            pytest.fail(reason + "; SRNET_REQUIRE_SHARED=1 makes this a failure")
        pytest.skip(reason)
    return SHARED_BIRL


@pytest.fixture
def sample(birl: Path) -> tuple[Path, bytes, str]:
    """(path, bytes, sha256) of the sample image in the shared folder."""
    path = birl / SAMPLE
    if not path.is_file():
        reason = f"shared BIRL sample file missing: {path}"
        if os.environ.get("SRNET_REQUIRE_SHARED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    data = path.read_bytes()
    assert len(data) > 1000, "sample too small to split for resume tests"
    return path, data, hashlib.sha256(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server: "_LoopbackServer"

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 (http.server naming)
        srv = self.server
        with srv.lock:
            index = len(srv.requests)
            srv.requests.append({"path": self.path, "range": self.headers.get("Range")})
        self.close_connection = True

        if index < srv.fail_first:
            self.send_error(srv.fail_status)
            return

        rel = unquote(urlsplit(self.path).path).lstrip("/")
        file = (srv.root / rel).resolve()
        if srv.root not in file.parents or not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()

        start = 0
        rng = self.headers.get("Range")
        if rng and not srv.ignore_range:
            assert rng.startswith("bytes=") and rng.endswith("-"), f"unsupported Range {rng!r}"
            start = int(rng[len("bytes="):-1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if srv.chunked:
                self.protocol_version = "HTTP/1.1"
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            if srv.chunked:
                self.protocol_version = "HTTP/1.1"
            self.send_response(200)
        body = data[start:]
        cut = srv.cut_after if index == srv.fail_first else None
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "none" if srv.ignore_range else "bytes")
        if srv.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            sent = 0
            for i in range(0, len(body), 1 << 16):
                piece = body[i:i + (1 << 16)]
                self.wfile.write(f"{len(piece):x}\r\n".encode())
                if cut is not None and sent + len(piece) > cut:
                    self.wfile.write(piece[:cut - sent])   # drop the connection inside a chunk
                    self.wfile.flush()
                    return
                self.wfile.write(piece + b"\r\n")
                sent += len(piece)
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

        if cut is not None:
            # first real answer: send only part of the promised body, then drop the connection
            self.wfile.write(body[:cut])
            self.wfile.flush()
            return
        self.wfile.write(body)


class _LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root.resolve()
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.cut_after: int | None = None   # (a) cut the first body after this many bytes
        self.ignore_range = False           # (b) answer 200 with the whole file regardless of Range
        self.fail_first = 0                 # answer the first N requests with fail_status
        self.fail_status = 503
        self.chunked = False                # Transfer-Encoding: chunked instead of Content-Length

    def url(self, rel: str) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/{rel}"

    @property
    def ranges(self) -> list[str | None]:
        with self.lock:
            return [r["range"] for r in self.requests]


@pytest.fixture
def server(birl: Path):
    srv = _LoopbackServer(birl)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _parts(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


# --------------------------------------------------------------------------------------------------
# fetch


def test_sha256_of_matches_hashlib(sample):
    path, _, digest = sample
    assert sha256_of(path) == digest


def test_fetch_downloads_byte_identical_file(server, sample, tmp_path):
    _, data, digest = sample
    dest = tmp_path / "sub" / "dir" / "Rat-Kidney_HE.jpg"   # parent folders are created
    out = fetch(server.url(SAMPLE), dest, digest, retries=3, **FAST)
    assert Path(out) == dest
    assert dest.read_bytes() == data
    assert not _parts(dest).exists()
    assert server.ranges == [None]


def test_fetch_accepts_uppercase_checksum(server, sample, tmp_path):
    _, data, digest = sample
    dest = tmp_path / "img.jpg"
    fetch(server.url(SAMPLE), dest, digest.upper(), **FAST)
    assert dest.read_bytes() == data


def test_fetch_resumes_from_existing_part_file(server, sample, tmp_path):
    _, data, digest = sample
    half = len(data) // 2
    dest = tmp_path / "img.jpg"
    _parts(dest).write_bytes(data[:half])

    fetch(server.url(SAMPLE), dest, digest, **FAST)

    assert server.ranges == [f"bytes={half}-"]
    assert dest.read_bytes() == data
    assert not _parts(dest).exists()


def test_fetch_part_file_already_complete_gets_416(server, sample, tmp_path):
    _, data, digest = sample
    dest = tmp_path / "img.jpg"
    _parts(dest).write_bytes(data)

    fetch(server.url(SAMPLE), dest, digest, **FAST)

    assert server.ranges == [f"bytes={len(data)}-"]
    assert dest.read_bytes() == data
    assert not _parts(dest).exists()


def test_fetch_retries_and_resumes_after_interrupted_transfer(server, sample, tmp_path):
    _, data, digest = sample
    cut = len(data) // 3
    server.cut_after = cut
    dest = tmp_path / "img.jpg"

    fetch(server.url(SAMPLE), dest, digest, retries=3, **FAST)

    assert server.ranges == [None, f"bytes={cut}-"]
    assert dest.read_bytes() == data
    assert not _parts(dest).exists()


def test_fetch_restarts_when_server_ignores_range(server, sample, tmp_path):
    _, data, digest = sample
    half = len(data) // 2
    server.ignore_range = True
    dest = tmp_path / "img.jpg"
    _parts(dest).write_bytes(data[:half])

    fetch(server.url(SAMPLE), dest, digest, **FAST)

    assert server.ranges == [f"bytes={half}-"]      # it asked to resume, got 200 with everything
    out = dest.read_bytes()
    assert len(out) == len(data)                    # no duplicated prefix
    assert out == data
    assert not _parts(dest).exists()


def test_fetch_interrupted_then_range_ignored_starts_over(server, sample, tmp_path):
    _, data, digest = sample
    server.cut_after = len(data) // 4
    server.ignore_range = True
    dest = tmp_path / "img.jpg"

    fetch(server.url(SAMPLE), dest, digest, retries=3, **FAST)

    assert server.ranges == [None, f"bytes={len(data) // 4}-"]
    assert dest.read_bytes() == data


def test_fetch_chunked_transfer(server, sample, tmp_path):
    _, data, digest = sample
    server.chunked = True
    dest = tmp_path / "img.jpg"

    fetch(server.url(SAMPLE), dest, digest, **FAST)

    assert dest.read_bytes() == data
    assert not _parts(dest).exists()


def test_fetch_retries_interrupted_chunked_transfer(server, sample, tmp_path):
    _, data, digest = sample
    server.chunked = True
    server.cut_after = 100_000
    dest = tmp_path / "img.jpg"

    fetch(server.url(SAMPLE), dest, digest, retries=3, **FAST)

    assert len(server.requests) == 2
    assert dest.read_bytes() == data


def test_fetch_retries_server_errors(server, sample, tmp_path):
    _, data, digest = sample
    server.fail_first = 2
    server.fail_status = 503
    dest = tmp_path / "img.jpg"

    fetch(server.url(SAMPLE), dest, digest, retries=3, **FAST)

    assert len(server.requests) == 3
    assert dest.read_bytes() == data


def test_fetch_gives_up_after_retries(server, sample, tmp_path):
    _, _, digest = sample
    server.fail_first = 100
    server.fail_status = 503
    dest = tmp_path / "img.jpg"
    url = server.url(SAMPLE)

    with pytest.raises(InputError) as info:
        fetch(url, dest, digest, retries=2, **FAST)

    assert str(info.value).startswith(f"{url}: ")
    assert "after 2 attempts" in str(info.value)
    assert len(server.requests) == 2
    assert not dest.exists()


def test_fetch_checksum_mismatch_discards_everything(server, sample, tmp_path):
    dest = tmp_path / "img.jpg"
    url = server.url(SAMPLE)
    wrong = "0" * 64

    with pytest.raises(InputError) as info:
        fetch(url, dest, wrong, **FAST)

    message = str(info.value)
    assert message.startswith(f"{url}: ")
    assert info.value.path == url
    assert "checksum mismatch" in message
    assert wrong in message and sample[2] in message   # says what was expected and what came
    assert not dest.exists()
    assert not _parts(dest).exists()


def test_fetch_stale_part_file_fails_checksum_and_is_discarded(server, sample, tmp_path):
    _, data, digest = sample
    dest = tmp_path / "img.jpg"
    _parts(dest).write_bytes(b"\xff" * 1000)   # bytes that are not the file's prefix

    with pytest.raises(InputError, match="checksum mismatch"):
        fetch(server.url(SAMPLE), dest, digest, **FAST)
    assert not dest.exists() and not _parts(dest).exists()

    fetch(server.url(SAMPLE), dest, digest, **FAST)       # a second run starts clean and succeeds
    assert dest.read_bytes() == data


def test_fetch_404_is_input_error_without_retry(server, sample, tmp_path):
    dest = tmp_path / "missing.jpg"
    url = server.url("rat-kidney_/scale-5pc/does-not-exist.jpg")

    with pytest.raises(InputError) as info:
        fetch(url, dest, sample[2], retries=3, **FAST)

    message = str(info.value)
    assert message.startswith(f"{url}: ")
    assert "404" in message
    assert len(server.requests) == 1            # client errors are not retried
    assert not dest.exists()
    assert not _parts(dest).exists()


# --------------------------------------------------------------------------------------------------
# unpack

MEMBERS = {
    "rat-kidney/Rat-Kidney_HE.jpg": "rat-kidney_/scale-5pc/Rat-Kidney_HE.jpg",
    "rat-kidney/Rat-Kidney_HE.csv": "rat-kidney_/scale-5pc/Rat-Kidney_HE.csv",
    "landmarks/artificial_reference.pts": "landmarks/artificial_reference.pts",
    "pairs-imgs-lnds_histol.csv": "pairs-imgs-lnds_histol.csv",
}


@pytest.fixture
def members(birl: Path) -> dict[str, Path]:
    out = {name: birl / rel for name, rel in MEMBERS.items()}
    missing = [str(p) for p in out.values() if not p.is_file()]
    if missing:
        reason = f"shared BIRL sample files missing: {missing}"
        if os.environ.get("SRNET_REQUIRE_SHARED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return out


def _assert_extracted(target: Path, members: dict[str, Path]) -> None:
    for name, src in members.items():
        assert (target / name).read_bytes() == src.read_bytes(), name
    extracted = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    assert extracted == set(members)


def _tree(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


def test_unpack_zip(members, tmp_path):
    archive = tmp_path / "sample.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name, src in members.items():
            z.write(src, name)
    target = tmp_path / "out"

    names = unpack(archive, target)

    assert set(names) == set(members)
    _assert_extracted(target, members)


def test_unpack_tar_gz(members, tmp_path):
    archive = tmp_path / "sample.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        for name, src in members.items():
            t.add(src, arcname=name)
    target = tmp_path / "out"

    names = unpack(archive, target)

    assert set(names) >= set(members)
    _assert_extracted(target, members)


def _evil_zip(path: Path, good: Path, evil_name: str) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.write(good, "ok/Rat-Kidney_HE.csv")     # a harmless member first: nothing may be written
        z.writestr(evil_name, b"pwned\n")


def _evil_tar(path: Path, good: Path, evil_name: str) -> None:
    with tarfile.open(path, "w:gz") as t:
        t.add(good, arcname="ok/Rat-Kidney_HE.csv")
        payload = b"pwned\n"
        info = tarfile.TarInfo(evil_name)
        info.size = len(payload)
        t.addfile(info, io.BytesIO(payload))


@pytest.mark.parametrize("make", [_evil_zip, _evil_tar], ids=["zip", "tar.gz"])
@pytest.mark.parametrize("evil_name", ["../evil.txt", "ok/../../evil.txt"])
def test_unpack_refuses_member_escaping_target(make, evil_name, members, tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    archive = tmp_path / ("evil.zip" if make is _evil_zip else "evil.tar.gz")
    make(archive, members["rat-kidney/Rat-Kidney_HE.csv"], evil_name)
    target = box / "out"
    before = _tree(tmp_path)

    with pytest.raises(InputError) as info:
        unpack(archive, target)

    assert str(info.value).startswith(f"{archive}: ")
    assert "outside" in str(info.value)
    assert not (box / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()
    assert _tree(tmp_path) - {"box/out"} == before    # nothing written anywhere (an empty out at most)
    assert not target.exists() or not any(target.iterdir())


@pytest.mark.parametrize("make", [_evil_zip, _evil_tar], ids=["zip", "tar.gz"])
def test_unpack_refuses_absolute_member(make, members, tmp_path):
    archive = tmp_path / ("abs.zip" if make is _evil_zip else "abs.tar.gz")
    outside = tmp_path / "abs-evil.txt"
    make(archive, members["rat-kidney/Rat-Kidney_HE.csv"], str(outside))
    target = tmp_path / "out"

    with pytest.raises(InputError, match="outside"):
        unpack(archive, target)
    assert not outside.exists()
    assert not target.exists() or not any(target.rglob("*"))


def test_unpack_refuses_tar_symlink_escaping_target(members, tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as t:
        t.add(members["rat-kidney/Rat-Kidney_HE.csv"], arcname="ok/Rat-Kidney_HE.csv")
        info = tarfile.TarInfo("ok/escape")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../outside"
        t.addfile(info)
    target = tmp_path / "out"

    with pytest.raises(InputError, match="outside"):
        unpack(archive, target)
    assert not target.exists() or not any(target.rglob("*"))


def test_unpack_rejects_non_archive(members, tmp_path):
    target = tmp_path / "out"
    src = members["rat-kidney/Rat-Kidney_HE.jpg"]
    with pytest.raises(InputError) as info:
        unpack(src, target)
    assert str(info.value).startswith(f"{src}: ")
    assert "not a zip or tar archive" in str(info.value)
    assert not target.exists()


def test_unpack_into_current_directory(members, tmp_path, monkeypatch):
    archive = tmp_path / "sample.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, src in members.items():
            z.write(src, name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)

    unpack(archive, ".")

    _assert_extracted(work, members)


def test_unpack_refuses_tar_hardlink_escaping_target(members, tmp_path):
    archive = tmp_path / "hardlink.tar"
    with tarfile.open(archive, "w") as t:
        t.add(members["rat-kidney/Rat-Kidney_HE.csv"], arcname="ok/Rat-Kidney_HE.csv")
        info = tarfile.TarInfo("a/b/c/escape")
        info.type = tarfile.LNKTYPE
        info.linkname = "../../outside"
        t.addfile(info)
    target = tmp_path / "box" / "out"

    with pytest.raises(InputError, match="outside"):
        unpack(archive, target)
    assert not target.exists() or not any(target.rglob("*"))
