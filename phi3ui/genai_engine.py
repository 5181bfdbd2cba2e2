"""openvino-genai's LLMPipeline: no torch at run time, and PagedAttention's prefix cache
re-uses the KV cache of earlier turns, so turn 20 starts about as fast as turn 2."""

from __future__ import annotations

import math
import os
import random
import re
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from . import prompt as prompts
from .engine import Emit, Engine
from .settings import ENGINES, GenerationSettings, SettingsError

# Prompt lookup guesses up to 4 tokens after a matching n-gram of up to 3: a step that checks
# 4 guesses costs little more than a plain one, so even a few right guesses pay (the figures:
# bench/NOTES.md, "Prompt lookup").
PROMPT_LOOKUP_TOKENS = 4
PROMPT_LOOKUP_NGRAM = 3

# The prompt is read this many tokens at a time (genai's own batching default). The CPU
# plugin keeps its working buffers at the size of the largest piece it has read, for the
# rest of the process: a long prompt read in one piece would hold far more memory than its
# KV cache needs, for no speed that held up (bench/NOTES.md, "Where the memory goes").
PROMPT_CHUNK_TOKENS = 256


KV_CACHE_ENV = "PHI3UI_KV_CACHE_GB"  # a size in whole GB, whatever the window
KV_BLOCKS_ENV = "PHI3UI_KV_CACHE_BLOCKS"  # an exact block count, for tests and tight machines


def kv_block_tokens(device: str) -> int:
    """Tokens per KV cache block: the CPU plugin's blocks hold 32, a GPU's 16."""
    return 16 if "GPU" in device.upper() else 32


def kv_cache_blocks(window: int, concurrency: int, device: str) -> int:
    """Room for `concurrency` full context windows and no more, whatever the cache's
    precision, so memory stays bounded however many conversations pass; what the answers
    in flight leave free keeps earlier prompts for prefix caching.

    The cache's pages are touched as its blocks are first used, so resident memory climbs
    with the conversations held, up to this size, then stays flat."""
    return concurrency * math.ceil(window / kv_block_tokens(device))


def tokenized(ids: list[int]):
    """Prompt ids as genai's TokenizedInputs (one sequence, all attended)."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    array = np.array([ids], dtype=np.int64)
    return ov_genai.TokenizedInputs(ov.Tensor(array), ov.Tensor(np.ones_like(array)))


def zero_logits_model(vocab_size: int):
    """A model whose every next-token score is 0: enough to run genai's sampling, and with
    it its grammar compiler, at no cost."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as op

    def named(node, name: str):
        node.output(0).set_names({name})
        return node

    ids = named(op.parameter([-1, -1], ov.Type.i64, name="input_ids"), "input_ids")
    inputs = [ids] + [named(op.parameter([-1, -1], ov.Type.i64, name=n), n) for n in ("attention_mask", "position_ids")]
    inputs.append(named(op.parameter([-1], ov.Type.i32, name="beam_idx"), "beam_idx"))
    per_position = op.unsqueeze(op.convert(op.multiply(ids, op.constant(np.int64(0))), ov.Type.f32),
                                op.constant(np.int64(-1)))  # [batch, length, 1] of zeros
    scores = op.add(per_position, op.constant(np.zeros((1, 1, vocab_size), dtype=np.float32)))
    return ov.Model([named(op.result(scores), "logits")], inputs, "zero-logits")


_COMPILER_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: \(.*?\) is false: )?")


class GrammarCheck:
    """Compiles an answer's JSON schema with the engine's own grammar compiler (XGrammar,
    inside openvino-genai) and tokenizer, on `zero_logits_model`: a schema the compiler
    refuses is refused before it reaches the model, where, in continuous batching, the
    compile error would fail every answer in the batch. A schema no JSON value can fit (a
    `$ref` to itself, contradicting bounds) lets no first token through, and is refused too.

    Built on the first schema; its pipeline is built again after `rebuild_after` schemas,
    which drops the compiled grammars the compiler keeps (they would grow without bound)."""

    def __init__(self, tokenizer, vocab_size: int, remember: int = 256, rebuild_after: int = 64):
        self._tokenizer, self._vocab_size = tokenizer, vocab_size
        self._pipeline = None
        self._compiled = 0
        self._known: OrderedDict[str, str | None] = OrderedDict()
        self._remember, self._rebuild_after = remember, rebuild_after
        self._lock = threading.Lock()  # one generate at a time on the pipeline

    def _build(self):
        import numpy as np
        import openvino as ov
        import openvino_genai as ov_genai

        with tempfile.TemporaryDirectory() as folder:
            ov.save_model(zero_logits_model(self._vocab_size), Path(folder) / "model.xml")
            xml = (Path(folder) / "model.xml").read_text()
            weights = ov.Tensor(np.fromfile(Path(folder) / "model.bin", dtype=np.uint8))
        return ov_genai.LLMPipeline(xml, weights, self._tokenizer, "CPU")

    def problem(self, schema: str) -> str | None:
        """The compiler's words when it refuses `schema`, or None."""
        with self._lock:
            if schema not in self._known:
                self._known[schema] = self._compile(schema)
                while len(self._known) > self._remember:
                    self._known.popitem(last=False)
            self._known.move_to_end(schema)
            return self._known[schema]

    def _compile(self, schema: str) -> str | None:
        import openvino_genai as ov_genai

        if self._pipeline is None or self._compiled >= self._rebuild_after:
            self._pipeline, self._compiled = self._build(), 0
        self._compiled += 1
        config = self._pipeline.get_generation_config()
        config.max_new_tokens, config.apply_chat_template = 1, False
        config.structured_output_config = ov_genai.StructuredOutputConfig(json_schema=schema)
        try:
            first = self._pipeline.generate("{", config)
        except RuntimeError as exc:
            return _COMPILER_PREFIX.sub("", str(exc).strip().splitlines()[0]).strip()
        return None if first else "no JSON value fits it (a $ref to itself, or bounds that contradict)"


