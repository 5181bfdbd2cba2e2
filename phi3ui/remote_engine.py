"""`--engine openai`: the answers come from an OpenAI-compatible server (OVMS's /v3, vLLM,
llama.cpp's server, another phi3ui's /v1); this process holds no model.

The slots, Stop before the start, stop strings and stats are `AnswerEngine`'s, as for a
local engine; the request and stream shapes are `phi3ui.openai_wire`'s. How each part of a
local engine is done here:

- The prompt: the conversation goes out as structured `messages` to the remote's
  `/chat/completions`, and the remote applies its own chat template. `render` therefore
  gives a `MessagesPrompt`, and the prompt inspector shows those messages as sent.
- Counting tokens (the context budget): the remote's tokenizer is not here, so before
  sending, a prompt is *estimated* conservatively, at a fixed one token per 3 characters
  plus a few tokens a message for the template (`TokenEstimate`). It learns nothing from
  the remote's counts, so `phi3ui.window`'s cached counts and its cut stay the same, on
  every replica; the prompt sent is counted whole, and the remote's 400 refuses one that
  is still too long. The answer's stats show the remote's counts.
- The window: `--context-window` or what the remote's `/models` says (phi3ui's own
  `context_window`, vLLM's `max_model_len`; kept apart as `reported_window`), the smaller
  when both are known (a longer prompt would only get the remote's 400); else 4096 with a
  notice saying so. A `--context-window` above what the remote says at the start is
  refused, as one above a local model's is. A remote that cannot be asked is asked again (`refresh`, at
  most every `RETRY_S`) until it answers; `notices` are its state now.
- Stop: the answer ends here at once, and the HTTP stream is closed: its socket is shut
  down, which ends a read that is waiting for the remote. The socket is known from the
  moment the connection is made (httpcore's `trace` extension; no kept-alive connections,
  so each request makes one), so a stop before the remote's headers reaches it too. A stop
  string matched here closes the stream the same way. phi3ui, vLLM and OVMS end a
  generation whose client went away.
- Stats: time to first token is measured here, from the request to the first text; token
  counts come from the stream's `usage` (asked for with `stream_options.include_usage`).
- Sampling: what OpenAI's API has (temperature, top_p, seed, max_tokens, stop). Top-k and
  the repetition penalty are not part of it and are not sent.
- Failures: down, slow (`--remote-timeout`), or an HTTP error become a `RemoteError`
  (`phi3ui.errors`) with a sentence for the user, the remote's own words apart (`detail`:
  logged always, shown as `public_error` allows) and the status the front end's own /v1
  answers with (502, 503, 504). Nothing is cached from a failed call, so the next message simply tries again.
  A stream that ends before its first event is asked about once more, without streaming and
  for one token: llama-cpp-python's server answers a prompt longer than its context with an
  HTTP 200 and an empty stream, and only its non-streamed answer is the 400 that says why.
- Reachable or not (`unavailable`, `/health`): a request that cannot connect marks the remote
  down and any answer marks it up; in between, a bare TCP connect checks its port (in the
  background, at most every `RETRY_S`). Not an HTTP request: any request to llama-cpp-python's
  server, even `GET /models`, ends the answer it is streaming.

Nothing here imports Gradio.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import socket
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import ClassVar

import httpx

from . import prompt as prompts
from .engine import AnswerEngine, Outcome, StopText
from .errors import RemoteError
from .openai_wire import Tally, chat_body, events, remote_message
from .settings import ENGINES, REMOTE_ENGINE, GenerationSettings, RemoteSettings
from .structured import STRUCTURE_MARK

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 4096  # when neither --context-window nor the remote says
WINDOW_FIELDS = ("context_window", "max_model_len")  # phi3ui's own /v1/models, vLLM's


# --- failures (RemoteError is in phi3ui.errors: the page and /v1 read it without this module)


def http_failure(status: int, body: str, model: str = "") -> RemoteError:
    """A remote's HTTP error as the user's sentence and the front end's status."""
    said = remote_message(body)
    if said:
        log.warning("remote engine answered HTTP %s: %s", status, said)
    if status in (401, 403):
        return RemoteError(f"The remote engine refused this server's key (HTTP {status}): the host sets it with "
                           "--remote-api-key or PHI3UI_REMOTE_API_KEY.", 502, "remote_unauthorized", detail=said)
    if status == 404:
        return RemoteError(f"The remote engine does not serve the model `{model}` (HTTP 404); the host chooses "
                           "it with --remote-model.", 502, "remote_model_not_found", detail=said)
    if status == 400:
        return RemoteError("The remote engine refused this request (HTTP 400).", 400, "remote_refused", detail=said)
    if status in (429, 503):
        return RemoteError(f"The remote engine is busy (HTTP {status}); try again in a moment.", 503,
                           "remote_busy", retry_after_s=5, detail=said)
    return RemoteError(f"The remote engine failed (HTTP {status}).", 502, "remote_failed", detail=said)


