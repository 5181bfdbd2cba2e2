"""The backend the page and the API call: one loaded model, guarded, and chat turns on it.

Settings and messages go in; an `Answer` comes out (text chunks, then its stats). Nothing
here knows about Gradio, so the same backend serves the page, the API, the tests and the
benchmarks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import prompt as prompts
from . import resources
from . import window as window_policy
from .answer import Answer
from .attachments import Attachment, AttachmentError, message_with
from .engine import AnswerEngine
from .engines import load_engine
from .errors import ModelNotLoaded, SystemPromptLocked
from .export import Exported, ModelUnavailable, default_settings, ensure_exported
from .progress import Preparation, Snapshot
from .remote_engine import RemoteEngine
from .settings import (
    BUNDLED,
    ExportSettings,
    GenerationSettings,
    Limits,
    RuntimeSettings,
    SettingsError,
)

log = logging.getLogger(__name__)
LOAD_STAGES = ("Loading", "Warming up")  # a load's own, after whatever the export needs
# What a locked server's visitors read of a failed or diverted preparation (the log has the rest).
LOCKED_FAILURE = "the details are in the server's log"
LOCKED_FALLBACK = "The host's model could not be had here; the bundled SmolLM2-135M-Instruct answers instead."


@dataclass(frozen=True)
class Loaded:
    """The model in memory, how it got there, and anything the user should be told."""

    engine: AnswerEngine
    exported: Exported
    runtime: RuntimeSettings
    start_notices: tuple[str, ...] = ()  # from loading (a fallback, the device)
    window: int = 0  # the context window prompts are fitted to, when capped below the model's

    @property
    def notices(self) -> tuple[str, ...]:
        """What the page tells: the load's notices, and the engine's as they are now."""
        return (*self.start_notices, *self.engine.notices)

    def window_text(self) -> str:
        """The window prompts are fitted to, and where it comes from."""
        return self.engine.window_text(self.window)

    def model_name(self, folder: bool = False) -> str:
        """The model's name: the remote's ("" until it says), or what `--model` named, a
        local folder by its name only unless `folder` (a locked server shows no server paths)."""
        if self.engine.kind.remote:
            return self.engine.model_name
        source = self.exported.source
        return source if folder else shown_name(source)

    def describe(self, folder: bool = True) -> str:
        """The model, its export, engine, device and window; with `folder`, where it lies on
        disk or the remote's URL too (the host's to see)."""
        engine = f"{self.engine.describe(where=folder)} · {self.window_text()}"
        if self.engine.kind.remote:  # nothing exported here
            return f"**{self.model_name() or 'remote model'}** · {engine}"
        where = f"  \n`{self.exported.folder}`" if folder else ""
        return f"**{self.model_name(folder)}** · {self.exported.describe()} · {engine}{where}"


def shown_name(model: str) -> str:
    """A model as visitors may see it: a local folder by its name only, with no server path."""
    path = Path(model).expanduser()
    return path.resolve().name if path.exists() else model


def fallback_notice(model: str, reason: str) -> str:
    """What the page and the log say when the app starts on the bundled model instead. The
    reason is a ModelUnavailable's, which already says how to get the model."""
    return f"{model} could not be loaded: {reason} Running the bundled SmolLM2-135M-Instruct instead."


@dataclass(frozen=True)
class HostPrompt:
    """The system prompt the host set (`--system-prompt`). Unlocked it is only the default;
    locked, visitors can neither change nor remove it, through the page or the API."""

    text: str = ""
    locked: bool = False
    shown: bool = True  # whether visitors may read it (the page says one is in force either way)

    def system_for(self, requested: str) -> str:
        """The system prompt a request gets; "" asks for the host's."""
        if self.locked and self.text:
            if requested and requested != self.text:
                raise SystemPromptLocked("This server sets its own system prompt; it cannot be changed or removed.")
            return self.text
        return requested or self.text


@dataclass(frozen=True)
class LoadRequest:
    """A model to load, and how: what the server starts with."""

    model: str
    export: ExportSettings | None = None
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)


def _logged(progress: Callable[[str], None]) -> Callable[[str], None]:
    """The terminal hears every line too, whoever else listens."""
    if progress == log.info:
        return progress
    return lambda line: (log.info("%s", line), progress(line))


