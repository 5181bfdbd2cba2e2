"""OpenAI's chat API on the page's own server: `GET /v1/models`, `POST /v1/chat/completions`.

An API client shares everything with the page's visitors: the loaded model, its limits and
the host's system prompt (`ChatBackend.prepare`), the engine's generation slots, and the
fair-use `Gate`, so a script cannot take the model away from the page. Every field of a
request is checked; one this server cannot honour (`n` > 1, tools, ...) is refused in
OpenAI's error shape, naming the field, never ignored. `response_format` json_object and
json_schema hold the answer to a schema (`phi3ui.json_answers`).

Who may call: anyone who can reach a server that listens on loopback only; holders of the
`--api-key` otherwise. Without a key, a request must name a loopback Host (a web page the
local user opens cannot reach /v1 through DNS rebinding), and every POST must say
`Content-Type: application/json` (a cross-site form or text/plain POST, which a browser
sends without asking, is refused). A server reachable beyond its machine without a key serves no /v1
(`Access`). The page's login and the API key are separate: /v1 reads no cookie, and the
page knows nothing of the key.

Nothing here imports Gradio; `server.py` mounts `OpenAIApi.mount()` on the page's app.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.routing import Mount
from starlette.types import Receive

from . import attachments
from . import prompt as prompts
from .chat import ChatBackend, Loaded
from .errors import report
from .json_answers import response_format_schema
from .openai_wire import DONE, Completion, finish_reason, sse, usage
from .pump import pump
from .service import LEFT, Caller, ChatService, Turn
from .settings import SETTING, GenerationSettings, Limits, SettingsError, stop_strings

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = "/v1"
MAX_BODY_BYTES = 16 * 2**20  # a full history (Limits.max_history_chars) as JSON, with room to spare
KEY_HINT = "The host can turn it on with --api-key (or PHI3UI_API_KEY)."
SYSTEM_ROLES = ("system", "developer")  # "developer" is OpenAI's newer name for the system role
# OpenAI fields that change nothing at these values: accepted at them, refused at any other.
NEUTRAL: dict[str, object] = {
    "n": 1, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "store": False,
    "tool_choice": "none",
}
# Sampling as OpenAI's API samples when a request does not say: temperature 1, top-p 1, no top-k
# (settings.GENERATION_TABLE's `api_default` where it differs from the page's default).
OPENAI_TEMPERATURE = SETTING["temperature"].api_default


# --- errors ----------------------------------------------------------------------------
class ApiError(Exception):
    """A refusal in OpenAI's shape: `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", retry_after_s: float | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind, self.retry_after_s = kind, retry_after_s

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _param(loc: tuple) -> str:
    """pydantic's error location as OpenAI names a field: `messages[0].content`."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def invalid(exc: ValidationError) -> ApiError:
    """The first problem pydantic found, naming its field."""
    error = exc.errors()[0]
    param = _param(error["loc"]) or None
    if error["type"] == "extra_forbidden":
        message = f"`{param}` is not supported by this server."
    elif error["type"] == "value_error":
        message = str(error["ctx"]["error"])
    else:
        message = f"`{param}`: {error['msg']}." if param else f"{error['msg']}."
    return ApiError(400, message, param)


# --- who may call -------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether an address to listen on is reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def host_of(header: str) -> str:
    """The host of a Host header, without its port: `[::1]:7860` → `::1`."""
    header = header.strip()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


@dataclass(frozen=True)
class Access:
    """Who may use /v1: with a `key`, holders of it; without one, anyone who can reach the
    server, unless it can be reached beyond its machine (`off_because` says how), when
    nobody may: a model open to the network without a key is anyone's."""

    key: str | None = None
    off_because: str = ""

    @classmethod
    def decide(cls, key: str | None, *, host: str, share: bool = False, spaces: bool = False,
               page_login: bool = False, behind_proxy: bool = False) -> Access:
        key = (key or "").strip() or None
        if key:
            return cls(key)
        reasons = [why for exposed, why in (
            (not is_loopback(host), f"it listens on {host}, beyond this machine"),
            (share, "it shares a public link"),
            (spaces, "it runs on Spaces"),
            (behind_proxy, "it is behind a reverse proxy (--trust-proxy)"),
            (page_login, "its page needs a login (--auth), which /v1 would get around"),
        ) if exposed]
        return cls(None, "; ".join(reasons))

    def describe(self, url: str) -> str:
        """What the log says at start."""
        if self.off_because:
            return (f"OpenAI API: not served, because {self.off_because}, and there is no API key. "
                    f"Give one with --api-key (or PHI3UI_API_KEY) to serve {url}.")
        who = "for clients that send the API key as a bearer token" if self.key else \
            "open to this machine without a key"
        return f"OpenAI API: {url}, {who}."

    def check(self, authorization: str | None, host: str | None = None, what: str = "The OpenAI API") -> None:
        """Refuse a request this server may not answer: 403 when /v1 is off or, without a key,
        when the request names a Host that is not loopback (DNS rebinding); 401 without the key."""
        if self.off_because:
            raise ApiError(403, f"{what} is off on this server: it can be reached beyond its own machine "
                                f"and has no API key. {KEY_HINT}", code="api_disabled", kind="permission_error")
        if self.key is None:
            if not is_loopback(host_of(host or "")):
                raise ApiError(403, f"{what} answers only requests addressed to localhost, 127.0.0.1 or [::1] "
                                    "(the Host header) on a server without an API key. " + KEY_HINT,
                               code="host_not_allowed", kind="permission_error")
            return
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "No API key: send it as a bearer token (Authorization: Bearer <key>).",
                           code="missing_api_key")
        if not secrets.compare_digest(token.strip().encode(), self.key.encode()):
            raise ApiError(401, "Incorrect API key.", code="invalid_api_key")