DOWN = ("The remote engine cannot be reached (connection refused or no route): it may be down or restarting. "
        "Try again in a moment.")


def transport_failure(exc: httpx.HTTPError, timeout_s: float, midway: bool = False) -> RemoteError:
    """A connection that could not be made, timed out or broke."""
    if isinstance(exc, httpx.ConnectTimeout):
        return RemoteError("The remote engine could not be reached in time; it may be down or overloaded. "
                           "Try again in a moment.", 503, "remote_unavailable", retry_after_s=5)
    if isinstance(exc, httpx.ConnectError):
        return RemoteError(DOWN, 503, "remote_unavailable", retry_after_s=5)
    if isinstance(exc, httpx.TimeoutException):
        return RemoteError(f"The remote engine sent nothing for {timeout_s:g} s (--remote-timeout), so this "
                           "answer was given up.", 504, "remote_timeout")
    if midway:
        return RemoteError("The remote engine closed the connection in the middle of the answer (it may have "
                           "stopped or restarted). Try again in a moment.", 502, "remote_disconnected")
    return RemoteError(f"The remote engine could not be used: {type(exc).__name__}. Try again in a moment.",
                       502, "remote_failed")


# --- the prompt as messages ----------------------------------------------------------------
@dataclass(frozen=True)
class MessagesPrompt:
    """A conversation as it is sent: messages, not template text. `text` is a stable string
    of them (for caches and logs); `shown` is the prompt inspector's view."""

    messages: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, messages: list[prompts.Message]) -> MessagesPrompt:
        return cls(tuple((m["role"], m["content"]) for m in messages))

    def as_json(self) -> list[dict]:
        return [{"role": role, "content": content} for role, content in self.messages]

    @property
    def text(self) -> str:
        return json.dumps(self.as_json(), ensure_ascii=False)

    def shown(self) -> str:
        head = ("Sent as these messages to the remote engine, which applies its own chat template; "
                "the token count is an estimate until the remote answers.\n")
        return head + "".join(f"\n{STRUCTURE_MARK.format(role)}\n{content}\n" for role, content in self.messages)


@dataclass(frozen=True)
class TokenEstimate:
    """Tokens of a prompt whose tokenizer is elsewhere, at a fixed rate on the safe side.
    It never learns from the remote's counts: a rate that changed would change the counts
    `phi3ui.window` caches and the cut it replays, and replicas would each learn their own.
    Where text is denser than this, the prompt that is sent is counted whole (more is left
    out if the estimate was short) and the remote's own 400 says a prompt is too long."""

    tokens_per_char: float = 1 / 3  # English runs at about 1/4; code and other scripts higher
    per_message: int = 5  # a template's role markers and separators
    fixed: int = 3  # the assistant's cue

    def count(self, prompt: MessagesPrompt) -> int:
        chars = sum(len(content) for _, content in prompt.messages)
        return math.ceil(chars * self.tokens_per_char) + self.per_message * len(prompt.messages) + self.fixed


