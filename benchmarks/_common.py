"""Shared by the benchmark scripts: machine description, target verdicts, and writing one marked
section of docs/BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"
DOC_HEADER = ("# srnet benchmarks\n\n"
              "Figures here come from the scripts in `benchmarks/*.py`, run by hand on the machine named in "
              "each section; they are never timed tests.\n")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "? GB"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return (f"{cpu}, {os.cpu_count()} cores (os.cpu_count(); {affinity} usable), {ram} RAM, "
            f"{platform.system()} {platform.release()}")


def verdict(value: float, limit: float, unit: str, scale: float = 1.0) -> str:
    digits = 2 if unit == "s" else 0
    if value < limit:
        return f"PASS ({(limit - value) / scale:.{digits}f} {unit} headroom, {value / limit:.0%} of the limit)"
    return f"MISS (over by {(value - limit) / scale:.{digits}f} {unit}, {value / limit:.0%} of the limit)"


def write_section(text: str, start: str, end: str) -> None:
    """Replace the part of docs/BENCHMARKS.md between the markers (append it when absent)."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    doc = DOC.read_text() if DOC.exists() else DOC_HEADER
    if start in doc and end in doc:
        head, rest = doc.split(start, 1)
        _, tail = rest.split(end, 1)
        doc = head + text + tail
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(doc)
    print(f"updated {DOC.relative_to(ROOT)}")
