"""Failures as visitors and API clients may read them (the log always has the details).

Nothing here imports Gradio or an engine: the page (`ui.py`) and `/v1` (`openai_api.py`)
share these words.
"""

from __future__ import annotations

# What a locked server's visitors read when the model fails (the log has the details).
MODEL_FAILED = "The model could not finish this answer. The details are in the server's log."


class RemoteError(Exception):
    """The remote engine (`--engine openai`) failed or refused. `message` is written for
    visitors (it names no URL or key); `detail` is what the remote itself said, which may
    hold its server paths. `str()` has both (the log's and the host's text); visitors get
    the remote's words only as `public_error` allows. `status` is what the front end's /v1
    answers with."""

    def __init__(self, message: str, status: int = 502, code: str = "remote_failed",
                 retry_after_s: float | None = None, detail: str = ""):
        super().__init__(f"{message} It said: {detail}" if detail else message)
        self.message, self.detail = message, detail
        self.status, self.code, self.retry_after_s = status, code, retry_after_s


def public_error(exc: BaseException, locked: bool) -> str:
    """An error as a visitor may read it. Unlocked, the host is the visitor: its whole text.
    Locked, a plain sentence; a remote's failure keeps its own sentence (written for
    visitors), with the remote's words only for a 400 (its reason, such as the context
    length, is the visitor's to fix)."""
    if isinstance(exc, RemoteError):
        return str(exc) if not locked or exc.status == 400 else exc.message
    return MODEL_FAILED if locked else str(exc)
