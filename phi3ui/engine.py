"""What every engine shares. `AnswerEngine`: turning a prompt into an `Answer` (slots in
arrival order, Stop, stop strings, stats), for local and remote engines alike. `Engine`:
a model loaded here, its folder's facts, the device and the prompt's token ids.

An engine renders a conversation, counts tokens, and answers a prompt. The concrete
engines live in modules of their own and are looked up by kind name in `phi3ui.engines`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from filelock import FileLock, Timeout

from . import mapped_files, rope
from . import prompt as prompts
from .answer import Answer, Stats
from .progress import size_text
from .pump import pump
from .settings import (
    ENGINES,
    EngineKind,
    GenerationSettings,
    RuntimeSettings,
    SettingsError,
    cache_root,
)
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
    the weights from the export instead of a second copy of them (sizes in bench/README.md,
    "model cache"). On a CPU what it saves varies from run to run; it pays most where
    compiling is slow (GPU, NPU).

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


@contextmanager
def cache_turn(properties: Mapping) -> Iterator[None]:
    """Hold the model cache's lock while a model is compiled with it.

    OpenVINO writes a cache entry in place and removes one it cannot read, so a process that
    loads a model while another writes the same entry can delete the file under the writer,
    whose load then fails ("cannot set permissions: ... .blob"). Loads that share a CACHE_DIR
    (two apps, an app and a benchmark) take turns; a load without a cache goes straight on."""
    folder = properties.get("CACHE_DIR")
    if not folder:
        yield
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    lock = FileLock(Path(folder) / "phi3ui-load.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("Waiting for another load that uses the model cache %s to finish.", folder)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


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


class Slots:
    """An engine's `--concurrency` answer slots, handed out first come, first served: an
    answer that waits is served before any that came after it, whichever client sent it.
    A waiter whose answer is stopped leaves the line without taking a slot."""

    POLL_S: ClassVar[float] = 0.05  # how soon a waiter sees its Stop (an Event cannot wake a Condition)

    def __init__(self, count: int):
        if count < 1:
            raise SettingsError(f"Concurrency must be at least 1, not {count}.")
        self.count = count
        self.free = count
        self._line: deque[threading.Event] = deque()
        self._changed = threading.Condition()

    def take(self, stop: threading.Event) -> bool:
        """Wait for a slot in arrival order; False, holding none, if `stop` comes first."""
        with self._changed:
            self._line.append(stop)
            try:
                while self._line[0] is not stop or self.free == 0:
                    if stop.is_set():
                        return False
                    self._changed.wait(self.POLL_S)
                self.free -= 1
                return True
            finally:
                self._line.remove(stop)
                self._changed.notify_all()

    @property
    def waiting(self) -> int:
        """How many answers wait in the queue for a slot."""
        return len(self._line)

    def release(self) -> None:
        with self._changed:
            self.free += 1
            self._changed.notify_all()


@dataclass(frozen=True)
class Outcome:
    """What an engine says of an answer once its text has ended; `AnswerEngine` makes the
    `Stats` of it."""

    prompt_tokens: int
    answer_tokens: int
    length: bool = False  # max new tokens ended it
    text: str | None = None  # the whole answer decoded at once when the stream may hold less; None: the stream


class AnswerEngine(ABC):
    """What every engine does around producing text, so all answer alike: wait for a slot
    (`Slots`, in arrival order), never start once stopped, end at stop strings (`StopText`)
    and measure the answer (`Stats`). An engine implements `_pieces`: how its text comes.

    Callers ask `kind` what an engine can do and let it describe itself (`describe`,
    `window_text`); none tests an engine's class."""

    kind: ClassVar[EngineKind]
    notices: tuple[str, ...] = ()  # what the page says about the engine's state now (a remote's change)
    model_name: str = ""  # the remote's model name; a local model is named by its export
    unavailable: str = ""  # why the engine cannot answer now, as far as it knows ("" when it can)
    device_warning: str | None = None
    prompt_lookup: bool = False
    context_window: int  # the most tokens a prompt and its answer may take
    system_ok: bool

    def __init__(self, concurrency: int):
        self.concurrency = concurrency
        self.slots = Slots(concurrency)
        self.memory = TokenMemory()  # a remote's stays empty: the remote keeps its own prefix cache

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def label(self) -> str:
        """How the page names this engine."""
        return self.name + (" + prompt lookup" if self.prompt_lookup else "")

    @abstractmethod
    def describe(self, where: bool = True) -> str:
        """The engine and, with `where`, where its model is (a remote's URL is the host's to see)."""

    @abstractmethod
    def window_text(self, cap: int = 0) -> str:
        """The window prompts are fitted to (below `cap` when one is set), and where it comes from."""

    @abstractmethod
    def render(self, messages: list[prompts.Message]) -> Any:
        """The prompt for a conversation, as this engine sends it."""

    @abstractmethod
    def count_tokens(self, prompt: Any) -> int:
        """What the prompt will take of the context window."""

    @abstractmethod
    def _pieces(self, prompt: Any, settings: GenerationSettings, stop: threading.Event,
                cut: StopText) -> Generator[str, None, Outcome]:
        """The answer's text as the engine makes it, then its `Outcome`. Must end within
        about a token once `stop` is set; may end early once `cut.matched` (the base shows
        nothing after a stop string). Closing it must end the generation."""

    def refresh(self) -> None:
        """Bring what the engine knows about its model up to date (a remote's)."""

    def check_settings(self, settings: GenerationSettings) -> None:
        """Refuse, with a SettingsError, what this engine cannot honour (settings that are
        valid in themselves have passed `GenerationSettings.validate`)."""
        if settings.json_schema and not self.kind.json_answers:
            able = " or ".join(kind.name for kind in ENGINES.values() if kind.json_answers)
            raise SettingsError(f"Answers as JSON need the {able} engine: the {self.name} engine cannot hold "
                                "its tokens to a schema. Turn off answers as JSON or change the engine.")

    def close(self) -> None:
        """Release what the engine runs in the background; the model is about to be swapped."""

    def warm_up(self) -> float:
        """Do the first inference's one-off work now; returns the seconds it took."""
        return 0.0

    def answer(self, prompt: Any, settings: GenerationSettings) -> Answer:
        """The answer to a rendered prompt; it starts when it is first read."""
        return Answer(partial(self._produce, prompt, settings))

    def _produce(self, prompt: Any, settings: GenerationSettings,
                 stop: threading.Event) -> Generator[str, None, Stats]:
        """The engine's text up to a stop string, then the answer's `Stats`; a slot is held
        while the engine produces."""
        start = time.perf_counter()
        if not self.slots.take(stop):
            return Stats.stopped_unstarted(start)
        try:
            if stop.is_set():  # stopped before it started: it never does
                return Stats.stopped_unstarted(start, self.count_tokens(prompt))
            cut = StopText(settings.stop)
            first, outcome = yield from _before_stop(self._pieces(prompt, settings, stop, cut), cut)
        finally:
            self.slots.release()
        end = time.perf_counter()
        whole = cut.emitted if outcome.text is None else outcome.text
        text = cut.cut(whole)
        streamed = cut.emitted
        if len(text) > len(streamed) and text.startswith(streamed):
            yield text[len(streamed):]  # what a streamer held back when it was told to stop
        first = first or end
        tokens = outcome.answer_tokens
        at_stop_string = cut.matched or text != whole
        return Stats(
            prompt_tokens=outcome.prompt_tokens,
            answer_tokens=tokens,
            ttft_s=first - start,
            tokens_per_s=(tokens - 1) / (end - first) if tokens > 1 and end > first else 0.0,
            total_s=end - start,
            stopped=stop.is_set(),
            text=text,
            finish="stopped" if stop.is_set() else "length" if outcome.length and not at_stop_string else "stop",
        )