# --- requests ----------------------------------------------------------------------------
class _Strict(BaseModel):
    """No coercion ("1" is not 1) and no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, value: Any) -> str:
        """A string, or text and file parts (a file's text goes into the message as the page
        puts it: phi3ui/attachments.py); an image or audio part is refused, not dropped."""
        try:
            return attachments.openai_content(value)
        except prompts.PromptError as exc:
            raise ValueError(str(exc)) from None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    """The fields of a chat completion this server honours."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    response_format: dict[str, Any] | None = None  # text, json_object or json_schema (phi3ui/json_answers.py)

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, value: Any) -> tuple[str, ...]:
        return () if value is None else stop_strings(value)


@dataclass(frozen=True)
class ChatCall:
    """A checked request: the conversation as the backend takes it, and how to answer."""

    model: str
    system: str
    history: list[prompts.Message]
    message: str
    settings: GenerationSettings
    stream: bool = False
    include_usage: bool = False


def refuse_unsupported(body: dict) -> dict:
    """The body without neutral fields at their neutral value; any other field this server
    does not honour is refused by name."""
    known = set(ChatRequest.model_fields)
    kept = {}
    for name, value in body.items():
        if name in known:
            kept[name] = value
        elif name in NEUTRAL:
            if value is not None and value != NEUTRAL[name]:
                raise ApiError(400, f"`{name}` = {json.dumps(value)} is not supported by this server; leave it "
                                    f"out or send {json.dumps(NEUTRAL[name])}.", name)
        elif value is not None:
            raise ApiError(400, f"`{name}` is not supported by this server.", name)
    return kept


def conversation(messages: list[ChatMessage]) -> tuple[str, list[prompts.Message], str]:
    """System prompt, history and the message to answer. System messages lead (the chat
    templates have one system prompt, at the start); the last message is the user's."""
    lead = next((i for i, m in enumerate(messages) if m.role not in SYSTEM_ROLES), len(messages))
    for i, message in enumerate(messages[lead:], start=lead):
        if message.role in SYSTEM_ROLES:
            raise ApiError(400, "System messages must come first, before the conversation.", f"messages[{i}].role")
    rest = messages[lead:]
    if not rest or rest[-1].role != "user":
        raise ApiError(400, "The last message must be the user's: it is the one answered.", "messages")
    system = "\n\n".join(m.content for m in messages[:lead] if m.content)
    return system, [{"role": m.role, "content": m.content} for m in rest[:-1]], rest[-1].content


