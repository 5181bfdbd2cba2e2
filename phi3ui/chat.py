"""The backend the page and the API call: one loaded model, guarded, and chat turns on it.

Settings and messages go in; text chunks and Stats come out. Nothing here knows about
Gradio, so the same backend serves the page, the API, the tests and the benchmark.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from . import prompt as prompts
from .engines import Chunk, Engine, load_engine
from .export import Exported, ModelUnavailable, Progress, default_settings, ensure_exported
from .settings import BUNDLED, ExportSettings, GenerationSettings, Limits, RuntimeSettings, SettingsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """The model in memory, how it got there, and anything the user should be told."""

    engine: Engine
    exported: Exported
    runtime: RuntimeSettings
    notices: tuple[str, ...] = ()

    def describe(self) -> str:
        return (f"**{self.exported.source}** · {self.exported.describe()} · "
                f"{self.engine.label} engine on {self.engine.device} · "
                f"{self.engine.context_window}-token window  \n`{self.exported.folder}`")


def fallback_notice(model: str, reason: str) -> str:
    """What the page and the log say when the app starts on the bundled model instead. The
    reason is a ModelUnavailable's, which already says how to get the model."""
    return f"{model} could not be loaded: {reason} Running the bundled SmolLM2-135M-Instruct instead."


@dataclass
class ChatBackend:
    """Holds the one loaded model. Loading swaps it under `_load_lock`; the engine guards
    generation (one answer at a time, or `concurrency` at once batched on genai);
    `_stops` lets a session stop its own answer."""

    limits: Limits = field(default_factory=Limits)
    concurrency: int = 1
    loaded: Loaded | None = None
    _load_lock: threading.Lock = field(default_factory=threading.Lock)
    _stops: dict[str, threading.Event] = field(default_factory=dict)

    def load(self, model: str, export: ExportSettings | None = None,
             runtime: RuntimeSettings = RuntimeSettings(), progress: Progress = log.info,
             fallback: bool = False) -> Loaded:
        """Export if needed, then load; with `fallback`, an unavailable model gives way to
        the bundled one (the page says so) instead of failing the start."""
        runtime.validate()
        notices: list[str] = []
        with self._load_lock:
            try:
                exported = ensure_exported(model, export, progress)
            except ModelUnavailable as exc:
                if not fallback or model == BUNDLED:
                    raise
                notice = fallback_notice(model, str(exc))
                log.warning(notice)
                notices.append(notice)
                exported = ensure_exported(BUNDLED, default_settings(BUNDLED), progress)
            progress(f"Loading {exported.folder} with the {runtime.engine} engine…")
            earlier = None
            if self.loaded is not None:  # keep how it was loaded, not its memory
                self.loaded.engine.close()
                earlier = (self.loaded.exported, self.loaded.runtime, self.loaded.notices)
                self.loaded = None
            try:
                engine = load_engine(exported.folder, runtime, self.concurrency)
            except Exception:
                if earlier is not None:
                    self._restore(*earlier, progress=progress)
                raise
            if engine.device_warning:
                log.warning(engine.device_warning)
                notices.append(engine.device_warning)
            self.loaded = Loaded(engine, exported, runtime, tuple(notices))
            progress(f"Loaded: {self.loaded.describe()}")
            return self.loaded

    def _restore(self, exported: Exported, runtime: RuntimeSettings, notices: tuple[str, ...],
                 progress: Progress) -> None:
        """After a failed load, the server keeps answering with the model it had."""
        try:
            self.loaded = Loaded(load_engine(exported.folder, runtime, self.concurrency), exported, runtime, notices)
        except Exception:  # noqa: BLE001 - the failed load's own error is the one to report
            log.exception("could not load the previous model again")
            return
        progress(f"Loading failed; back on {self.loaded.describe()}")

    @property
    def engine(self) -> Engine:
        if self.loaded is None:
            raise SettingsError("No model is loaded yet.")
        return self.loaded.engine

    def check_message(self, message: object) -> str:
        if not isinstance(message, str):
            raise prompts.PromptError("The message must be text.")
        if not message.strip():
            raise prompts.PromptError("The message is empty.")
        if len(message) > self.limits.max_message_chars:
            raise prompts.PromptError(
                f"The message is {len(message):,} characters; the limit is "
                f"{self.limits.max_message_chars:,}."
            )
        return message

    def prepare(self, history: object, message: object, settings: GenerationSettings,
                draft: bool = False) -> prompts.Fitted:
        """Validate everything a client sent and fit it into the context window. A `draft`
        (the page's preview of what it would send) may have an empty message."""
        settings.validate(self.limits)
        if not (draft and message == ""):
            message = self.check_message(message)
        messages, dropped = prompts.newest(prompts.normalize(history), self.limits.max_history_messages,
                                           self.limits.max_history_chars)
        engine = self.engine
        fitted = prompts.fit(
            engine.render, engine.count_tokens, system=settings.system_prompt, history=messages,
            message=message, max_new_tokens=settings.max_new_tokens, window=engine.context_window,
            system_ok=engine.system_ok,
        )
        return replace(fitted, dropped_exchanges=fitted.dropped_exchanges + dropped)

    def stream(self, fitted: prompts.Fitted, settings: GenerationSettings,
               session: str | None = None) -> Iterator[Chunk]:
        """Text chunks, then Stats. `stop(session)` ends it within about one token."""
        stop = threading.Event()
        if session:
            self._stops[session] = stop
        try:
            yield from self.engine.stream(fitted.prompt, settings, stop)
        finally:
            if session and self._stops.get(session) is stop:
                del self._stops[session]

    def stop(self, session: str) -> bool:
        event = self._stops.get(session)
        if event:
            event.set()
        return event is not None

    def reply(self, history: object, message: object, settings: GenerationSettings) -> Iterator[Chunk]:
        """prepare + stream, for callers that need no prompt details."""
        yield from self.stream(self.prepare(history, message, settings), settings)
