"""Runtimes that stream an answer from an exported OpenVINO model.

Every engine does the same thing the same way from the outside: render a conversation
with the model's chat template, count tokens, and stream text chunks for a prompt,
ending with `Stats`. `genai` (openvino-genai, no torch at run time, KV cache re-used
across turns) is the default; `optimum` is the seed's OVModelForCausalLM path.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from . import prompt as prompts
from .settings import GenerationSettings, RuntimeSettings, SettingsError, cache_root


@dataclass(frozen=True)
class Stats:
    """What the user sees under an answer."""

    prompt_tokens: int
    answer_tokens: int
    ttft_s: float
    tokens_per_s: float
    total_s: float
    stopped: bool = False
    text: str = ""  # the whole answer, decoded at once: what the streamed chunks must add up to

    def summary(self) -> str:
        """Speed and size; whether the answer was stopped is the caller's to show."""
        return (
            f"{self.ttft_s:.2f} s to first token · {self.tokens_per_s:.1f} tokens/s · "
            f"{self.prompt_tokens} prompt + {self.answer_tokens} answer tokens"
        )


Chunk = str | Stats
Emit = Callable[[str], None]


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
    """The seed's latency settings, plus a model cache so the second start is faster.

    The cache is weightless (CACHE_MODE=OPTIMIZE_SIZE): the compiled graph is kept and the
    weights are read from the export instead of a second copy of them (the seed Phi-3-mini
    export: 1.1 GB of disk instead of 2.9), and it starts as fast (bench/bench.py: "model
    cache" and the load columns). On a CPU its gain varies from run to run, sometimes none;
    the cache pays most where compiling is slow (GPU, NPU).

    DYNAMIC_QUANTIZATION_GROUP_SIZE=128 decoded about 10% faster back to back, but not when
    measured in turns (bench/results/decode.md), and is not the default: with it,
    greedy and seeded answers depend on what else shares the batch and on prefix-cache hits
    (tests/test_hosting.py and tests/test_engines.py caught both on a clean run)."""
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
    """`overrides` over `defaults`; None unsets a key (OpenVINO's own default then applies),
    so the seed's settings can still be asked for whatever the defaults become."""
    return {k: v for k, v in {**defaults, **overrides}.items() if v is not None}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


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


