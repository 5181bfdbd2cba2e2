"""Several answers at once: openvino-genai's ContinuousBatchingPipeline behind the Engine API.

One background thread owns the pipeline. `stream()` calls (one per user) hand it a request
and wait for text; the thread adds new requests, stops those whose user pressed Stop or
left, runs one `step()` for all running answers together (prefill of new prompts is mixed
with the others' decoding), then hands each answer its new token ids. Each user's own
thread turns ids into text with `IncrementalText`, off the stepping thread's critical path.
openvino-genai 2026.4's `step()` keeps Python's GIL while it runs (its binding does not
release it), so the web server's threads wait out each step: milliseconds on a small model,
seconds for a piece of a long prompt on Phi-3 (bench/NOTES.md, "Where the memory goes").
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .engine import Emit
from .genai_engine import KV_BLOCKS_ENV, GenAIEngine, tokenized
from .settings import GenerationSettings, RuntimeSettings, SettingsError

log = logging.getLogger(__name__)

@dataclass
class IncrementalText:
    """Token ids in, text out, never half a character.

    A Chinese character or an emoji often spans several byte-level tokens; until the last
    one arrives, decoding ends in U+FFFD and nothing is emitted. Each decode starts one
    emitted token back (`prefix`), so a tokenizer that drops the leading space of the
    first token it decodes cannot eat the space between two chunks. (openvino-genai's
    TextStreamer also never splits a character, but held runs of emoji until the next
    plain character, so answers made of emoji arrived all at the end.)
    """

    decode: Callable[[list[int]], str]
    ids: list[int] = field(default_factory=list)
    prefix: int = 0  # start of the decode window
    read: int = 0  # ids up to here are already emitted as text

    def push(self, new: list[int]) -> str:
        self.ids.extend(new)
        before = self.decode(self.ids[self.prefix:self.read]) if self.read > self.prefix else ""
        text = self.decode(self.ids[self.prefix:])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""  # wait for the rest of the character
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before):]

    def flush(self) -> str:
        """Whatever is left when the answer ends (a cut-off character stays as U+FFFD)."""
        before = self.decode(self.ids[self.prefix:self.read]) if self.read > self.prefix else ""
        text = self.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(before):]


@dataclass(frozen=True)
class Done:
    """The end of an answer's token stream, with the error that ended it, if any."""

    error: BaseException | None = None


@dataclass(eq=False)
class Request:
    """One answer in flight: what the stepping thread needs, and where it puts token ids."""

    input_ids: object  # openvino.Tensor
    config: object  # openvino_genai.GenerationConfig
    stop: threading.Event
    tokens: queue.Queue = field(default_factory=queue.Queue)  # lists of ids, then one Done
    handle: object = None


class BatchingEngine(GenAIEngine):
    """The genai engine answering up to `concurrency` users at the same time."""

    def __init__(self, folder: Path, runtime: RuntimeSettings, concurrency: int):
        self._pending: list[Request] = []
        self._wake = threading.Condition()
        self._closed = False
        super().__init__(folder, runtime, concurrency)  # at most a full batch at once
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="genai-batching", daemon=True)
        self._thread.start()

    @property
    def label(self) -> str:
        return f"{super().label} (continuous batching, {self.concurrency} at once)"

    def make_pipeline(self):
        import openvino_genai as ov_genai

        scheduler = self.scheduler_config()
        log.info("Continuous batching: %d at once, KV cache %s, prefix caching on.", self.concurrency,
                 f"{scheduler.num_kv_blocks} blocks" if scheduler.num_kv_blocks else f"{scheduler.cache_size} GB")
        return ov_genai.ContinuousBatchingPipeline(str(self.folder), scheduler, self.device,
                                                   self.pipeline_properties())

    def _generate(self, ids: list[int], settings: GenerationSettings, emit: Emit, stop: threading.Event) -> list[int]:
        """Queue the request for the stepping thread and wait until it is answered."""
        config = self.generation_config(settings, self.pipeline.get_config())  # a copy per request
        request = Request(tokenized(ids).input_ids, config, stop)
        with self._wake:
            if self._closed:
                raise SettingsError("The model is being replaced; send the message again in a moment.")
            self._pending.append(request)
            self._wake.notify()
        text = IncrementalText(self.decode)
        while not isinstance(item := request.tokens.get(), Done):
            if chunk := text.push(item):
                emit(chunk)
        if item.error is not None:
            raise item.error
        if rest := text.flush():
            emit(rest)
        return text.ids

    # --- the stepping thread ----------------------------------------------------------
    def _run(self) -> None:
        active: list[Request] = []
        while True:
            with self._wake:
                while not self._pending and not active and not self._closed:
                    self._wake.wait()
                new, self._pending = self._pending, []
                closed = self._closed
            if closed:
                for request in active + new:
                    self._finish(request, SettingsError("The model was unloaded while answering."))
                return
            for request in new:
                self._start(request, active)
            try:
                for request in active:
                    if request.stop.is_set() and self._running(request):
                        request.handle.stop()  # keeps what was generated; freed at the next step
                if self.pipeline.has_non_finished_requests():
                    self.pipeline.step()
            except Exception as exc:  # noqa: BLE001 - every waiting user gets the error
                log.exception("Continuous batching step failed")
                for request in active:
                    request.handle.cancel()
                    self._finish(request, exc)
                active.clear()
                self._recover()
                continue
            for request in list(active):
                if self._collect(request):
                    active.remove(request)

    def _recover(self) -> None:
        """After a failed step the pipeline refuses every later one ("already in scheduling
        phase") until a step runs with the failed requests cancelled."""
        try:
            self.pipeline.step()
        except Exception:  # noqa: BLE001 - the next real step reports what is still wrong
            log.exception("Continuous batching could not recover from the failed step")

    def _start(self, request: Request, active: list[Request]) -> None:
        if request.stop.is_set():  # stopped while waiting for its turn
            self._finish(request)
            return
        try:
            request.handle = self.pipeline.add_request(next(self._ids), request.input_ids, request.config)
        except Exception as exc:  # noqa: BLE001 - handed to the user's stream
            self._finish(request, exc)
            return
        active.append(request)

    @staticmethod
    def _running(request: Request) -> bool:
        import openvino_genai as ov_genai

        return request.handle.get_status() == ov_genai.GenerationStatus.RUNNING

    def _collect(self, request: Request) -> bool:
        """Pass new token ids on; True once the answer is complete."""
        import openvino_genai as ov_genai

        status = request.handle.get_status()  # read it first: no token is missed after it
        # A handle stopped by us also reads IGNORED in openvino-genai 2026.4; only an
        # unrequested IGNORED means the scheduler could not fit the request.
        if status == ov_genai.GenerationStatus.IGNORED and not request.stop.is_set():
            self._finish(request, SettingsError(
                "This conversation does not fit the server's KV cache; start a new chat or ask the "
                f"operator to raise {KV_BLOCKS_ENV}."))
            return True
        finished = status != ov_genai.GenerationStatus.RUNNING
        while request.handle.can_read():
            for output in request.handle.read().values():
                if new := [t for t in output.generated_ids if t not in self.eos_ids]:
                    request.tokens.put(new)
        if finished:
            self._finish(request)
        return finished

    @staticmethod
    def _finish(request: Request, error: BaseException | None = None) -> None:
        request.tokens.put(Done(error))

    def close(self) -> None:
        """Stop the stepping thread; answers still running end with a clear error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
