"""A PDF's text, read by pypdf in a child process that is stopped after a time limit.

pypdf reads in pure Python, and a PDF of a few kilobytes can hold a compressed content
stream that takes minutes to read. On a server shared with strangers that would hold one of
its workers, so each PDF is read in a process of its own, killed when it runs out of time,
with its memory capped so that a decompression bomb fails instead of filling the machine.

`python -m phi3ui.pdf_text` reads the PDF's bytes from stdin and writes JSON to stdout:
`{"pages": [text, …]}`, or `{"error": "encrypted"}` / `{"error": "damaged"}`.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

MEMORY_BYTES = 2 << 30  # the reading process's address space
READERS = threading.BoundedSemaphore(2)  # PDFs read at once: more wait, so a crowd's PDFs cannot take every core

log = logging.getLogger(__name__)


def pages(data: bytes, seconds: float) -> dict:
    """The text of each page, or {"error": "encrypted" | "damaged" | "slow" | "failed"}
    ("failed": the reading process could not start)."""
    try:
        with READERS:
            done = subprocess.run([sys.executable, "-m", "phi3ui.pdf_text"], input=data, capture_output=True,
                                  timeout=seconds, cwd=Path(__file__).resolve().parent.parent, check=False)
    except subprocess.TimeoutExpired:
        return {"error": "slow"}
    except OSError as exc:
        log.error("could not start the PDF reader: %s", exc)
        return {"error": "failed"}
    try:
        out = json.loads(done.stdout)
    except ValueError:  # out of memory, or broken: the log says which
        log.warning("the PDF reader ended with code %s: %s", done.returncode,
                    done.stderr.decode(errors="replace")[-2000:])
        return {"error": "damaged"}
    return out if isinstance(out, dict) else {"error": "damaged"}


def _read(data: bytes) -> dict:
    import io

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about odd PDFs are not the user's to read
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            return {"error": "encrypted"}
        return {"pages": [(page.extract_text() or "").strip() for page in reader.pages]}
    except Exception:  # noqa: BLE001 - pypdf raises many kinds on a damaged file
        return {"error": "damaged"}


if __name__ == "__main__":
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    sys.stdout.write(json.dumps(_read(sys.stdin.buffer.read())))
