"""Hand back the pages of a loaded model's files that the process no longer reads.

OpenVINO maps the export's weights file into memory and the CPU plugin copies every weight
into its own layout while compiling and warming up; from then on it reads only its copy.
The mapped file's pages stay counted in the process's resident memory all the same, as
much again as the weights (bench/NOTES.md, "Where the memory goes"). They are clean pages
of read-only mappings, so dropping them is always safe: a page read again later is read back
from the file, and `release` may be called again. Writable mappings are left alone (there,
dropping a page would drop what was written to it).

Linux only (`/proc/self/maps`, `madvise`); elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
MAPS = Path("/proc/self/maps")


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    path: Path


def mappings_under(folder: Path, maps: Path = MAPS) -> list[Mapping]:
    """This process's read-only mappings of files inside `folder`."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return []
    root, found = Path(os.path.realpath(folder)), []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/") or "w" in fields[1]:
            continue
        path = Path(fields[5])
        if path == root or root in path.parents:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append(Mapping(start, end, path))
    return found


def resident_bytes(folder: Path) -> int:
    """How much of `folder`'s mapped files is resident in this process now."""
    wanted = {(m.start, m.end) for m in mappings_under(folder)}
    total, current = 0, None
    try:
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    start, end = (int(x, 16) for x in head.split("-"))
                    current = (start, end) in wanted
                elif current and head == "Rss:":
                    total += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return total


def release(folder: Path) -> int:
    """Drop this process's resident pages of the files mapped from `folder`; returns how
    many bytes were resident before."""
    mappings = mappings_under(folder)
    if not mappings:
        return 0
    before = resident_bytes(folder)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for mapping in mappings:
        if libc.madvise(mapping.start, mapping.end - mapping.start, MADV_DONTNEED) != 0:
            log.warning("Could not release the pages of %s: %s", mapping.path, os.strerror(ctypes.get_errno()))
    return before