def generation_settings(request: ChatRequest, system: str, limits: Limits) -> GenerationSettings:
    """The request's sampling, checked field by field with the page's own words."""
    if None not in (request.max_tokens, request.max_completion_tokens) and \
            request.max_tokens != request.max_completion_tokens:
        raise ApiError(400, "`max_tokens` and `max_completion_tokens` disagree; send one of them.", "max_tokens")
    max_param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    asked = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    schema, problem = response_format_schema(request.response_format or {"type": "text"})
    if problem:
        raise ApiError(400, problem, "response_format")
    settings = GenerationSettings(
        max_new_tokens=asked if asked is not None else min(GenerationSettings.max_new_tokens, limits.max_new_tokens),
        temperature=OPENAI_TEMPERATURE if request.temperature is None else request.temperature,
        top_p=SETTING["top_p"].default if request.top_p is None else request.top_p,
        top_k=SETTING["top_k"].api_default, seed=request.seed, stop=request.stop, system_prompt=system, json_schema=schema,
    )
    probe = GenerationSettings(max_new_tokens=1)  # valid whatever the limits: one field checked at a time
    for name, param in (("max_new_tokens", max_param), ("temperature", "temperature"), ("top_p", "top_p"),
                        ("seed", "seed"), ("stop", "stop"), ("system_prompt", "messages")):
        try:
            replace(probe, **{name: getattr(settings, name)}).validate(limits)
        except SettingsError as exc:
            raise ApiError(400, str(exc), param) from None
    return settings