class Engine(ABC):
    """One loaded model. Generation is serialised by `lock`: one answer at a time, unless a
    subclass (the batching engine) swaps it for a semaphore of its batch size."""

    name: ClassVar[str]

    def __init__(self, folder: Path, runtime: RuntimeSettings):
        self.folder = Path(folder)
        self.device, self.device_warning = resolve_device(runtime.device)
        self.properties = merge_properties(default_properties(), runtime.properties)
        self.prompt_lookup = runtime.prompt_lookup
        self.lock: threading.Lock | threading.BoundedSemaphore = threading.Lock()
        config = _read_json(self.folder / "config.json")
        self.model_type: str = config.get("model_type", "")
        self.context_window: int = int(config.get("max_position_embeddings") or 4096)
        eos = _read_json(self.folder / "generation_config.json").get("eos_token_id", [])
        self.eos_ids: list[int] = sorted(set([eos] if isinstance(eos, int) else eos))
        self.chat_template: str | None = None
        self.memory = TokenMemory()
        self._load()
        self.system_ok = prompts.supports_system(self.render)
        if not self.system_ok and self.model_type == "phi3":
            self.chat_template, self.system_ok = prompts.PHI3_CHAT_TEMPLATE, True

    @abstractmethod
    def _load(self) -> None: ...

    @property
    def label(self) -> str:
        """How the page names this engine (the batching engine adds its batch size)."""
        return self.name + (" + prompt lookup" if self.prompt_lookup else "")

    def close(self) -> None:
        """Release what the engine runs in the background; the model is about to be swapped."""

    @abstractmethod
    def render(self, messages: list[prompts.Message]) -> str:
        """The prompt text for a conversation, ending with the assistant's turn."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of text that already holds its special tokens (a rendered prompt)."""

    @abstractmethod
    def decode(self, ids: list[int], keep_special: bool = False) -> str:
        """Text of ids, special tokens left out unless `keep_special`."""

    def prompt_ids(self, prompt: str) -> list[int]:
        """The ids `stream` feeds for a prompt: remembered ones where they still apply."""
        return self.memory.encode(prompt, self.encode, self.is_special)

    def count_tokens(self, prompt: str) -> int:
        """What the prompt will take of the context window, counted on the ids it is fed as."""
        return len(self.prompt_ids(prompt))

    def is_special(self, token: int) -> bool:
        return token in self.eos_ids or not self.decode([token])

    @abstractmethod
    def _generate(self, ids: list[int], settings: GenerationSettings, emit: Emit, stop: threading.Event) -> list[int]:
        """Run generation for prompt ids in the calling thread, emit text, return the
        answer's token ids."""

    def stream(
        self, prompt: str, settings: GenerationSettings, stop: threading.Event | None = None
    ) -> Iterator[Chunk]:
        """Yield text chunks, then one Stats. Closing the iterator stops generation."""
        stop = stop or threading.Event()
        chunks: queue.Queue = queue.Queue()
        done = object()
        outcome: dict = {}

        def work() -> None:
            try:
                ids = self._generate(prompt_ids, settings, chunks.put, stop)
                outcome["ids"] = [i for i in ids if i not in self.eos_ids]
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                outcome["error"] = exc
            finally:
                chunks.put(done)

        with self.lock:
            start = time.perf_counter()
            prompt_ids = self.prompt_ids(prompt)
            first, finished, sent, held = None, False, [], ""
            thread = threading.Thread(target=work, name=f"{self.name}-generate", daemon=True)
            thread.start()
            try:
                while (item := chunks.get()) is not done:
                    if item:
                        first = first or time.perf_counter()
                        held += item
                        if not held.endswith("\ufffd"):  # half a character waits for the rest
                            sent.append(held)
                            yield held
                            held = ""
                finished = True
            finally:
                if not finished:  # the consumer went away: end generation within a token
                    stop.set()
                thread.join()
        if "error" in outcome:
            raise outcome["error"]
        end = time.perf_counter()
        ids = outcome.get("ids", [])
        tokens = len(ids)
        first = first or end
        decode = end - first
        # An answer cut by max_new_tokens can end inside a character: drop that half.
        decoded = self.decode(ids)
        text = decoded.rstrip("\ufffd")
        if decoded == text and self.decode(ids, keep_special=True) == text:  # the ids say just the text
            self.memory.remember(prompt + text, prompt_ids + ids)
        streamed = "".join(sent)
        if len(text) > len(streamed) and text.startswith(streamed):
            yield text[len(streamed):]  # what a streamer held back when it was told to stop
        yield Stats(
            prompt_tokens=len(prompt_ids),
            answer_tokens=tokens,
            ttft_s=first - start,
            tokens_per_s=(tokens - 1) / decode if tokens > 1 and decode > 0 else 0.0,
            total_s=end - start,
            stopped=stop.is_set(),
            text=text,
        )


class OptimumEngine(Engine):
    """The seed's runtime: optimum-intel's OVModelForCausalLM with transformers' streamer."""

    name = "optimum"

    def _load(self) -> None:
        from optimum.intel import OVModelForCausalLM
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.model = OVModelForCausalLM.from_pretrained(
            self.folder, device=self.device, ov_config=self.properties
        )
        if self.tokenizer.eos_token_id is not None and not self.eos_ids:
            self.eos_ids = [self.tokenizer.eos_token_id]

    def render(self, messages: list[prompts.Message]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=self.chat_template
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, ids: list[int], keep_special: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=not keep_special)

    def _generate(self, ids: list[int], settings: GenerationSettings, emit: Emit, stop: threading.Event) -> list[int]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

        class Streamer(TextStreamer):
            """transformers' streamer holds back half words and split characters for us."""

            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                emit(text)

        class Stopped(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

        input_ids = torch.tensor([ids])
        sampling = {}
        if not settings.greedy:
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            sampling = dict(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens,
            do_sample=not settings.greedy,
            repetition_penalty=settings.repetition_penalty,
            eos_token_id=self.eos_ids,
            pad_token_id=self.eos_ids[0] if self.tokenizer.pad_token_id is None else self.tokenizer.pad_token_id,
            streamer=Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True),
            stopping_criteria=StoppingCriteriaList([Stopped()]),
            **sampling,
        )
        return output[0, input_ids.shape[1]:].tolist()


