"""What every engine shares: the model folder's facts, the device, the prompt's token ids,
and turning a prompt into an `Answer`.

An engine renders a conversation with the model's chat template, counts tokens, and
answers a prompt. The concrete engines live in modules of their own and are looked up by
name in `phi3ui.engines`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Protocol

from . import prompt as prompts
from .answer import Answer, Stats
from .pump import pump
from .settings import GenerationSettings, RuntimeSettings, SettingsError, cache_root
from .structured import Prompt, encode_prompt, render_prompt, split_text_encoder

Emit = Callable[[str], None]
log = logging.getLogger(__name__)


def available_devices() -> list[str]:
    import openvino as ov

    return list(ov.Core().available_devices)


def resolve_device(requested: str) -> tuple[str, str | None]:
    """The device to use, and a warning when the requested one does not exist here."""
    devices = available_devices()
    name = (requested or "CPU").strip()
    if name in devices or name.split(":")[0] in ("AUTO", "HETERO", "MULTI"):
        return name, None
    return "CPU", f"Device {name!r} is not available here (found: {', '.join(devices)}); using CPU."


def default_properties() -> dict:
    """Latency settings for one user at a time, plus a model cache so later starts are faster.

    The cache is weightless (CACHE_MODE=OPTIMIZE_SIZE): it keeps the compiled graph and reads
    the weights from the export instead of a second copy of them (for Phi-3-mini int4: 1.1 GB
    of disk instead of 2.9). On a CPU what it saves varies from run to run; it pays most
    where compiling is slow (GPU, NPU).

    DYNAMIC_QUANTIZATION_GROUP_SIZE is left at the plugin's default: other values made greedy
    and seeded answers depend on what else shares the batch and on prefix-cache hits, for
    no decode speed that held up when measured in turns (bench/NOTES.md)."""
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "CACHE_DIR": str(cache_root() / "ov-cache"),
        "CACHE_MODE": "OPTIMIZE_SIZE",
    }


CACHE_KEYS = frozenset({"CACHE_DIR", "CACHE_MODE"})


def without_cache(properties: dict) -> dict:
    """The properties that can change an answer or its speed (the model cache cannot)."""
    return {k: v for k, v in properties.items() if k not in CACHE_KEYS}


def merge_properties(defaults: dict, overrides: dict) -> dict:
    """`overrides` over `defaults`; None unsets a key (OpenVINO's own default then applies)."""
    return {k: v for k, v in {**defaults, **overrides}.items() if v is not None}


def read_json(path: Path) -> dict:
    """A JSON file of the model folder, or {} when the folder has none."""
    return json.loads(path.read_text()) if path.exists() else {}


def added_token_strings(folder: Path) -> list[str]:
    """Every added or special token string of the model's tokenizer, from its files."""
    found = {t["content"] for t in read_json(folder / "tokenizer.json").get("added_tokens", [])}
    found |= {t["content"] for t in read_json(folder / "tokenizer_config.json").get("added_tokens_decoder", {}).values()}
    return sorted(t for t in found if t)


def plain_text_tokenizer(folder: Path):
    """The model's Hugging Face tokenizer (tokenizer.json) with every added token, special
    or not, read as text (Phi-3 adds `</s>` as a non-special token), or None without that
    file. openvino-genai's tokenizer has no such switch."""
    path = folder / "tokenizer.json"
    if not path.exists():
        return None
    from tokenizers import Tokenizer

    spec = json.loads(path.read_text())
    for token in spec.get("added_tokens", []):
        token["special"] = True
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.encode_special_tokens = True
    return tokenizer


class TokenMemory:
    """Recent prompts with their answers, as the token ids the model read and wrote.

    A chat sends its history back as text, and re-tokenising an answer can give other ids
    than the ones generated (random weights nearly always, real text now and then). The
    prefix cache stops matching at the first differing id, so the rest of that answer would
    be read again and the next first token comes later. Feeding the remembered ids keeps
    every earlier turn a cache hit; the model sees its own tokens."""

    def __init__(self, size: int = 64):
        self.size = size
        self._entries: OrderedDict[str, list[int]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, text: str, ids: list[int]) -> None:
        with self._lock:
            self._entries[text] = ids
            self._entries.move_to_end(text)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def remembered_tokens(self, prompt: str) -> int:
        """How many of the prompt's first tokens were read or written before, as one earlier
        prompt plus its answer: what the prefix cache can skip while it still holds them
        (openvino-genai reports no per-request cache hits)."""
        with self._lock:
            known = max((text for text in self._entries if prompt.startswith(text)), key=len, default="")
            return len(self._entries.get(known, []))

    def encode(self, prompt: str, encode: Callable[[str], list[int]], special: Callable[[int], bool]) -> list[int]:
        """`encode(prompt)`, except that the longest remembered start of `prompt` keeps its
        ids when the rest begins with a special token: a tokenizer splits text at special
        tokens before anything else, so cutting there cannot change the other ids."""
        with self._lock:
            known = max((text for text in self._entries if prompt.startswith(text)), key=len, default="")
            ids = self._entries.get(known, [])
        if known:
            rest = encode(prompt[len(known):])
            if rest and special(rest[0]):
                return ids + rest
        return encode(prompt)


class ChatEngine(Protocol):
    """What `ChatBackend`, the page and /v1 use of an engine: a local `Engine`, or
    `phi3ui.remote_engine.RemoteEngine` (no model here; `remote` is True)."""

    name: str
    remote: bool
    model_name: str
    device: str
    device_warning: str | None
    system_ok: bool
    prompt_lookup: bool
    concurrency: int
    memory: TokenMemory

    @property
    def context_window(self) -> int: ...
    @property
    def notices(self) -> tuple[str, ...]: ...
    @property
    def label(self) -> str: ...
    def render(self, messages: list[prompts.Message]) -> Any: ...
    def count_tokens(self, prompt: Any) -> int: ...
    def answer(self, prompt: Any, settings: GenerationSettings) -> Answer: ...
    def refresh(self) -> None: ...
    def warm_up(self) -> float: ...
    def close(self) -> None: ...


class Engine(ABC):
    """One loaded model, answering up to `concurrency` prompts at once (one unless the
    engine batches); the others wait for a free slot."""

    name: ClassVar[str]
    remote: ClassVar[bool] = False  # RemoteEngine's is True: no model in this process
    notices: tuple[str, ...] = ()  # what the page says about the engine's state (a remote's change)
    model_name: ClassVar[str] = ""  # a remote's model name; a local model is named by its export

    def __init__(self, folder: Path, runtime: RuntimeSettings, concurrency: int = 1):
        if concurrency < 1:
            raise SettingsError(f"Concurrency must be at least 1, not {concurrency}.")
        self.folder = Path(folder)
        self.concurrency = concurrency
        self.slots = threading.BoundedSemaphore(concurrency)
        self.device, self.device_warning = resolve_device(runtime.device)
        self.properties = merge_properties(default_properties(), runtime.properties)
        self.prompt_lookup = runtime.prompt_lookup
        self.config = read_json(self.folder / "config.json")
        self.model_type: str = self.config.get("model_type", "")
        self.context_window: int = int(self.config.get("max_position_embeddings") or 4096)
        eos = read_json(self.folder / "generation_config.json").get("eos_token_id", [])
        self.eos_ids: list[int] = sorted(set([eos] if isinstance(eos, int) else eos))
        self.chat_template: str | None = None
        self.memory = TokenMemory()
        self.specials = added_token_strings(self.folder)
        self.text_tokenizer = plain_text_tokenizer(self.folder)
        self._load()
        self.system_ok = prompts.supports_system(self.render_text)
        if not self.system_ok and self.model_type == "phi3":
            self.chat_template, self.system_ok = prompts.PHI3_CHAT_TEMPLATE, True

    @abstractmethod
    def _load(self) -> None: ...

    @property
    def label(self) -> str:
        """How the page names this engine."""
        return self.name + (" + prompt lookup" if self.prompt_lookup else "")

    def close(self) -> None:
        """Release what the engine runs in the background; the model is about to be swapped."""

    def refresh(self) -> None:
        """Bring what the engine knows about its model up to date (a remote's; nothing here)."""

    @abstractmethod
    def render_text(self, messages: list[prompts.Message]) -> str:
        """The chat template's text for a conversation, ending with the assistant's turn."""

    def render(self, messages: list[prompts.Message]) -> Prompt:
        """The prompt for a conversation, knowing which of its text the users wrote."""
        return render_prompt(self.render_text, messages, self.specials)

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of text whose special-token strings are structure (the template's)."""

    def encode_text(self, text: str) -> list[int]:
        """Token ids of text whose special-token strings are plain text (a user's): as the
        model's Hugging Face tokenizer reads text, or without one, by cutting those strings
        apart."""
        if self.text_tokenizer is None:
            return split_text_encoder(self.encode, self.specials)(text)
        return self.text_tokenizer.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        return encode_prompt(prompt, self.encode, self.encode_text, self.specials)

    @abstractmethod
    def decode(self, ids: list[int], keep_special: bool = False) -> str:
        """Text of ids, special tokens left out unless `keep_special`."""

    def prompt_ids(self, prompt: Prompt | str) -> list[int]:
        """The ids an answer feeds for a prompt: remembered ones where they still apply. A
        plain string is the program's own text, all structure."""
        prompt = Prompt.trusted(prompt) if isinstance(prompt, str) else prompt
        return self.memory.encode(prompt.text, lambda rest: self.encode_prompt(prompt.suffix(len(rest))),
                                  self.is_special)

    def count_tokens(self, prompt: Prompt | str) -> int:
        """What the prompt will take of the context window, counted on the ids it is fed as."""
        return len(self.prompt_ids(prompt))

    def is_special(self, token: int) -> bool:
        return token in self.eos_ids or not self.decode([token])

    @abstractmethod
    def _generate(self, ids: list[int], settings: GenerationSettings, emit: Emit, stop: threading.Event) -> list[int]:
        """Generate for prompt ids in the calling thread, emit text as it comes, return the
        answer's token ids. Must end within about a token once `stop` is set."""

    def answer(self, prompt: Prompt | str, settings: GenerationSettings) -> Answer:
        """The answer to a rendered prompt; it starts when it is first read."""
        return Answer(partial(self._produce, prompt, settings))

    def warm_up(self) -> float:
        """One token for a tiny prompt through the real path (render, ids, `answer`): the
        first inference does one-off work (on the Phi-3 shape 9-10 s) that would otherwise
        fall on the first question. Returns, and logs, the seconds it took."""
        start = time.perf_counter()
        self.answer(self.render([{"role": "user", "content": "Hi"}]), GenerationSettings(max_new_tokens=1)).text()
        took = time.perf_counter() - start
        log.info("Warm-up (first inference) took %.2f s on the %s engine.", took, self.name)
        return took

    def _produce(self, prompt: Prompt | str, settings: GenerationSettings,
                 stop: threading.Event) -> Generator[str, None, Stats]:
        start = time.perf_counter()
        if not take_slot(self.slots, stop):
            return Stats.stopped_unstarted(start)
        try:
            prompt_ids = self.prompt_ids(prompt)
            if stop.is_set():  # stopped before it started: it never does
                return Stats.stopped_unstarted(start, len(prompt_ids))
            sent: list[tuple[str, float]] = []
            cut = StopText(settings.stop)
            generation = pump(lambda emit: self._generate(prompt_ids, settings, emit, stop),
                              abandon=stop.set, name=f"{self.name}-generate")
            ids = yield from _before_stop(_whole_characters(generation, sent), cut)
            first = sent[0][1] if sent else None
        finally:
            self.slots.release()
        end = time.perf_counter()
        ids = [i for i in ids if i not in self.eos_ids]
        # An answer cut by max_new_tokens can end inside a character: drop that half.
        decoded = self.decode(ids)
        whole = decoded.rstrip("\ufffd")
        text = cut.cut(whole)
        if decoded == text and self.decode(ids, keep_special=True) == text:  # the ids say just the text
            self.memory.remember((prompt if isinstance(prompt, str) else prompt.text) + text, prompt_ids + ids)
        streamed = cut.emitted
        if len(text) > len(streamed) and text.startswith(streamed):
            yield text[len(streamed):]  # what a streamer held back when it was told to stop
        first = first or end
        tokens = len(ids)
        at_stop_string = cut.matched or text != whole
        finish = ("stopped" if stop.is_set() else
                  "length" if tokens >= settings.max_new_tokens and not at_stop_string else "stop")
        return Stats(
            prompt_tokens=len(prompt_ids),
            answer_tokens=tokens,
            ttft_s=first - start,
            tokens_per_s=(tokens - 1) / (end - first) if tokens > 1 and end > first else 0.0,
            total_s=end - start,
            stopped=stop.is_set(),
            text=text,
            finish=finish,
        )


def take_slot(slots: threading.Semaphore, stop: threading.Event) -> bool:
    """Wait for one of an engine's `--concurrency` slots; False, holding none, if a Stop
    comes first (an answer waiting in line can be stopped too)."""
    while not slots.acquire(timeout=0.05):
        if stop.is_set():
            return False
    return True


def _whole_characters(pieces: Generator[str, None, list[int]],
                      sent: list[tuple[str, float]]) -> Generator[str, None, list[int]]:
    """Pass text on, holding back half a character until the rest comes; note each chunk
    with the time it was sent. Returns what `pieces` returns."""
    held = ""
    try:
        while True:
            try:
                piece = next(pieces)
            except StopIteration as end:
                return end.value
            held += piece
            if held and not held.endswith("\ufffd"):
                sent.append((held, time.perf_counter()))
                yield held
                held = ""
    finally:
        pieces.close()  # a reader that left: generation is told to stop and waited for


@dataclass
class StopText:
    """Generated text up to the first stop string, which is left out. Text that may be the
    start of a stop string is held back until the next text shows whether it is one, so a
    stream never shows part of a stop string. (The engines stop generating at a stop string
    themselves; this is what makes every engine's text and stream end the same way.)"""

    stops: tuple[str, ...] = ()
    held: str = ""
    emitted: str = ""  # all text passed on so far
    matched: bool = False

    def cut(self, text: str) -> str:
        """`text` up to its first stop string."""
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return text[:min(found)] if found else text

    def feed(self, text: str) -> str:
        """What of `text` (after what came before) may be shown now."""
        if self.matched or not self.stops:
            return self._pass("" if self.matched else text)
        self.held += text
        before = self.cut(self.held)
        if before != self.held:
            self.matched, self.held = True, ""
            return self._pass(before)
        keep = self._partial(self.held)
        shown, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        return self._pass(shown)

    def flush(self) -> str:
        """What is still held back once the answer has ended without a stop string."""
        shown, self.held = self.held, ""
        return self._pass(shown)

    def _partial(self, text: str) -> int:
        """Length of the longest end of `text` that begins a stop string."""
        return max((n for s in self.stops for n in range(min(len(s) - 1, len(text)), 0, -1)
                    if text.endswith(s[:n])), default=0)

    def _pass(self, text: str) -> str:
        self.emitted += text
        return text


def _before_stop(pieces: Generator[str, None, list[int]], cut: StopText) -> Generator[str, None, list[int]]:
    """Pass text on up to the first stop string (`StopText`). Returns what `pieces` returns."""
    try:
        while True:
            try:
                piece = next(pieces)
            except StopIteration as end:
                if rest := cut.flush():
                    yield rest
                return end.value
            if shown := cut.feed(piece):
                yield shown
    finally:
        pieces.close()
