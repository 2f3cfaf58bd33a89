"""The download stage: resumable HTTP(S) fetches, checksum verified before anything uses the file,
written atomically, optional archive unpacking that refuses members escaping the target folder."""

from __future__ import annotations

import http.client
import logging
import os
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .atomic import sha256_of
from .errors import InputError

log = logging.getLogger(__name__)
CHUNK = 1 << 20



def fetch(url: str, dest: str | os.PathLike, sha256: str, timeout: float = 60.0, retries: int = 3,
          backoff: float = 2.0) -> Path:
    """Download url to dest. Bytes accumulate in `<dest>.part`, so an interrupted download resumes
    with an HTTP Range request; dest appears only once the SHA-256 matches."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if retries < 1:
        raise ValueError("retries must be at least 1")
    for attempt in range(1, retries + 1):
        try:
            _fetch_once(url, part, timeout)
            break
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
            if isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code != 416:
                raise InputError(url, f"download failed: HTTP {exc.code} {exc.reason}") from None
            if attempt == retries:
                raise InputError(url, f"download failed after {retries} attempts ({exc})") from None
            log.warning("%s: attempt %d failed (%s); retrying", url, attempt, exc)
            time.sleep(backoff * attempt)
    actual = sha256_of(part)
    if actual.lower() != sha256.lower():
        part.unlink()
        raise InputError(url, f"checksum mismatch: expected sha256 {sha256}, got {actual}; "
                              "the file was discarded")
    os.replace(part, dest)
    return dest


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "srnet-download"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:   # nothing left to fetch: the part file is already whole
            return
        raise
    with response:
        if have and response.status != 206:
            log.info("%s: server ignored the range request; starting over", url)
            have = 0
        total = response.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        mode = "ab" if have else "wb"
        done, last = have, time.monotonic()
        if have:
            log.info("%s: resuming at %d bytes", url, have)
        with open(part, mode) as f:
            for block in iter(lambda: response.read(CHUNK), b""):
                f.write(block)
                done += len(block)
                if time.monotonic() - last > 5:
                    last = time.monotonic()
                    log.info("%s: %.1f / %s MB", url, done / 1e6, "?" if total is None else f"{total / 1e6:.1f}")
    if total is not None and done < total:
        raise OSError(f"connection closed at {done} of {total} bytes")


def unpack(archive: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Unpack a zip or tar archive into target; members that would land outside target are refused."""
    archive, target = Path(archive), Path(target)
    root = os.path.abspath(os.fspath(target))

    def check(name: str) -> None:
        full = os.path.abspath(os.path.join(root, name))
        if os.path.commonpath([root, full]) != root:
            raise InputError(archive, f"archive member {name!r} would be written outside {target}")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
            for n in names:
                check(n)
            z.extractall(target)
        return names
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            members = t.getmembers()
            for m in members:
                check(m.name)
                if m.issym():      # symlink targets are relative to the link's folder
                    check(os.path.join(os.path.dirname(m.name), m.linkname))
                elif m.islnk():    # hard-link targets are relative to the archive root
                    check(m.linkname)
            try:
                t.extractall(target, filter="data")
            except tarfile.FilterError as exc:
                raise InputError(archive, f"unsafe archive member ({exc})") from None
        return [m.name for m in members]
    raise InputError(archive, "not a zip or tar archive, but the config asks to unpack it")