# --- the stream's socket ------------------------------------------------------------------
class _Line:
    """The socket of a streamed request, to shut down from another thread: that ends a
    read waiting for the remote at once, and the remote sees its client go. The socket is
    known as soon as the connection is made (httpcore's `trace` extension), so a stop that
    comes before the remote's response headers reaches the remote too."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.cut = False
        self._lock = threading.Lock()

    def trace(self, event: str, info: dict) -> None:
        """httpcore's trace callback: the network stream of a new connection (TCP, then TLS)."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                self._set(sock)

    def hold(self, response: httpx.Response) -> None:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            self._set(sock)

    def _set(self, sock: socket.socket) -> None:
        with self._lock:
            self.sock = sock
        if self.cut:
            self.shut()

    def release(self) -> None:
        """The stream is done with the socket (it may go back to no one): never shut it now."""
        with self._lock:
            self.sock = None

    def shut(self) -> None:
        self.cut = True
        with self._lock:
            if self.sock is not None:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# --- the engine ------------------------------------------------------------------------
class RemoteEngine(AnswerEngine):
    """An engine answered by a remote OpenAI-compatible server: `AnswerEngine` does the
    slots, Stop, stop strings and stats; this sends the messages and reads the stream."""

    kind = ENGINES[REMOTE_ENGINE]
    device = "remote"
    system_ok = True  # the remote's template decides where a system message goes
    RETRY_S: ClassVar[float] = 2.0  # an undiscovered remote is asked again at most this often

    def __init__(self, settings: RemoteSettings, concurrency: int = 1, window: int | None = None):
        super().__init__(concurrency)
        self.settings = settings.validate()
        self.estimate = TokenEstimate()
        self.model_name = settings.model.strip()
        self.window_flag = window  # --context-window
        self.reported_window = 0  # what the remote's /models says, once asked
        self.discovered = False
        self.failure = ""  # why the remote could not be asked yet (the page's notice)
        self.down = ""  # why the remote cannot be reached now, as far as the last connection knows
        self._asked = 0.0
        self._probed = 0.0  # when the remote's port was last checked (`unavailable`)
        self._probing = threading.Lock()
        self._lookup = threading.Lock()
        timeout = httpx.Timeout(settings.timeout_s, connect=min(settings.connect_timeout_s, settings.timeout_s))
        # No kept-alive connections: each request opens its own, so its socket is known from
        # the start (`_Line.trace`) and a stop reaches the remote even before it answers.
        self.client = httpx.Client(timeout=timeout, headers=self._headers(),
                                   limits=httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0))
        self.refresh()
        for notice in self.notices:
            log.warning(notice)

    def _headers(self) -> dict:
        key = (self.settings.api_key or "").strip()
        return {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def context_window(self) -> int:
        """The smaller of --context-window and the remote's window where both are known: a
        prompt longer than the remote's would only get its 400."""
        known = [w for w in (self.window_flag, self.reported_window) if w]
        return min(known) if known else DEFAULT_WINDOW

    @property
    def window_source(self) -> str:
        if self.window_flag and self.context_window == self.window_flag:
            return "--context-window"
        return "remote" if self.reported_window else "assumed"

    def window_text(self, cap: int = 0) -> str:
        """The window as it is now (the remote's may be learnt after the start); `cap` is
        --context-window, which this engine already applies."""
        window, reported = self.context_window, self.reported_window
        if self.window_source == "assumed":
            return f"{window}-token window (assumed)"
        if self.window_source == "--context-window":
            return f"{window}-token window (--context-window" + (f"; the remote's is {reported})" if reported else ")")
        if self.window_flag:
            return f"{window}-token window (the remote's; --context-window {self.window_flag} is above it)"
        return f"{window}-token window"

    @property
    def unavailable(self) -> str:
        """Why the remote cannot answer now (`/health`'s reason), as last known; it is checked
        again in the background at most every RETRY_S (`probe`), so a remote that came back is
        seen without a message sent through this server."""
        now = time.monotonic()
        if now - self._probed >= self.RETRY_S and not self._probing.locked():
            self._probed = now
            threading.Thread(target=self.probe, name="remote-probe", daemon=True).start()
        if self.failure:
            return f"The remote engine could not be reached: {self.failure}"
        return self.down

    def probe(self) -> None:
        """Whether the remote's port takes a connection: a bare TCP connect, not an HTTP
        request (llama-cpp-python's server ends the answer it is streaming at any request).
        A remote not yet asked about its model is asked once its port answers."""
        if not self._probing.acquire(blocking=False):
            return
        try:
            url = httpx.URL(self.settings.base)
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                socket.create_connection((url.host, port), timeout=self.settings.connect_timeout_s).close()
            except OSError as exc:
                if not self.down:
                    log.warning("remote engine at %s cannot be reached: %s", self.settings.base, exc)
                self.down = DOWN
                return
            self.down = ""
            if not self.discovered and not self.client.is_closed:
                self.refresh()
        finally:
            self._probing.release()

    @property
    def notices(self) -> tuple[str, ...]:
        """What the page tells about the remote now (not frozen at start)."""
        notices = []
        if self.failure:
            notices.append(f"The remote engine could not be asked about its model yet: {self.failure} Each "
                           "message tries again.")
        if self.window_source == "assumed":
            notices.append(f"The remote engine does not say its context window; assuming {DEFAULT_WINDOW} tokens. "
                           "The host sets it with --context-window.")
        return tuple(notices)

    @property
    def label(self) -> str:
        return f"{self.name} (remote)"

    def describe(self, where: bool = True) -> str:
        """With `where`, the remote's URL (the host's to see; `Loaded.describe` names the model)."""
        return "remote OpenAI-compatible engine" + (f" at `{self.settings.base}`" if where else "")

    def close(self) -> None:
        self.client.close()

    # --- the remote's model ---------------------------------------------------------------
    def discover(self) -> None:
        """The model to ask for and its window, from the remote's `/models`."""
        with self._lookup:
            self._asked = time.monotonic()
            try:
                response = self.client.get(f"{self.settings.base}/models")
            except httpx.HTTPError as exc:
                raise transport_failure(exc, self.settings.timeout_s) from None
            if response.status_code != 200:
                raise http_failure(response.status_code, response.text, self.model_name)
            try:
                cards = [c for c in response.json().get("data", []) if isinstance(c, dict) and c.get("id")]
            except (ValueError, AttributeError):
                raise RemoteError("The remote engine's /models answer is not OpenAI's list of models.") from None
            names = [str(c["id"]) for c in cards]
            if not self.model_name:
                if len(names) != 1:
                    raise RemoteError(f"The remote engine serves {len(names)} models ({', '.join(names) or 'none'}); "
                                      "the host chooses one with --remote-model.", 502, "remote_model_not_found")
                self.model_name = names[0]
            card = next((c for c in cards if c["id"] == self.model_name), {})
            self.reported_window = next((card[f] for f in WINDOW_FIELDS if type(card.get(f)) is int and card[f] > 0),
                                        0)  # type(...) is int: a JSON true is no window
            self.discovered, self.failure = True, ""
            log.info("Remote engine at %s: model %s, %s-token window (%s)", self.settings.base, self.model_name,
                     self.context_window, self.window_source)

    def refresh(self) -> None:
        """Ask the remote about its model if it has not answered yet (at most every RETRY_S);
        a failure is kept as the page's notice, not raised."""
        if self.discovered or time.monotonic() - self._asked < self.RETRY_S:
            return
        try:
            self.discover()
        except RemoteError as exc:
            log.warning("The remote engine could not be asked about its model: %s", exc)
            self.failure = exc.message  # the page's notice: visitors of a locked server read it too

    def ensure_model(self) -> str:
        """The model to ask for; until the remote has said, it is asked again."""
        if not self.model_name:
            self.discover()  # nothing to ask for without it: its failure is the answer's
        else:
            self.refresh()
        return self.model_name

    # --- what ChatBackend calls -------------------------------------------------------------
    def render(self, messages: list[prompts.Message]) -> MessagesPrompt:
        return MessagesPrompt.of(messages)

    def count_tokens(self, prompt: MessagesPrompt) -> int:
        return self.estimate.count(prompt)

    def _pieces(self, prompt: MessagesPrompt, settings: GenerationSettings, stop: threading.Event,
                cut: StopText) -> Generator[str, None, Outcome]:
        """The remote's text as it streams. A Stop, a stop string matched here, or a reader
        that left shuts the stream's socket, so the remote sees its client go."""
        tally, line = Tally(), _Line()
        pieces = self._stream(chat_body(prompt.as_json(), settings, self.ensure_model()), tally, line)
        ended = False  # the reading thread is done with the stream
        try:
            while not (stop.is_set() or cut.matched):
                try:
                    item = pieces.get(timeout=0.05)
                except queue.Empty:
                    continue
                if item is None:
                    ended = True
                    break
                if isinstance(item, BaseException):
                    ended = True
                    if stop.is_set():
                        break  # the shut socket's own error
                    raise item
                yield item
        finally:
            if not ended:
                line.shut()
        prompt_tokens, tokens = tally.tokens(self.count_tokens(prompt))
        return Outcome(prompt_tokens, tokens, length=tally.finish == "length")

    def _stream(self, body: dict, tally: Tally, line: _Line) -> queue.Queue:
        """Read the streamed answer in a thread of its own: text pieces go into the queue,
        then None at the end, or the failure as a RemoteError."""
        pieces: queue.Queue = queue.Queue()
        url = f"{self.settings.base}/chat/completions"

        def read() -> None:
            started = seen = False
            try:
                try:
                    with self.client.stream("POST", url, json=body, extensions={"trace": line.trace}) as response:
                        line.hold(response)
                        self.down = ""
                        if response.status_code != 200:
                            response.read()
                            raise http_failure(response.status_code, response.text, body["model"])
                        started = True
                        for event in events(response.iter_lines()):
                            seen = True
                            if text := tally.feed(event):
                                pieces.put(text)
                            if line.cut:
                                break
                        else:
                            if not seen and not line.cut:
                                raise self._why_empty(url, body)
                            if not tally.finish and not line.cut:
                                raise RemoteError("The remote engine ended the answer without saying it was done "
                                                  "(it may have stopped or restarted). Try again in a moment.", 502,
                                                  "remote_disconnected")
                finally:
                    line.release()  # before the end is signalled: a late stop shuts nothing that is not ours
                pieces.put(None)
            except RemoteError as exc:
                pieces.put(exc)
            except httpx.HTTPError as exc:
                log.warning("remote engine at %s: %r", self.settings.base, exc)
                failure = transport_failure(exc, self.settings.timeout_s, midway=started)
                if failure.code == "remote_unavailable":
                    self.down = failure.message
                pieces.put(failure)
            except Exception as exc:  # noqa: BLE001 - handed to the reader
                pieces.put(exc)

        threading.Thread(target=read, name="remote-stream", daemon=True).start()
        return pieces

    def _why_empty(self, url: str, body: dict) -> RemoteError:
        """A stream that ended before its first event, asked about once more without
        streaming and for one token. llama-cpp-python's server answers a prompt longer than
        its context that way (HTTP 200, then nothing); asked so, it gives its 400 with the
        reason. Any other answer leaves the plain failure."""
        ended = RemoteError("The remote engine ended the answer before it began (it may have stopped or "
                            "restarted). Try again in a moment.", 502, "remote_disconnected")
        once = {k: v for k, v in body.items() if k != "stream_options"} | {"stream": False, "max_tokens": 1}
        try:
            response = self.client.post(url, json=once)
        except httpx.HTTPError:
            return ended
        if response.status_code != 200:
            return http_failure(response.status_code, response.text, body["model"])
        return ended
