"""Failures, and the one table that says how each door tells them (the log always has the
details).

`problem(exc, locked)` turns any exception raised while serving an answer into a `Problem`:
the HTTP status and OpenAI error code `/v1` answers with, and the text a visitor may read.
The page and `/chat` show that text; `/v1` sends it in OpenAI's error shape. Nothing here
imports Gradio or an engine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .export import ExportError
from .fairness import LimitReached
from .prompt import MessageTooLong, PromptError
from .settings import SettingsError

# What a locked server's visitors read when the model fails (the log has the details).
MODEL_FAILED = "The model could not finish this answer. The details are in the server's log."
log = logging.getLogger(__name__)


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


class ServerBusy(Exception):
    """Every place in the queue is taken: as many answers generate and wait as the server takes."""

    def __init__(self) -> None:
        super().__init__("The server has as many requests waiting as it takes; try again shortly.")


class ModelNotLoaded(SettingsError):
    """No model is loaded yet (the server is starting, or loading failed)."""


class SystemPromptLocked(SettingsError):
    """A request asked for another system prompt than the one the host locked."""


@dataclass(frozen=True)
class Problem:
    """How a failure is told: `text` is what the visitor may read; `refused`: the request was
    turned away (the visitor's to change or retry), not failed."""

    status: int
    code: str | None
    text: str
    kind: str = "invalid_request_error"  # OpenAI's error type
    param: str | None = None
    retry_after_s: float | None = None
    refused: bool = True


RETRY_S = 5  # suggested wait when the server is full or has no model yet
# Exception → status, code, OpenAI error type, the request field it concerns, retry-after.
# First match wins, so subclasses come before their bases. Each exception's own text is
# written for visitors; all of these are refusals.
TABLE: tuple[tuple[type[BaseException], int, str | None, str, str | None, float | None], ...] = (
    (ServerBusy, 503, "server_busy", "server_error", None, RETRY_S),
    (ModelNotLoaded, 503, "model_not_loaded", "server_error", None, RETRY_S),
    (SystemPromptLocked, 400, "system_prompt_locked", "invalid_request_error", "messages", None),
    (MessageTooLong, 400, "context_length_exceeded", "invalid_request_error", "messages", None),
    (PromptError, 400, None, "invalid_request_error", "messages", None),
    (SettingsError, 400, None, "invalid_request_error", None, None),
    (ExportError, 400, None, "invalid_request_error", None, None),
)
# A remote engine's statuses that say "not now" or "not this request" rather than "broken".
REMOTE_REFUSALS = (400, 429, 503)


def problem(exc: BaseException, locked: bool) -> Problem:
    """How to tell `exc`. Refusals keep their own text (written for visitors). A model's
    failure is the host's to read: a locked server's visitors get a plain sentence."""
    if isinstance(exc, LimitReached):
        code = "rate_limit_exceeded" if exc.limit == "rate" else "one_at_a_time"
        return Problem(429, code, str(exc), "rate_limit_error", retry_after_s=exc.retry_after_s)
    for kind, status, code, error_type, param, retry in TABLE:
        if isinstance(exc, kind):
            return Problem(status, code, str(exc), error_type, param, retry)
    if isinstance(exc, RemoteError):
        error_type = "invalid_request_error" if exc.status == 400 else "server_error"
        return Problem(exc.status, exc.code, public_error(exc, locked), error_type, retry_after_s=exc.retry_after_s,
                       refused=exc.status in REMOTE_REFUSALS)
    return Problem(500, "model_failed", public_error(exc, locked), "server_error", refused=False)


def report(exc: BaseException, locked: bool, door: str) -> Problem:
    """`problem`, with a failure's details logged (a refusal was logged where it was made)."""
    told = problem(exc, locked)
    if isinstance(exc, RemoteError):  # the remote's own words; its traceback says nothing
        log.warning("%s answer failed on the remote engine: %s", door, exc)
    elif not told.refused:
        log.error("%s answer failed", door, exc_info=exc)
    return told


def public_error(exc: BaseException, locked: bool) -> str:
    """An error as a visitor may read it. Unlocked, the host is the visitor: its whole text.
    Locked, a plain sentence; a remote's failure keeps its own sentence (written for
    visitors), with the remote's words only for a 400 (its reason, such as the context
    length, is the visitor's to fix)."""
    if isinstance(exc, RemoteError):
        return str(exc) if not locked or exc.status == 400 else exc.message
    return MODEL_FAILED if locked else str(exc)