def parse_chat(body: object, limits: Limits) -> ChatCall:
    """A chat completion request checked against this server's limits, or `ApiError`."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    try:
        request = ChatRequest.model_validate(refuse_unsupported(body))
    except ValidationError as exc:
        raise invalid(exc) from None
    if request.stream_options is not None and not request.stream:
        raise ApiError(400, "`stream_options` applies only with `stream` true.", "stream_options")
    system, history, message = conversation(request.messages)
    return ChatCall(request.model, system, history, message, generation_settings(request, system, limits),
                    stream=request.stream,
                    include_usage=bool(request.stream_options and request.stream_options.include_usage))


# --- answering --------------------------------------------------------------------------
class Reading:
    """A `Turn`'s answer, read in a thread of its own (`pump`) and handed out chunk by chunk
    to async code. `close` stops it, waits until its generation has ended (the engine slot
    is free again) and closes the turn, which gives the request's place back; it is safe
    to call more than once, and before reading ever began."""

    def __init__(self, turn: Turn, limiter: anyio.CapacityLimiter):
        self.turn = turn
        self._limiter = limiter
        self._chunks = pump(self._read, abandon=self.stop, name="openai-answer")
        self._lock = threading.Lock()  # one call into the pump at a time
        self._closed = False

    def _read(self, emit: Callable[[str], None]) -> None:
        for chunk in self.turn:
            emit(chunk)

    def next(self) -> str | None:
        """The next chunk, None at the end; blocks until it comes."""
        with self._lock:
            return None if self._closed else next(self._chunks, None)

    def stop(self) -> None:
        """The client went away: end the answer within about a token."""
        self.turn.stop(LEFT)

    def close(self) -> None:
        """Blocks until the generation has ended."""
        self.stop()  # first: a `next` waiting for a token returns at once
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._chunks.close()
        self.turn.close()  # the pump's thread, the answer's reader, has finished

    async def texts(self) -> AsyncIterator[str]:
        """The chunks, to async code; leaving early (a client gone) closes the answer."""
        try:
            while (chunk := await anyio.to_thread.run_sync(self.next, abandon_on_cancel=True,
                                                           limiter=self._limiter)) is not None:
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        self.stop()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.close, limiter=self._limiter)


async def until_disconnected(receive: Receive) -> None:
    """Return once the client has gone (the request body is read by then)."""
    while (await receive())["type"] != "http.disconnect":
        pass


@dataclass
class OpenAIApi:
    """The /v1 app around the page's backend and its way in for answers."""

    backend: ChatBackend
    access: Access = field(default_factory=Access)
    lock_settings: bool = False  # visitors read no exception text (the log has it)
    trust_proxy: bool = False  # the client is the first X-Forwarded-For entry
    # The one way in for answers, with the fair-use limits, shared with the page; a default one
    # (no per-client limits) when not given.
    service: ChatService | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    _limiter: anyio.CapacityLimiter = field(init=False)

    def __post_init__(self) -> None:
        if self.service is None:
            self.service = ChatService(self.backend)
        # Each answer's reader waits for its next chunk in a worker thread, and its close may
        # need one more: threads of their own, so the page's are never taken.
        self._limiter = anyio.CapacityLimiter(2 * self.service.places)

    def mount(self) -> Mount:
        return Mount(PREFIX, app=self.app())

    def app(self) -> FastAPI:
        api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, dependencies=[Depends(self.authorize)])
        api.add_exception_handler(ApiError, self._refused)
        api.add_exception_handler(HTTPException, self._unknown)
        api.add_api_route("/models", self.models, methods=["GET"])
        api.add_api_route("/models/{name:path}", self.model, methods=["GET"])
        api.add_api_route("/chat/completions", self.chat_completions, methods=["POST"])
        return api

    # --- plumbing -------------------------------------------------------------------------
    async def authorize(self, request: Request) -> None:
        """Every /v1 route's first check (async: no worker thread for it)."""
        self.access.check(request.headers.get("authorization"), request.headers.get("host"))

    @staticmethod
    async def _refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    @staticmethod
    async def _unknown(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return ApiError(status, f"{request.method} {request.url.path} is not part of this API: it has GET "
                                f"{PREFIX}/models and POST {PREFIX}/chat/completions.",
                        code="unknown_url").response()

    def error(self, exc: BaseException) -> ApiError:
        """A refusal or failure in OpenAI's shape, as `errors.problem` tells it."""
        told = report(exc, self.lock_settings, "/v1")
        return ApiError(told.status, told.text, told.param, told.code, told.kind, told.retry_after_s)

    def loaded(self) -> Loaded:
        loaded = self.backend.loaded
        if loaded is None:
            raise self.error(self.backend.not_ready())
        return loaded

    def card(self, loaded: Loaded) -> dict:
        """The model, with the context window prompts are fitted to (a front end with
        `--engine openai` reads it; OpenAI's own cards have no such field)."""
        return {"id": loaded.model_name(), "object": "model", "created": self.created, "owned_by": "phi3ui",
                "context_window": self.backend.limits.window(loaded.engine.context_window)}

    def caller(self, request: Request) -> Caller:
        return Caller.of("/v1", request, self.trust_proxy)

    # --- routes ---------------------------------------------------------------------------
    async def models(self) -> JSONResponse:
        loaded = self.backend.loaded
        return JSONResponse({"object": "list", "data": [self.card(loaded)] if loaded else []})

    async def model(self, name: str) -> JSONResponse:
        card = self.card(self.loaded())
        if name != card["id"]:
            raise ApiError(404, f"The model `{name}` does not exist here; this server serves `{card['id']}`.",
                           "model", code="model_not_found")
        return JSONResponse(card)

    async def chat_completions(self, request: Request) -> Response:
        call = parse_chat(await read_json(request), self.backend.limits)
        current = self.loaded().model_name()
        if current and call.model != current:
            raise ApiError(404, f"The model `{call.model}` does not exist here; this server serves `{current}` "
                                f"(see {PREFIX}/models).", "model", code="model_not_found")
        try:
            self.backend.host_prompt.system_for(call.system)  # before the door: a 400 costs no ticket
            turn = self.service.admit(self.caller(request))
        except Exception as exc:  # noqa: BLE001 - refused at the door: errors.problem says how
            raise self.error(exc) from None
        reading, handed = Reading(turn, self._limiter), False
        try:
            await anyio.to_thread.run_sync(turn.begin, self.backend, call.history, call.message, call.settings,
                                           limiter=self._limiter)
            completion = Completion(current or call.model)
            if call.stream:
                # The first chunk is read before the 200, watching for the client to leave (a wait
                # for a slot or a remote's first token is stopped like any other). An answer that
                # fails at once (a remote that is down or refuses) gets its own status, not an event.
                first = await self.first_chunk(reading, request)
                handed = True
                return StreamingResponse(self.events(reading, completion, call, first),
                                         media_type="text/event-stream", background=BackgroundTask(reading.aclose),
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            text = await self.collect(reading, request)
            return JSONResponse(completion.whole(text, finish_reason(turn.stats), usage(turn.stats, turn.prompt_tokens)))
        except Exception as exc:  # noqa: BLE001 - the client gets what errors.problem allows
            raise self.error(exc) from None
        finally:
            if not handed:  # also when cancelled: the place and ticket go back
                await reading.aclose()

    async def first_chunk(self, reading: Reading, request: Request) -> str | None:
        """The answer's first chunk (None for an empty answer)."""
        return await self.watched(reading, request, lambda: anyio.to_thread.run_sync(
            reading.next, abandon_on_cancel=True, limiter=self._limiter))

    async def collect(self, reading: Reading, request: Request) -> str:
        """The whole answer."""
        async def join() -> str:
            return "".join([text async for text in reading.texts()])

        return await self.watched(reading, request, join)

    @staticmethod
    async def watched(reading: Reading, request: Request, work: Callable[[], Awaitable[T]]) -> T:
        """`work()`, stopping the answer if the client leaves meanwhile."""
        result: T | None = None
        failed: Exception | None = None

        async def watch() -> None:
            await until_disconnected(request.receive)
            reading.stop()

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            try:
                result = await work()
            except Exception as exc:  # noqa: BLE001 - raised below, outside the task group
                failed = exc
            group.cancel_scope.cancel()
        if failed is not None:
            raise failed
        return result  # type: ignore[return-value]

    async def events(self, reading: Reading, completion: Completion, call: ChatCall,
                     first: str | None = None) -> AsyncIterator[str]:
        """The answer as server-sent events: the role, text deltas, the finish reason, usage
        if asked for, then [DONE]. A failure midway is an error event instead. `first` is a
        chunk already read before the 200."""
        try:
            yield sse(completion.chunk({"role": "assistant", "content": ""}, with_usage=call.include_usage))
            try:
                if first:
                    yield sse(completion.chunk({"content": first}, with_usage=call.include_usage))
                async for text in reading.texts():
                    yield sse(completion.chunk({"content": text}, with_usage=call.include_usage))
            except Exception as exc:  # noqa: BLE001 - the client gets what errors.problem allows
                yield sse(self.error(exc).body())
                return
            stats = reading.turn.stats
            yield sse(completion.chunk({}, finish_reason(stats), with_usage=call.include_usage))
            if call.include_usage:
                yield sse(completion.usage_chunk(usage(stats, reading.turn.prompt_tokens)))
            yield DONE
        finally:  # however the stream ends, also cancelled between two events
            await reading.aclose()


async def read_json(request: Request) -> object:
    """The body as JSON, refused beyond MAX_BODY_BYTES before it is all in memory, and
    unless it says it is JSON (a browser sends a cross-site text/plain or form POST without
    asking the server first; application/json it does not)."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, f"The request body must be JSON, sent with Content-Type: application/json (not "
                            f"{kind or 'none'}).", code="unsupported_media_type")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"The request body is over {MAX_BODY_BYTES // 2**20} MB.", code="request_too_large")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None
