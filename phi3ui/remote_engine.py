"""`--engine openai`: the answers come from an OpenAI-compatible server (OVMS's /v3, vLLM,
llama.cpp's server, another phi3ui's /v1); this process holds no model.

How each part of a local engine is done here:

- The prompt: the conversation goes out as structured `messages` to the remote's
  `/chat/completions`, and the remote applies its own chat template. `render` therefore
  gives a `MessagesPrompt`, and the prompt inspector shows those messages as sent.
- Counting tokens (the context budget): the remote's tokenizer is not here, so before
  sending, a prompt is *estimated* conservatively, at one token per 3 characters plus a few
  tokens a message for the template (`TokenEstimate`). After every answer the remote's own
  `usage.prompt_tokens` corrects the rate upwards if text turned out denser; it is never
  lowered. The answer's stats show the remote's counts.
- The window: `--context-window`, else what the remote's `/models` says (phi3ui's own
  `context_window`, vLLM's `max_model_len`), else 4096 with a notice saying so.
- Stop: the answer ends here at once, and the HTTP stream is closed: its socket is shut
  down, which ends a read that is waiting for the remote (a remote that has not yet sent
  its response headers gets the close as soon as it does). phi3ui, vLLM and OVMS end a
  generation whose client went away.
- Stats: time to first token is measured here, from the request to the first text; token
  counts come from the stream's `usage` (asked for with `stream_options.include_usage`).
- Sampling: what OpenAI's API has (temperature, top_p, seed, max_tokens, stop). Top-k and
  the repetition penalty are not part of it and are not sent.
- Failures: down, slow (`--remote-timeout`), or an HTTP error become a `RemoteError` with a
  sentence for the user and the status the front end's own /v1 answers with (502, 503,
  504). Nothing is cached from a failed call, so the next message simply tries again.

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
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import httpx

from . import prompt as prompts
from .answer import Answer, Stats
from .engine import StopText, TokenMemory
from .settings import GenerationSettings, RemoteSettings, SettingsError
from .structured import STRUCTURE_MARK

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 4096  # when neither --context-window nor the remote says
WINDOW_FIELDS = ("context_window", "max_model_len")  # phi3ui's own /v1/models, vLLM's


# --- failures -----------------------------------------------------------------------------
class RemoteError(Exception):
    """The remote server failed or refused; the message is meant for the user as is (it
    names no URL or key: a locked server's visitors may read it). `status` is what the front
    end's /v1 answers with."""

    def __init__(self, message: str, status: int = 502, code: str = "remote_failed",
                 retry_after_s: float | None = None):
        super().__init__(message)
        self.status, self.code, self.retry_after_s = status, code, retry_after_s


def remote_message(body: str) -> str:
    """The error text of a remote's error body (OpenAI's shape, or plain text), shortened."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data)
        text = error.get("message") if isinstance(error, dict) else error
        if text is None and isinstance(data.get("detail"), str):
            text = data["detail"]
        if text is not None:
            body = str(text)
    body = " ".join(body.split())
    return body[:300] + ("…" if len(body) > 300 else "")


def http_failure(status: int, body: str, model: str = "") -> RemoteError:
    """A remote's HTTP error as the user's sentence and the front end's status."""
    said = remote_message(body)
    said = f" It said: {said}" if said else ""
    if status in (401, 403):
        return RemoteError(f"The remote engine refused this server's key (HTTP {status}): the host sets it with "
                           f"--remote-api-key or PHI3UI_REMOTE_API_KEY.{said}", 502, "remote_unauthorized")
    if status == 404:
        return RemoteError(f"The remote engine does not serve the model `{model}` (HTTP 404); the host chooses "
                           f"it with --remote-model.{said}", 502, "remote_model_not_found")
    if status == 400:
        return RemoteError(f"The remote engine refused this request (HTTP 400).{said}", 400, "remote_refused")
    if status in (429, 503):
        return RemoteError(f"The remote engine is busy (HTTP {status}); try again in a moment.{said}", 503,
                           "remote_busy", retry_after_s=5)
    return RemoteError(f"The remote engine failed (HTTP {status}).{said}", 502, "remote_failed")


def transport_failure(exc: httpx.HTTPError, timeout_s: float, midway: bool = False) -> RemoteError:
    """A connection that could not be made, timed out or broke."""
    if isinstance(exc, httpx.ConnectTimeout):
        return RemoteError("The remote engine could not be reached in time; it may be down or overloaded. "
                           "Try again in a moment.", 503, "remote_unavailable", retry_after_s=5)
    if isinstance(exc, httpx.ConnectError):
        return RemoteError("The remote engine cannot be reached (connection refused or no route): it may be down "
                           "or restarting. Try again in a moment.", 503, "remote_unavailable", retry_after_s=5)
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


@dataclass
class TokenEstimate:
    """Tokens of a prompt whose tokenizer is elsewhere: on the safe side, and corrected by
    the remote's own counts (`learn`), upwards only."""

    tokens_per_char: float = 1 / 3  # English runs at about 1/4; code and other scripts higher
    per_message: int = 5  # a template's role markers and separators
    fixed: int = 3  # the assistant's cue
    MIN_CHARS: ClassVar[int] = 200  # shorter prompts are mostly template: they teach nothing about text

    def count(self, prompt: MessagesPrompt) -> int:
        chars = sum(len(content) for _, content in prompt.messages)
        return math.ceil(chars * self.tokens_per_char) + self.per_message * len(prompt.messages) + self.fixed

    def learn(self, prompt: MessagesPrompt, prompt_tokens: int) -> None:
        chars = sum(len(content) for _, content in prompt.messages)
        if chars < self.MIN_CHARS or prompt_tokens <= 0:
            return
        text_tokens = prompt_tokens - self.per_message * len(prompt.messages) - self.fixed
        rate = min(text_tokens / chars, 2.0)
        if rate > self.tokens_per_char:
            log.info("remote counts %.3f tokens a character (estimate was %.3f): estimating with that now",
                     rate, self.tokens_per_char)
            self.tokens_per_char = rate


# --- the request and its stream --------------------------------------------------------------
def chat_body(prompt: MessagesPrompt, settings: GenerationSettings, model: str) -> dict:
    """The streamed chat completion request for `settings` (OpenAI's fields only)."""
    body: dict = {"model": model, "messages": prompt.as_json(), "stream": True,
                  "stream_options": {"include_usage": True}, "max_tokens": settings.max_new_tokens,
                  "temperature": settings.temperature}
    if not settings.greedy:
        body["top_p"] = settings.top_p
        if settings.seed is not None:
            body["seed"] = settings.seed
    if settings.stop:
        body["stop"] = list(settings.stop)
    return body


def events(lines: Iterable[str]) -> Iterator[dict]:
    """The JSON objects of a server-sent event stream's `data:` lines, up to `[DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments (": ping"), event names
        data = line[5:].strip()
        if data == "[DONE]":
            return
        if not data:
            continue
        try:
            event = json.loads(data)
        except ValueError:
            raise RemoteError("The remote engine sent something that is not an OpenAI stream.") from None
        if isinstance(event, dict):
            yield event


@dataclass
class Tally:
    """What a chat completion stream said besides its text: finish reason and usage."""

    finish: str = ""
    usage: dict | None = None
    pieces: int = 0  # content deltas: a count of tokens when the remote sends no usage (about one each)

    def feed(self, event: dict) -> str:
        """The text of one event; raises RemoteError for an error event."""
        if "error" in event:
            raise RemoteError(f"The remote engine failed in the middle of the answer. It said: "
                              f"{remote_message(json.dumps(event))}", 502, "remote_failed")
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        text = ""
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                text += delta["content"]
                self.pieces += 1
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return text


class _Line:
    """The socket of a streamed response, to shut down from another thread: that ends a
    read waiting for the remote at once, and the remote sees its client go."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.cut = False

    def hold(self, response: httpx.Response) -> None:
        stream = response.extensions.get("network_stream")
        self.sock = stream.get_extra_info("socket") if stream is not None else None
        if self.cut:
            self.shut()

    def shut(self) -> None:
        self.cut = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --- the engine ------------------------------------------------------------------------
class RemoteEngine:
    """What `ChatBackend` uses of an engine, answered by a remote OpenAI-compatible server."""

    name = "openai"
    remote = True
    device = "remote"
    device_warning: str | None = None
    system_ok = True  # the remote's template decides where a system message goes
    prompt_lookup = False

    def __init__(self, settings: RemoteSettings, concurrency: int = 1, window: int | None = None):
        if concurrency < 1:
            raise SettingsError(f"Concurrency must be at least 1, not {concurrency}.")
        self.settings = settings.validate()
        self.concurrency = concurrency
        self.slots = threading.BoundedSemaphore(concurrency)
        self.memory = TokenMemory()  # stays empty: the remote keeps its own prefix cache
        self.estimate = TokenEstimate()
        self.model_name = settings.model.strip()
        self.window_flag = window
        self.context_window = window or DEFAULT_WINDOW
        self.window_source = "--context-window" if window else "assumed"
        self.notices: list[str] = []
        self._lookup = threading.Lock()
        timeout = httpx.Timeout(settings.timeout_s, connect=min(settings.connect_timeout_s, settings.timeout_s))
        self.client = httpx.Client(timeout=timeout, headers=self._headers(),
                                   limits=httpx.Limits(max_connections=concurrency + 4))
        try:
            self.discover()
        except RemoteError as exc:
            notice = f"The remote engine could not be asked about its model at start: {exc} Each message tries again."
            log.warning(notice)
            self.notices.append(notice)
        if self.window_source == "assumed":
            notice = (f"The remote engine does not say its context window; assuming {DEFAULT_WINDOW} tokens. "
                      "The host sets it with --context-window.")
            log.warning(notice)
            self.notices.append(notice)

    def _headers(self) -> dict:
        key = (self.settings.api_key or "").strip()
        return {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def label(self) -> str:
        return f"{self.name} (remote)"

    def describe(self, where: bool = True) -> str:
        """The page's model line: the remote model and window; with `where`, its URL."""
        window = (f"{self.context_window}-token window" +
                  (" (assumed)" if self.window_source == "assumed" else
                   " (--context-window)" if self.window_source == "--context-window" else ""))
        place = f" at `{self.settings.base}`" if where else ""
        return f"**{self.model_name or 'remote model'}** · remote OpenAI-compatible engine{place} · {window}"

    def close(self) -> None:
        self.client.close()

    def warm_up(self) -> float:
        return 0.0  # the remote warms itself up

    # --- the remote's model ---------------------------------------------------------------
    def discover(self) -> None:
        """The model to ask for and its window, from the remote's `/models`."""
        with self._lookup:
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
            reported = next((int(card[f]) for f in WINDOW_FIELDS if isinstance(card.get(f), int) and card[f] > 0), 0)
            if reported:
                self.context_window = reported
                self.window_source = "remote"
            log.info("Remote engine at %s: model %s, %s-token window (%s)", self.settings.base, self.model_name,
                     self.context_window, self.window_source)

    def ensure_model(self) -> str:
        if not self.model_name:
            self.discover()
        return self.model_name

    # --- what ChatBackend calls -------------------------------------------------------------
    def render(self, messages: list[prompts.Message]) -> MessagesPrompt:
        return MessagesPrompt.of(messages)

    def count_tokens(self, prompt: MessagesPrompt) -> int:
        return self.estimate.count(prompt)

    def answer(self, prompt: MessagesPrompt, settings: GenerationSettings) -> Answer:
        return Answer(partial(self._produce, prompt, settings))

    def _produce(self, prompt: MessagesPrompt, settings: GenerationSettings,
                 stop: threading.Event) -> Generator[str, None, Stats]:
        start = time.perf_counter()
        while not self.slots.acquire(timeout=0.05):  # --concurrency answers at once; a Stop ends the wait
            if stop.is_set():
                return Stats(0, 0, 0.0, 0.0, time.perf_counter() - start, stopped=True, finish="stopped")
        try:
            if stop.is_set():
                return Stats(self.count_tokens(prompt), 0, 0.0, 0.0, time.perf_counter() - start, stopped=True,
                             finish="stopped")
            model = self.ensure_model()
            body = chat_body(prompt, settings, model)
            tally, cut, line = Tally(), StopText(settings.stop), _Line()
            pieces = self._stream(body, tally, line)
            first, ended = None, False  # ended: the reading thread is done with the stream
            try:
                while True:
                    try:
                        item = pieces.get(timeout=0.05)
                    except queue.Empty:
                        if stop.is_set():
                            line.shut()  # the remote sees its client go and ends the generation
                            break
                        continue
                    if item is None:
                        ended = True
                        break
                    if isinstance(item, BaseException):
                        ended = True
                        if stop.is_set():
                            break  # the shut socket's own error
                        raise item
                    if stop.is_set():
                        line.shut()
                        break
                    if shown := cut.feed(item):
                        first = first or time.perf_counter()
                        yield shown
                if not stop.is_set() and (rest := cut.flush()):
                    first = first or time.perf_counter()
                    yield rest
            finally:
                if not ended:
                    line.shut()  # stopped, or a reader that left early: the stream goes too
        finally:
            self.slots.release()
        end = time.perf_counter()
        counts = tally.usage or {}
        if isinstance(counts.get("prompt_tokens"), int):
            self.estimate.learn(prompt, counts["prompt_tokens"])
        stopped = stop.is_set()
        tokens = counts.get("completion_tokens") if isinstance(counts.get("completion_tokens"), int) else tally.pieces
        first = first or end
        return Stats(
            prompt_tokens=counts.get("prompt_tokens") or self.count_tokens(prompt),
            answer_tokens=tokens,
            ttft_s=first - start,
            tokens_per_s=(tokens - 1) / (end - first) if tokens > 1 and end > first else 0.0,
            total_s=end - start,
            stopped=stopped,
            text=cut.emitted,
            finish="stopped" if stopped else "length" if tally.finish == "length" else "stop",
        )

    def _stream(self, body: dict, tally: Tally, line: _Line) -> queue.Queue:
        """Read the streamed answer in a thread of its own: text pieces go into the queue,
        then None at the end, or the failure as a RemoteError."""
        pieces: queue.Queue = queue.Queue()
        url = f"{self.settings.base}/chat/completions"

        def read() -> None:
            started = False
            try:
                with self.client.stream("POST", url, json=body) as response:
                    line.hold(response)
                    if response.status_code != 200:
                        response.read()
                        raise http_failure(response.status_code, response.text, body["model"])
                    started = True
                    for event in events(response.iter_lines()):
                        if text := tally.feed(event):
                            pieces.put(text)
                        if line.cut:
                            break
                    else:
                        if not tally.finish and not line.cut:
                            raise RemoteError("The remote engine ended the answer without saying it was done (it "
                                              "may have stopped or restarted). Try again in a moment.", 502,
                                              "remote_disconnected")
                pieces.put(None)
            except RemoteError as exc:
                pieces.put(exc)
            except httpx.HTTPError as exc:
                log.warning("remote engine at %s: %r", self.settings.base, exc)
                pieces.put(transport_failure(exc, self.settings.timeout_s, midway=started))
            except Exception as exc:  # noqa: BLE001 - handed to the reader
                pieces.put(exc)

        threading.Thread(target=read, name="remote-stream", daemon=True).start()
        return pieces