class Engine(AnswerEngine):
    """One model loaded here, answering up to `concurrency` prompts at once (one unless the
    engine batches); the others wait for a free slot. A local engine implements
    `_generate`: token ids in, text emitted, the answer's ids out."""

    def __init__(self, folder: Path, runtime: RuntimeSettings, concurrency: int = 1):
        super().__init__(concurrency)
        self.folder = Path(folder)
        self.device, self.device_warning = resolve_device(runtime.device)
        self.properties = merge_properties(default_properties(), runtime.properties)
        self.prompt_lookup = runtime.prompt_lookup
        self.kv_cache_precision = runtime.kv_cache_precision
        self.config = read_json(self.folder / "config.json")
        self.model_type: str = self.config.get("model_type", "")
        self.context_window: int = rope.usable_window(self.config)  # a LongRoPE model's trained window
        eos = read_json(self.folder / "generation_config.json").get("eos_token_id", [])
        self.eos_ids: list[int] = sorted(set([eos] if isinstance(eos, int) else eos))
        self.chat_template: str | None = None
        self.specials = added_token_strings(self.folder)
        self.text_tokenizer = plain_text_tokenizer(self.folder)
        with cache_turn(self.properties):
            self._load()
        self.system_ok = prompts.supports_system(self.render_text)
        if not self.system_ok and self.model_type == "phi3":
            self.chat_template, self.system_ok = prompts.PHI3_CHAT_TEMPLATE, True

    @abstractmethod
    def _load(self) -> None: ...

    def describe(self, where: bool = True) -> str:
        return f"{self.label} engine on {self.device}"

    def window_text(self, cap: int = 0) -> str:
        own = self.context_window
        fitted = min(cap, own) if cap else own
        text = f"{fitted}-token window (capped; the model's is {own})" if fitted < own else f"{own}-token window"
        note = rope.window_note(self.config)
        return f"{text}; {note}" if note else text

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

    def warm_up(self) -> float:
        """One token for a tiny prompt through the real path (render, ids, `answer`): the
        first inference does one-off work (seconds on the Phi-3 shape) that would otherwise
        fall on the first question. By then the weights are in the plugin's own copy, so the
        mapped export's pages are handed back (`mapped_files`). Returns, and logs, the
        seconds it took."""
        start = time.perf_counter()
        self.answer(self.render([{"role": "user", "content": "Hi"}]), GenerationSettings(max_new_tokens=1)).text()
        took = time.perf_counter() - start
        released = mapped_files.release(self.folder)
        log.info("Warm-up (first inference) took %.2f s on the %s engine; %s of the export's mapped pages "
                 "handed back.", took, self.name, size_text(released))
        return took

    def _pieces(self, prompt: Prompt | str, settings: GenerationSettings, stop: threading.Event,
                cut: StopText) -> Generator[str, None, Outcome]:
        """`_generate` in a thread of its own, in whole characters; the outcome counts the
        ids, and the text is decoded from them at once (a streamer may have held some back)."""
        prompt_ids = self.prompt_ids(prompt)
        generation = pump(lambda emit: self._generate(prompt_ids, settings, emit, stop),
                          abandon=stop.set, name=f"{self.name}-generate")
        ids = yield from _whole_characters(generation)
        ids = [i for i in ids if i not in self.eos_ids]
        decoded = self.decode(ids)
        whole = decoded.rstrip("\ufffd")  # max new tokens can end an answer inside a character: drop that half
        if decoded == cut.cut(whole) and self.decode(ids, keep_special=True) == decoded:  # the ids say just the text
            self.memory.remember((prompt if isinstance(prompt, str) else prompt.text) + decoded, prompt_ids + ids)
        return Outcome(len(prompt_ids), len(ids), length=len(ids) >= settings.max_new_tokens, text=whole)


def _whole_characters(pieces: Generator[str, None, list[int]]) -> Generator[str, None, list[int]]:
    """Pass text on, holding back half a character until the rest comes. Returns what
    `pieces` returns."""
    held = ""
    try:
        while True:
            try:
                piece = next(pieces)
            except StopIteration as end:
                return end.value
            held += piece
            if held and not held.endswith("\ufffd"):
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



def _before_stop(pieces: Generator[str, None, Outcome],
                 cut: StopText) -> Generator[str, None, tuple[float | None, Outcome]]:
    """Pass text on up to the first stop string (`StopText`). Returns when the first text
    came (`time.perf_counter()`, None if none did) and what `pieces` returns."""
    first = None
    try:
        while True:
            try:
                piece = next(pieces)
            except StopIteration as end:
                if rest := cut.flush():
                    yield rest
                return first, end.value
            first = first or time.perf_counter()
            if shown := cut.feed(piece):
                yield shown
    finally:
        pieces.close()