# Prompt lookup guesses up to 4 tokens after a matching n-gram of up to 3: checking 4 guesses
# costs a step about 1.2 times a plain one on the Phi-3 shape (bench/decode_profile.py
# --tokens-per-step), so even one right guess in five pays.
PROMPT_LOOKUP_TOKENS = 4
PROMPT_LOOKUP_NGRAM = 3


class GenAIEngine(Engine):
    """openvino-genai's LLMPipeline: its own tokenizer, and PagedAttention's prefix cache
    re-uses the KV cache of earlier turns, so turn 20 starts as fast as turn 2."""

    name = "genai"

    def _load(self) -> None:
        import openvino_genai as ov_genai

        if not (self.folder / "openvino_tokenizer.xml").exists():
            raise SettingsError(
                f"{self.folder} has no openvino_tokenizer.xml, which the genai engine needs; "
                "re-export the model or use --engine optimum."
            )
        self.pipeline = ov_genai.LLMPipeline(str(self.folder), self.device, **self.pipeline_properties())
        self.tokenizer = self.pipeline.get_tokenizer()
        if not self.eos_ids:
            self.eos_ids = [self.tokenizer.get_eos_token_id()]

    def pipeline_properties(self) -> dict:
        """The OpenVINO properties, and genai's own switch for prompt lookup."""
        return {**self.properties, **({"prompt_lookup": True} if self.prompt_lookup else {})}

    def render(self, messages: list[prompts.Message]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, chat_template=self.chat_template or ""
        )

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]

    def decode(self, ids: list[int], keep_special: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=not keep_special) if ids else ""

    def generation_config(self, settings: GenerationSettings, config):
        """`settings` on top of the model's own generation config; shared with the batching
        engine so both runtimes sample the same way."""
        config.max_new_tokens = settings.max_new_tokens
        config.min_new_tokens = settings.min_new_tokens
        config.stop_token_ids = set(self.eos_ids)
        config.repetition_penalty = settings.repetition_penalty
        config.apply_chat_template = False
        if self.prompt_lookup:
            config.num_assistant_tokens, config.max_ngram_size = PROMPT_LOOKUP_TOKENS, PROMPT_LOOKUP_NGRAM
        config.do_sample = not settings.greedy
        if not settings.greedy:
            config.temperature = settings.temperature
            config.top_p = settings.top_p
            config.top_k = settings.top_k
            # genai's seed is fixed by default, so "retry" would repeat itself without this.
            config.rng_seed = settings.seed if settings.seed is not None else random.getrandbits(31)
        return config

    def _generate(self, ids: list[int], settings: GenerationSettings, emit: Emit, stop: threading.Event) -> list[int]:
        import openvino_genai as ov_genai

        config = self.generation_config(settings, self.pipeline.get_generation_config())

        def streamer(text: str) -> ov_genai.StreamingStatus:
            emit(text)
            return ov_genai.StreamingStatus.STOP if stop.is_set() else ov_genai.StreamingStatus.RUNNING

        result = self.pipeline.generate(tokenized(ids), config, streamer)
        return list(result.tokens[0])


def tokenized(ids: list[int]):
    """Prompt ids as genai's TokenizedInputs (one sequence, all attended)."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    array = np.array([ids], dtype=np.int64)
    return ov_genai.TokenizedInputs(ov.Tensor(array), ov.Tensor(np.ones_like(array)))


ENGINES: dict[str, type[Engine]] = {engine.name: engine for engine in (GenAIEngine, OptimumEngine)}


def load_engine(folder: Path, runtime: RuntimeSettings, concurrency: int = 1) -> Engine:
    """The engine for `runtime`; genai with `concurrency` > 1 batches that many answers at once."""
    runtime.validate()
    if runtime.engine == GenAIEngine.name and concurrency > 1:
        from .batching import BatchingEngine

        return BatchingEngine(folder, runtime, concurrency)
    return ENGINES[runtime.engine](folder, runtime)