def model_vocab_size(folder: Path, config: dict) -> int:
    """How many next-token scores the model gives: config.json's vocab_size, else the width
    of the model's logits output."""
    if config.get("vocab_size"):
        return int(config["vocab_size"])
    import openvino as ov

    return ov.Core().read_model(folder / "openvino_model.xml").output("logits").get_partial_shape()[-1].get_length()


class GenAIEngine(Engine):
    """The default engine: openvino-genai's LLMPipeline and its own tokenizer."""

    kind = ENGINES["genai"]

    def _load(self) -> None:
        self.require_openvino_tokenizer()
        self.pipeline = self.make_pipeline()
        self.tokenizer = self.pipeline.get_tokenizer()
        if not self.eos_ids:
            self.eos_ids = [self.tokenizer.get_eos_token_id()]
        self.grammar = GrammarCheck(self.tokenizer, model_vocab_size(self.folder, self.config))

    def check_settings(self, settings: GenerationSettings) -> None:
        super().check_settings(settings)
        if settings.json_schema and (problem := self.grammar.problem(settings.json_schema)):
            raise SettingsError(f"This JSON schema cannot be used: {problem}")

    def make_pipeline(self):
        import openvino_genai as ov_genai

        return ov_genai.LLMPipeline(str(self.folder), self.device, scheduler_config=self.scheduler_config(),
                                    **self.pipeline_properties())

    def scheduler_config(self):
        """Prefix caching on, so a conversation's next turn re-uses its KV cache; the prompt
        read `PROMPT_CHUNK_TOKENS` at a time; and a KV cache of a fixed size, room for
        `concurrency` full windows. Left to grow, genai's cache is re-allocated to fit each
        longer prompt, and the old one's memory stays with the process: a long chat held
        about twice its cache."""
        import openvino_genai as ov_genai

        scheduler = ov_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = True
        scheduler.max_num_batched_tokens = PROMPT_CHUNK_TOKENS
        scheduler.max_num_seqs = self.concurrency
        if os.environ.get(KV_BLOCKS_ENV):
            scheduler.num_kv_blocks = int(os.environ[KV_BLOCKS_ENV])
        elif os.environ.get(KV_CACHE_ENV):
            scheduler.cache_size = max(1, int(os.environ[KV_CACHE_ENV]))
        else:
            scheduler.num_kv_blocks = kv_cache_blocks(self.context_window, self.concurrency, self.device)
        return scheduler

    def require_openvino_tokenizer(self) -> None:
        if not (self.folder / "openvino_tokenizer.xml").exists():
            raise SettingsError(
                f"{self.folder} has no openvino_tokenizer.xml, which the genai engine needs; "
                "re-export the model or use --engine optimum."
            )

    def pipeline_properties(self) -> dict:
        """The OpenVINO properties, the KV cache's precision when one was chosen, and genai's
        own switch for prompt lookup."""
        precision = self.kv_cache_precision
        return {**self.properties,
                **({"KEY_CACHE_PRECISION": precision, "VALUE_CACHE_PRECISION": precision} if precision else {}),
                **({"prompt_lookup": True} if self.prompt_lookup else {})}

    def render_text(self, messages: list[prompts.Message]) -> str:
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
        import openvino_genai as ov_genai

        config.max_new_tokens = settings.max_new_tokens
        config.min_new_tokens = settings.min_new_tokens
        config.stop_token_ids = set(self.eos_ids)
        config.repetition_penalty = settings.repetition_penalty
        config.apply_chat_template = False
        # Generation ends at a stop string; it stays in the output, where the engine's StopText
        # cuts it off the same way for every engine (and counts its tokens, as generated).
        config.stop_strings = set(settings.stop)
        config.include_stop_str_in_output = True
        if self.prompt_lookup:
            config.num_assistant_tokens, config.max_ngram_size = PROMPT_LOOKUP_TOKENS, PROMPT_LOOKUP_NGRAM
        if settings.json_schema:
            config.structured_output_config = ov_genai.StructuredOutputConfig(json_schema=settings.json_schema)
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