@dataclass
class ChatBackend:
    """Holds the one loaded model. Loading swaps it under `_load_lock`; the engine guards
    generation (one answer at a time, or `concurrency` at once batched on genai). While a
    load downloads, exports and (when memory allows both) loads, the model loaded before
    keeps answering; `preparation` says how far the latest load has got, for the page and
    `/health`."""

    limits: Limits = field(default_factory=Limits)
    concurrency: int = 1
    host_prompt: HostPrompt = field(default_factory=lambda: HostPrompt())
    export_memory_limit: int | None = None  # bytes an export may count on; None: what is available
    loaded: Loaded | None = None
    preparation: Preparation | None = None
    _load_lock: threading.Lock = field(default_factory=threading.Lock)

    def preparing(self) -> Snapshot | None:
        """The latest load, while it runs or once it has failed (None once it succeeded), as
        visitors may read it: on a locked server without the work's last line, the failure's
        text or a fallback's reason, which may name server paths (the log has them)."""
        preparation = self.preparation
        snapshot = preparation.snapshot() if preparation else None
        if snapshot is None or snapshot.finished:
            return None
        if self.host_prompt.locked:
            snapshot = replace(snapshot, line="", failure=snapshot.failure and LOCKED_FAILURE,
                               notice=snapshot.notice and LOCKED_FALLBACK)
        return snapshot

    def load(self, model: str, export: ExportSettings | None = None,
             runtime: RuntimeSettings = RuntimeSettings(), progress: Callable[[str], None] = log.info,
             fallback: bool = False) -> Loaded:
        """Export if needed, then load; with `fallback`, an unavailable model gives way to
        the bundled one (the page says so) instead of failing the start."""
        runtime.validate()
        if self.loaded is not None and self.loaded.engine.kind.remote:
            raise SettingsError("This server is a front end to a remote engine (--engine openai): the model is the "
                                "remote's, and nothing is exported or loaded here.")
        if runtime.is_remote:
            return self._connect(runtime, progress)
        preparation = Preparation(shown_name(model), emit=_logged(progress))
        with self._load_lock:
            self.preparation = preparation
            try:
                loaded = self._load(model, preparation, export, runtime, fallback)
            except Exception as exc:
                preparation.fail(str(exc))
                raise
            preparation.finish()
            return loaded

    def _load(self, model: str, progress: Preparation, export: ExportSettings | None, runtime: RuntimeSettings,
              fallback: bool) -> Loaded:
        notices: list[str] = []
        progress.plan(*LOAD_STAGES)
        try:
            exported = ensure_exported(model, export, progress, self.export_memory_limit)
        except ModelUnavailable as exc:
            if not fallback or model == BUNDLED:
                raise
            notice = fallback_notice(model, str(exc))
            log.warning(notice)
            notices.append(notice)
            progress.instead(BUNDLED, notice, keep=LOAD_STAGES)
            exported = ensure_exported(BUNDLED, default_settings(BUNDLED), progress)
        progress.stage("Loading")
        progress(f"Loading {exported.folder} with the {runtime.engine} engine…")
        earlier, kept = None, self.loaded
        if kept is not None and not resources.fits_beside(exported.folder):
            progress("Too little memory for two models at once: the chat pauses until the new one is loaded.")
            kept.engine.close()
            earlier = (kept.exported, kept.runtime, kept.start_notices)  # how it was loaded, not its memory
            self.loaded = kept = None
        engine = None
        try:
            engine = load_engine(exported.folder, runtime, self.concurrency)
            self.limits.check_window(engine.context_window)
            # The first inference does one-off work (seconds on Phi-3): done here, before
            # the model is published, so the first question does not wait for it.
            progress.stage("Warming up")
            progress(f"Warmed up in {engine.warm_up():.1f} s (the first inference's one-off work).")
        except Exception:
            if engine is not None:
                engine.close()
            if earlier is not None:
                self._reload_previous(*earlier, progress=progress)
            raise
        if engine.device_warning:
            log.warning(engine.device_warning)
            notices.append(engine.device_warning)
        self.loaded = Loaded(engine, exported, runtime, tuple(notices),
                             self.limits.window(engine.context_window))
        if kept is not None:  # it answered until now (the batching engine ends answers still on it)
            kept.engine.close()
        progress(f"Loaded: {self.loaded.describe()}")
        return self.loaded

    def _connect(self, runtime: RuntimeSettings, progress: Callable[[str], None]) -> Loaded:
        """`--engine openai`: no export and no model here; the remote answers. A remote that
        is down now is no failure: each message tries it again."""
        assert runtime.remote is not None
        with self._load_lock:
            progress(f"Connecting to the remote engine at {runtime.remote.base}…")
            engine = RemoteEngine(runtime.remote, self.concurrency, self.limits.context_window)
            try:
                self.limits.check_window(engine.context_window)
            except SettingsError:
                engine.close()
                raise
            source = engine.model_name or runtime.remote.model or "remote"
            exported = Exported(folder=Path(), source=source, settings=None, cached=True)
            self.loaded = Loaded(engine, exported, runtime, (), self.limits.window(engine.context_window))
            progress(f"Loaded: {self.loaded.describe()}")
            return self.loaded

    def _reload_previous(self, exported: Exported, runtime: RuntimeSettings, notices: tuple[str, ...],
                         progress: Callable[[str], None]) -> None:
        """After a failed load, the server keeps answering with the model it had."""
        try:
            engine = load_engine(exported.folder, runtime, self.concurrency)
            engine.warm_up()
            self.loaded = Loaded(engine, exported, runtime, notices, self.limits.window(engine.context_window))
        except Exception:  # noqa: BLE001 - the failed load's own error is the one to report
            log.exception("could not load the previous model again")
            return
        progress(f"Loading failed; back on {self.loaded.describe()}")

    @property
    def engine(self) -> AnswerEngine:
        if self.loaded is None:
            raise self.not_ready()
        return self.loaded.engine

    def not_ready(self) -> ModelNotLoaded:
        """Why there is no answer yet: what is being prepared and how far it got, or why it
        failed (as `preparing` tells it)."""
        snapshot = self.preparing()
        if snapshot is None:
            return ModelNotLoaded("No model is loaded yet; try again in a moment.")
        if snapshot.failure:
            return ModelNotLoaded(f"No model could be loaded: {snapshot.failure}")
        return ModelNotLoaded(f"The model is not ready yet: {snapshot.describe()}. The chat answers once it is.")

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
                draft: bool = False, files: Sequence[Attachment] = ()) -> prompts.Fitted:
        """Validate everything a client sent and fit it into the context window. A `draft`
        (the page's preview of what it would send) may have an empty message. `files` go
        into the message (attachments.message_with), each refused if it alone cannot fit."""
        settings.validate(self.limits)
        if files:
            self.check_files(files, settings)
            message = message_with(str(message), files)
        if not (draft and message == ""):
            message = self.check_message(message)
        messages, dropped = prompts.newest(prompts.normalize(history), self.limits.max_history_messages,
                                           self.limits.max_history_chars)
        engine = self.engine
        engine.check_settings(settings)
        if not draft:
            engine.refresh()  # a remote not asked yet: its window, before fitting to it
        fitted = prompts.fit(
            engine.render, engine.count_tokens, system=self.host_prompt.system_for(settings.system_prompt),
            history=messages,
            message=message, max_new_tokens=settings.max_new_tokens,
            window=self.limits.window(engine.context_window), system_ok=engine.system_ok,
            cut_to=self.limits.window_cut_to, costs=window_policy.costs_for(engine),
        )
        return replace(fitted, dropped_exchanges=fitted.dropped_exchanges + dropped)

    def check_files(self, files: Sequence[Attachment], settings: GenerationSettings) -> None:
        """Refuse a file that cannot fit the context window with the answer, with its token
        count and the window: whole files go in the prompt, none is searched for parts."""
        engine = self.engine
        window = self.limits.window(engine.context_window)
        for file in files:
            tokens = engine.count_tokens(engine.render([{"role": "user", "content": file.block()}]))
            if tokens + settings.max_new_tokens > window:
                raise AttachmentError(
                    f"“{file.name}” is {tokens:,} tokens; with {settings.max_new_tokens:,} for the answer it "
                    f"cannot fit the model's {window:,}-token context window. Whole files go into the prompt "
                    "(no part of one is picked out): attach a shorter file or lower 'max new tokens'.")

    def start(self, fitted: prompts.Fitted, settings: GenerationSettings) -> Answer:
        """The answer to a fitted prompt; it starts when first read, and `stop()` ends it
        within about a token (or before it starts)."""
        engine = self.engine
        reused = engine.memory.remembered_tokens(fitted.prompt.text)
        log.info("window: %d prompt tokens, %d computed, %d exchanges left out", fitted.prompt_tokens,
                 max(0, fitted.prompt_tokens - reused), fitted.dropped_exchanges)
        return engine.answer(fitted.prompt, settings)

    def reply(self, history: object, message: object, settings: GenerationSettings) -> Answer:
        """prepare + start, for callers that need no prompt details."""
        return self.start(self.prepare(history, message, settings), settings)
