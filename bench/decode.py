"""Decode speed against llama.cpp: time to first token and ms per token, as ratios.

One idea only: the same 200-token prompt and 32 forced new tokens (greedy, min_new_tokens),
measured after a warm-up with a different prompt (so no prefix cache can help; --repeats N
measures N runs, each with its own prompt, and reports the median), for
llama.cpp (llama-cpp-python, 2 threads, a GGUF of the same model) and for openvino-genai
configurations loaded through the app's own engine (`phi3ui.engines.load_engine`). Each run
is a child process of its own, so no two models are in memory at once and every process
starts with clean threads and caches.

    python -m bench.decode --model phi3                       # llama, seed, default
    python -m bench.decode --model bundled --rounds 4 --repeats 5 --configs llama,seed,g64-r1,asym-cw-r1
    python -m bench.decode --list                             # every named configuration

`seed` is the configuration the project started from: the default export ("most accurate":
int4 sym, group 128, 64 on the bundled model, ratio 0.6) with PERFORMANCE_HINT=LATENCY and
NUM_STREAMS=1. The other genai configurations are `seed` with a change of export or
properties; `default` is the app's own default_properties(), whatever they become.

This VM's speed drifts by 10-40% within minutes, so `--rounds N` runs the whole list N
times, interleaved, and adds a pooled table: each configuration's median over every run,
and in how many rounds it beat the llama.cpp run of the same round (a paired comparison,
which drift between rounds cannot tilt). `--turns` goes further: every configuration is
loaded in one process and they make one token each in turn (genai through its
ContinuousBatchingPipeline's step(), the path LLMPipeline runs), so each decode step is
paired with llama.cpp's step of the same number, made a fraction of a second apart. Between
steps an untimed pause lets the last runtime's threads go idle; that also leaves every step
with cold caches and sleeping threads, which costs a small model (the bundled one, about
10 ms a token, partly cache-resident) a larger share than the Phi-3 shape (2 GB a token).

    python -m bench.decode --model phi3 --turns --repeats 3 --configs llama,asym-cw-r1,f32

The Phi-3-mini-shaped model is bench.py's (random weights, real sizes); its GGUF is made
once from the Hugging Face folder with llama.cpp's convert_hf_to_gguf.py (F16), then
quantised to Q4_0 with llama_cpp.llama_model_quantize; the converter is not in the wheel,
so LLAMA_CPP_SRC must name a llama.cpp source folder (`vendor/llama.cpp` of the unpacked
llama-cpp-python sdist) for that one step. The bundled model's GGUF (Q4_1) is used as it is.
llama-cpp-python is an optional benchmark dependency (requirements-bench.txt).

Appends a session to bench/results/decode.json and rewrites bench/results/decode.md from
it; what the sessions showed is written up in bench/NOTES.md. Not a test: nothing asserts
a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench import (
    MESSAGES,
    PHI3_SHAPED_VERSION,
    cpu_name,
    measure_bandwidth,
    peak_rss_mb,
    phi3_source,
)
from phi3ui.bundled import gguf_path
from phi3ui.files import staged
from phi3ui.settings import BUNDLED, BUNDLED_EXPORT, ExportSettings, cache_root
from tests.app_process import cpu_ticks

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROMPT_TOKENS = 200
NEW_TOKENS = 32
WARMUP_NEW_TOKENS = 8
TURNS_PAUSE_S = 0.05  # --turns: untimed sleep before each step, so the last runtime's threads go idle

# The runtime properties the project started from (`seed`). Every genai configuration here is
# the seed plus its own properties; keys the app's defaults add beyond these are unset (None)
# unless the configuration sets them, so "seed" stays the seed whatever the app's defaults
# become. The model cache (engine.CACHE_KEYS) is kept: it changes load time and disk, not decoding.
SEED = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}


@dataclass(frozen=True)
class Config:
    """One thing to measure: llama.cpp, or genai with properties on an export."""

    runtime: str  # "llama" or "genai"
    properties: dict = field(default_factory=dict)
    export: dict | None = None  # ExportSettings fields over the model's default export; None: that export
    about: str = ""
    app_defaults: bool = False  # genai with the app's own default_properties(), nothing else
    env: dict = field(default_factory=dict)  # set in the measuring process's environment


def _cfg(about: str, export: dict | None = None, app_defaults: bool = False, env: dict | None = None,
         **properties: str | None) -> Config:
    return Config("genai", properties, export, about, app_defaults, env or {})


CW_R1 = {"group_size": -1, "ratio": 1.0}
G128_R1 = {"group_size": 128, "ratio": 1.0}
ASYM_R1 = {**G128_R1, "sym": False}
ASYM_CW_R1 = {**CW_R1, "sym": False}
CONFIGS: dict[str, Config] = {
    "llama": Config("llama", about="llama.cpp, 2 threads"),
    "seed": _cfg("the seed's properties (LATENCY, 1 stream), PagedAttention"),
    "default": _cfg("the app's default properties (engines.default_properties)", app_defaults=True),
    "sdpa": _cfg("seed + ATTENTION_BACKEND=SDPA", ATTENTION_BACKEND="SDPA"),
    "threads-1": _cfg("seed + INFERENCE_NUM_THREADS=1", INFERENCE_NUM_THREADS="1"),
    "no-pinning": _cfg("seed + ENABLE_CPU_PINNING=NO", ENABLE_CPU_PINNING="NO"),
    "kv-f16": _cfg("seed + KV_CACHE_PRECISION=f16", KV_CACHE_PRECISION="f16"),
    "kv-f32": _cfg("seed + KV_CACHE_PRECISION=f32", KV_CACHE_PRECISION="f32"),
    "kv-u4": _cfg("seed + KEY_CACHE_PRECISION=u4, VALUE_CACHE_PRECISION=u4 (--kv-cache-precision u4)",
                  KEY_CACHE_PRECISION="u4", VALUE_CACHE_PRECISION="u4"),
    "dq-0": _cfg("seed + DYNAMIC_QUANTIZATION_GROUP_SIZE=0 (off)", DYNAMIC_QUANTIZATION_GROUP_SIZE="0"),
    "dq-64": _cfg("seed + DYNAMIC_QUANTIZATION_GROUP_SIZE=64", DYNAMIC_QUANTIZATION_GROUP_SIZE="64"),
    "dq-128": _cfg("seed + DYNAMIC_QUANTIZATION_GROUP_SIZE=128", DYNAMIC_QUANTIZATION_GROUP_SIZE="128"),
    "dq-max": _cfg("seed + DYNAMIC_QUANTIZATION_GROUP_SIZE=4294967295 (per token)",
                   DYNAMIC_QUANTIZATION_GROUP_SIZE="4294967295"),
    "f32": _cfg("seed + INFERENCE_PRECISION_HINT=f32", INFERENCE_PRECISION_HINT="f32"),
    "throughput": _cfg("PERFORMANCE_HINT=THROUGHPUT, NUM_STREAMS unset", PERFORMANCE_HINT="THROUGHPUT",
                       NUM_STREAMS=None),
    "cw-r1": _cfg("seed properties, int4 sym channel-wise ratio 1.0 export", CW_R1),
    "g128-r1": _cfg("seed properties, int4 sym g128 ratio 1.0 export", G128_R1),
    "dq128-f32": _cfg("seed + DYNAMIC_QUANTIZATION_GROUP_SIZE=128 + INFERENCE_PRECISION_HINT=f32",
                      DYNAMIC_QUANTIZATION_GROUP_SIZE="128", INFERENCE_PRECISION_HINT="f32"),
    "cw-r1-dq128": _cfg("seed + DYNAMIC_QUANTIZATION_GROUP_SIZE=128, int4 sym channel-wise ratio 1.0 export",
                        CW_R1, DYNAMIC_QUANTIZATION_GROUP_SIZE="128"),
    "cw-r1-f32": _cfg("seed + INFERENCE_PRECISION_HINT=f32, int4 sym channel-wise ratio 1.0 export",
                      CW_R1, INFERENCE_PRECISION_HINT="f32"),
    "cw-r1-dq128-f32": _cfg("seed + DQ group 128 + f32, int4 sym channel-wise ratio 1.0 export",
                            CW_R1, DYNAMIC_QUANTIZATION_GROUP_SIZE="128", INFERENCE_PRECISION_HINT="f32"),
    "asym-r1": _cfg("seed properties, int4 asym g128 ratio 1.0 export", ASYM_R1),
    "asym-cw-r1": _cfg("seed properties, int4 asym channel-wise ratio 1.0 export", ASYM_CW_R1),
    "asym-cw-r1-f32": _cfg("seed + INFERENCE_PRECISION_HINT=f32, int4 asym channel-wise ratio 1.0 export",
                           ASYM_CW_R1, INFERENCE_PRECISION_HINT="f32"),
    "asym-cw-r1-dq0": _cfg("seed + DYNAMIC_QUANTIZATION_GROUP_SIZE=0 (off), int4 asym channel-wise ratio 1.0 "
                           "export", ASYM_CW_R1, DYNAMIC_QUANTIZATION_GROUP_SIZE="0"),
    "asym-cw-r1-dq128": _cfg("seed + DYNAMIC_QUANTIZATION_GROUP_SIZE=128, int4 asym channel-wise ratio 1.0 export",
                             ASYM_CW_R1, DYNAMIC_QUANTIZATION_GROUP_SIZE="128"),
    "asym-cw-r1-all": _cfg("seed properties, int4 asym channel-wise ratio 1.0 export, embeddings and output "
                           "in int4 too (--all-layers)", {**ASYM_CW_R1, "all_layers": True}),
    "g64-r1": _cfg("seed properties, int4 sym g64 ratio 1.0 export", {"group_size": 64, "ratio": 1.0}),
    "g128-r0.8": _cfg("seed properties, int4 sym g128 ratio 0.8 export", {"group_size": 128, "ratio": 0.8}),
    "asym-r1-f32": _cfg("seed + INFERENCE_PRECISION_HINT=f32, int4 asym g128 ratio 1.0 export", ASYM_R1,
                        INFERENCE_PRECISION_HINT="f32"),
    "g128-r1-f32": _cfg("seed + INFERENCE_PRECISION_HINT=f32, int4 sym g128 ratio 1.0 export", G128_R1,
                        INFERENCE_PRECISION_HINT="f32"),
    "hugepages": _cfg("seed + glibc malloc on transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)",
                      env={"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
    "cache-speed": _cfg("seed + CACHE_MODE=OPTIMIZE_SPEED (a cache with the weights; the app's is weightless)",
                        CACHE_MODE="OPTIMIZE_SPEED"),
    "no-cache": _cfg("seed without CACHE_DIR", CACHE_DIR=None, CACHE_MODE=None),
    "cw-r1-default": _cfg("app's default properties, int4 sym channel-wise ratio 1.0 export", CW_R1,
                          app_defaults=True),
    "g128-r1-default": _cfg("app's default properties, int4 sym g128 ratio 1.0 export", G128_R1,
                            app_defaults=True),
}


# --- models -------------------------------------------------------------------------------
def model_export(model: str, export: dict | None) -> Path:
    """The exported OpenVINO folder for `model` with `export` over its default export settings."""
    from phi3ui.export import ensure_exported

    base = BUNDLED_EXPORT if model == "bundled" else ExportSettings()
    settings = ExportSettings(**{**base.as_dict(), **(export or {})})
    source = BUNDLED if model == "bundled" else str(phi3_source())
    return ensure_exported(source, settings, progress=lambda m: print(m, file=sys.stderr, flush=True)).folder


def phi3_gguf() -> Path:
    """The Phi-3-shaped model as GGUF Q4_0, made once: F16 conversion (kept until the
    quantisation succeeds, so a failed step can be resumed), then llama_model_quantize."""
    folder = cache_root() / "gguf"
    name = f"phi3-mini-shaped-random-v{PHI3_SHAPED_VERSION}"
    target, f16 = folder / f"{name}-Q4_0.gguf", folder / f"{name}-F16.gguf"
    if target.exists():
        return target
    if not f16.exists():
        converter = Path(os.environ.get("LLAMA_CPP_SRC", "")) / "convert_hf_to_gguf.py"
        if not os.environ.get("LLAMA_CPP_SRC") or not converter.exists():
            raise SystemExit("The Phi-3-shaped GGUF is made once with llama.cpp's convert_hf_to_gguf.py: set "
                             "LLAMA_CPP_SRC to a llama.cpp source folder (vendor/llama.cpp of the unpacked "
                             f"llama-cpp-python sdist). Not found: {converter}")
        with staged(f16) as partial:
            # The source carries Phi-3's tokenizer.model, which the converter reads as it
            # does for the real model (SentencePiece vocabulary, scores and token types).
            print("Converting the Phi-3-shaped model to GGUF F16…", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, str(converter), str(phi3_source()), "--outtype", "f16",
                            "--outfile", str(partial)], check=True)
    import llama_cpp

    print("Quantising to Q4_0…", file=sys.stderr, flush=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = os.cpu_count() or 1
    with staged(target) as partial:
        if llama_cpp.llama_model_quantize(str(f16).encode(), str(partial).encode(), params) != 0:
            raise SystemExit("llama_model_quantize failed")
    f16.unlink()
    return target


def prompt_ids(folder: Path, repeats: int = 1) -> tuple[list[list[int]], list[int]]:
    """(measured prompts, warm-up prompt): PROMPT_TOKENS ids each, from bench.py's chat
    messages, each starting with a different message, so no run finds a usable prefix of
    an earlier one in a cache (PagedAttention's, llama-cpp-python's)."""
    import openvino_genai as ov_genai

    tokenizer = ov_genai.Tokenizer(str(folder))

    def ids(text: str) -> list[int]:
        return [int(i) for i in tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]][:PROMPT_TOKENS]

    measured = [ids(" ".join(MESSAGES[r:] + MESSAGES[:r])) for r in range(repeats)]
    warmup = ids("Q: " + " ".join(reversed(MESSAGES)))
    firsts = {p[0] for p in [*measured, warmup]}
    assert all(len(p) == PROMPT_TOKENS for p in [*measured, warmup])
    if len(firsts) != repeats + 1:
        raise SystemExit(f"--repeats {repeats}: this tokenizer starts only {len(firsts) - 1} of the prompts "
                         "with different tokens, so a later run could hit an earlier one's cache; ask for fewer")
    return measured, warmup


# --- the child processes ------------------------------------------------------------------
def _timings(start: float, stamps: list[float]) -> tuple[float, float]:
    """(time to first token in s, ms per token after the first)."""
    ttft = stamps[0] - start
    per_token = (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1000 if len(stamps) > 1 else 0.0
    return ttft, per_token


def _summary(runs: list[tuple[float, float]]) -> dict:
    """The median of the measured runs, and every run, so the spread is on record."""
    ttfts, per_tokens = [r[0] for r in runs], [r[1] for r in runs]
    return {"ttft_s": statistics.median(ttfts), "ms_per_token": statistics.median(per_tokens),
            "ttft_runs_s": ttfts, "ms_per_token_runs": per_tokens}


def genai_properties(config: Config) -> dict:
    """The properties handed to the engine (merged over default_properties() by it): the
    seed, the app's other default keys unset (its model cache kept), then the configuration's
    own; or, for an `app_defaults` configuration, nothing: the app's default_properties() as
    they are."""
    from phi3ui.engine import default_properties, without_cache

    if config.app_defaults:
        return {}
    unset = {k: None for k in without_cache(default_properties()) if k not in SEED}
    return {**unset, **SEED, **config.properties}


OnToken = Callable[[], None]


class GenaiRunner:
    """A genai configuration loaded through the app's own engine; `on_token` is called as
    each token is produced (no detokenising in the loop)."""

    def __init__(self, spec: dict):
        from phi3ui.engines import load_engine
        from phi3ui.settings import RuntimeSettings

        start = time.perf_counter()
        self.engine = load_engine(Path(spec["folder"]), RuntimeSettings(engine="genai", properties=spec["properties"]))
        self.load_s = time.perf_counter() - start
        self.tpot_ms: float | None = None  # genai's own perf_metrics of the last answer

    def generate(self, ids: list[int], count: int, on_token: OnToken) -> list[int]:
        import openvino_genai as ov_genai

        from phi3ui.genai_engine import tokenized
        from phi3ui.settings import GenerationSettings

        tokens: list[int] = []

        class Clock(ov_genai.StreamerBase):
            def write(self, token) -> ov_genai.StreamingStatus:
                for t in (token if isinstance(token, (list, tuple)) else [token]):
                    tokens.append(int(t))
                    on_token()
                return ov_genai.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        settings = GenerationSettings(max_new_tokens=count, min_new_tokens=count)
        config = self.engine.generation_config(settings, self.engine.pipeline.get_generation_config())
        result = self.engine.pipeline.generate(tokenized(ids), config, Clock())
        self.tpot_ms = result.perf_metrics.get_tpot().mean
        return tokens

    def about(self) -> dict:
        from phi3ui.engine import without_cache

        return {"properties_used": without_cache(self.engine.properties)}


class LlamaRunner:
    """llama.cpp through llama-cpp-python, 2 threads, greedy."""

    def __init__(self, spec: dict):
        import llama_cpp

        start = time.perf_counter()
        self.llm = llama_cpp.Llama(spec["gguf"], n_ctx=1024, n_batch=512, n_threads=2, n_threads_batch=2,
                                   verbose=False)
        self.load_s = time.perf_counter() - start
        self.tpot_ms = None

    def tokens(self, ids: list[int], count: int) -> Iterator[int]:
        """Each token as it is made; the first after reading the prompt."""
        for made, token in enumerate(self.llm.generate(ids, temp=0.0, top_k=1, reset=True), start=1):
            yield int(token)  # llama-cpp-python never stops on eos itself
            if made == count:
                return

    def generate(self, ids: list[int], count: int, on_token: OnToken) -> list[int]:
        tokens = []
        for token in self.tokens(ids, count):
            tokens.append(token)
            on_token()
        return tokens

    def about(self) -> dict:
        import llama_cpp

        return {"system_info": llama_cpp.llama_print_system_info().decode()}


class GenaiStepper:
    """A genai configuration driven one scheduler step at a time.

    LLMPipeline streams from a thread of its own and runs ahead of its streamer, so it cannot
    be paused after a token; ContinuousBatchingPipeline's step() can. It is the same
    PagedAttention path LLMPipeline runs (and the app's batching engine), with the same
    properties merged over the app's defaults."""

    def __init__(self, spec: dict):
        import openvino_genai as ov_genai

        from phi3ui.engine import cache_turn, default_properties, merge_properties

        start = time.perf_counter()
        self.properties = merge_properties(default_properties(), spec["properties"])
        scheduler = ov_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = True
        scheduler.cache_size = 1
        with cache_turn(self.properties):
            self.pipeline = ov_genai.ContinuousBatchingPipeline(spec["folder"], scheduler, "CPU", self.properties)
        self.load_s = time.perf_counter() - start
        self.requests = 0

    def tokens(self, ids: list[int], count: int) -> Iterator[int]:
        from phi3ui.genai_engine import tokenized

        config = self.pipeline.get_config()
        config.max_new_tokens = config.min_new_tokens = count
        config.do_sample, config.apply_chat_template = False, False
        self.requests += 1
        handle = self.pipeline.add_request(self.requests, tokenized(ids).input_ids, config)
        made = 0
        while made < count:
            self.pipeline.step()
            while handle.can_read():
                for output in handle.read().values():
                    for token in output.generated_ids:
                        made += 1
                        yield int(token)

    def about(self) -> dict:
        from phi3ui.engine import without_cache

        return {"properties_used": without_cache(self.properties)}


def load_runner(spec: dict, stepped: bool = False) -> GenaiRunner | GenaiStepper | LlamaRunner:
    if spec["runtime"] == "llama":
        return LlamaRunner(spec)
    return GenaiStepper(spec) if stepped else GenaiRunner(spec)


def run_alone(spec: dict) -> dict:
    """One configuration: a warm-up answer, then the measured ones, back to back."""
    runner = load_runner(spec)
    runner.generate(spec["warmup_ids"], spec["warmup_tokens"], lambda: None)
    runs, tpots, tokens = [], [], []
    for ids in spec["prompt_ids"]:
        stamps: list[float] = []
        begin = time.perf_counter()
        tokens = runner.generate(ids, spec["new_tokens"], lambda stamps=stamps: stamps.append(time.perf_counter()))
        runs.append(_timings(begin, stamps))
        tpots.append(runner.tpot_ms)
    result = {"load_s": runner.load_s, **_summary(runs), "tokens": tokens, **runner.about()}
    return result | ({"genai_tpot_ms_runs": tpots} if spec["runtime"] == "genai" else {})


def run_in_turns(spec: dict) -> dict:
    """Every configuration in this one process, making one token each in turn: the first
    token of each, then the second of each, and so on. This VM's speed drifts by 10-40%
    within minutes, so configurations measured one after another can differ by more than
    anything a setting changes; in turns, drift hits all of them alike, and each decode step
    is paired with the reference's (the first configuration's) step of the same number.

    Before each step the process sleeps `pause_s` (not timed), so the previous runtime's
    worker threads (TBB's, OpenMP's) have stopped spinning on the cores the next one needs."""
    runners = [load_runner(s, stepped=True) for s in spec["configs"]]
    for runner in runners:
        for _ in runner.tokens(spec["warmup_ids"], spec["warmup_tokens"]):
            pass
    firsts: list[list[float]] = [[] for _ in runners]  # seconds to the first token, per prompt
    steps: list[list[float]] = [[] for _ in runners]  # ms per decode step, every prompt's in turn
    for number, ids in enumerate(spec["prompt_ids"], start=1):
        answers = [runner.tokens(ids, spec["new_tokens"]) for runner in runners]
        for made in range(spec["new_tokens"]):
            for index, answer in enumerate(answers):
                time.sleep(spec["pause_s"])
                start = time.perf_counter()
                next(answer)
                took = time.perf_counter() - start
                (firsts[index].append(took) if made == 0 else steps[index].append(took * 1000))
        last = -(spec["new_tokens"] - 1)
        print(f"  prompt {number}: " + ", ".join(f"{s['name']} {statistics.median(t[last:]):.1f}"
                                                  for s, t in zip(spec["configs"], steps)) + " ms/token",
              file=sys.stderr, flush=True)
    per_prompt = spec["new_tokens"] - 1
    results = []
    for runner, ttfts, series in zip(runners, firsts, steps):
        ratios = [a / b for a, b in zip(series, steps[0])]
        means = [statistics.fmean(series[i:i + per_prompt]) for i in range(0, len(series), per_prompt)]
        results.append({"load_s": runner.load_s, **_summary(list(zip(ttfts, means))), "steps_ms": series,
                        "step_ratio_median": statistics.median(ratios),
                        "steps_faster": sum(r < 1 for r in ratios), "steps_paired": len(ratios),
                        **runner.about()})
    return {"results": results}


def worker_main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result = run_in_turns(spec) if "configs" in spec else run_alone(spec)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    Path(out_path).write_text(json.dumps(result))
    return 0


def run_child(spec: dict, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="phi3ui-decode-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        subprocess.run([sys.executable, "-m", "bench.decode", "_worker", str(spec_path), str(out_path)],
                       check=True, cwd=ROOT, env={**os.environ, **env})
        return json.loads(out_path.read_text())


# --- a session ----------------------------------------------------------------------------
def _cpu_ticks() -> dict[int, int]:
    ticks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ticks[int(stat.parent.name)] = cpu_ticks(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    return ticks


def busy_processes(interval_s: float = 2.0) -> list[str]:
    """Other processes that used at least a fifth of a CPU over the last `interval_s`
    (sampled from /proc: ps's %CPU is a lifetime average). Our own workers don't count."""
    before = _cpu_ticks()
    time.sleep(interval_s)
    after, hz = _cpu_ticks(), os.sysconf("SC_CLK_TCK")
    rows = []
    for pid, ticks in after.items():
        share = (ticks - before.get(pid, ticks)) / hz / interval_s
        if share < 0.2 or pid == os.getpid():
            continue
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if "bench.decode _worker" not in args:
            rows.append(f"{share:.0%} {args[:90]}")
    return rows


def wait_until_quiet(limit_s: float) -> float:
    """Wait (up to `limit_s`) until no other process has used a fifth of a CPU for two
    checks in a row: on 2 cores another job's load makes a figure meaningless, and
    llama.cpp's spinning OpenMP threads suffer most. Returns the seconds waited."""
    start, quiet = time.monotonic(), 0
    while quiet < 2 and time.monotonic() - start < limit_s:
        busy = busy_processes()
        quiet = 0 if busy else quiet + 1
        if busy and quiet == 0:
            print(f"  waiting for a quiet machine: {busy[0]}", file=sys.stderr, flush=True)
        time.sleep(5)
    return round(time.monotonic() - start, 1)


def runtime_spec(config: Config, model: str) -> tuple[dict, int]:
    """What a worker needs to load `config` on `model`, and the size of its weights."""
    if config.runtime == "llama":
        gguf = phi3_gguf() if model == "phi3" else gguf_path()
        return {"runtime": "llama", "gguf": str(gguf)}, gguf.stat().st_size
    folder = model_export(model, config.export)
    spec = {"runtime": "genai", "folder": str(folder), "properties": genai_properties(config)}
    return spec, (folder / "openvino_model.bin").stat().st_size


def _record(name: str, config: Config, spec: dict, weights: int) -> dict:
    return {"config": name, "about": config.about, "runtime": config.runtime, "export": config.export,
            "weight_bytes": weights, **({"properties": spec["properties"]} if config.runtime == "genai" else {}),
            **({"env": config.env} if config.env else {})}


def measure(name: str, config: Config, model: str, prompt: list[list[int]], warmup: list[int],
            quiet_limit_s: float = 0) -> dict:
    spec, weights = runtime_spec(config, model)
    spec |= {"prompt_ids": prompt, "warmup_ids": warmup, "new_tokens": NEW_TOKENS, "warmup_tokens": WARMUP_NEW_TOKENS}
    print(f"[{model}] {name}: {config.about}", file=sys.stderr, flush=True)
    waited = wait_until_quiet(quiet_limit_s) if quiet_limit_s else 0.0
    load_before, busy = round(os.getloadavg()[0], 2), busy_processes()
    result = run_child(spec, config.env)
    busy_after = busy_processes()
    print(f"  TTFT {result['ttft_s']:.2f} s, {result['ms_per_token']:.1f} ms/token", file=sys.stderr, flush=True)
    return {**_record(name, config, spec, weights), "load_before": load_before, "waited_for_quiet_s": waited,
            "busy_during": sorted(set(busy + busy_after)), **result}


def measure_in_turns(names: list[str], model: str, prompt: list[list[int]], warmup: list[int],
                     quiet_limit_s: float, pause_s: float = TURNS_PAUSE_S) -> list[dict]:
    """Every configuration in one worker, a token each in turn (run_in_turns)."""
    specs, records = [], []
    for name in names:
        config = CONFIGS[name]
        spec, weights = runtime_spec(config, model)
        specs.append({"name": name, **spec})
        records.append(_record(name, config, spec, weights))
    print(f"[{model}] in turns: {', '.join(names)}", file=sys.stderr, flush=True)
    waited = wait_until_quiet(quiet_limit_s) if quiet_limit_s else 0.0
    load_before, busy = round(os.getloadavg()[0], 2), busy_processes()
    result = run_child({"configs": specs, "prompt_ids": prompt, "warmup_ids": warmup, "new_tokens": NEW_TOKENS,
                        "warmup_tokens": WARMUP_NEW_TOKENS, "pause_s": pause_s}, {})
    busy_during = sorted(set(busy + busy_processes()))
    return [{**record, "load_before": load_before, "waited_for_quiet_s": waited, "busy_during": busy_during,
             "peak_rss_mb": result["peak_rss_mb"], **own} for record, own in zip(records, result["results"])]


def run_session(args: argparse.Namespace, argv: list[str]) -> dict:
    folder = model_export(args.model, None)
    prompt, warmup = prompt_ids(folder, args.repeats)
    names = args.configs * args.rounds
    session = {"model": args.model, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
               "command": "python -m bench.decode " + shlex.join(argv),
               "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, "repeats": args.repeats,
               "rounds": args.rounds,
               "machine": {"cpus": os.cpu_count(), "cpu": cpu_name(), "load_before": round(os.getloadavg()[0], 2),
                           "busy_before": busy_processes()}, "runs": []}
    if args.bandwidth_mb:
        wait_until_quiet(args.quiet_wait)
        session["bandwidth_gb_per_s"] = measure_bandwidth(args.bandwidth_mb).gb_per_s
    if args.turns:
        session["turns_pause_s"] = TURNS_PAUSE_S
        session["runs"] = measure_in_turns(args.configs, args.model, prompt, warmup, args.quiet_wait)
    else:
        session["runs"] = [measure(name, CONFIGS[name], args.model, prompt, warmup, args.quiet_wait) for name in names]
    session["machine"]["load_after"] = round(os.getloadavg()[0], 2)
    session["machine"]["busy_after"] = busy_processes()
    return session


# --- results ------------------------------------------------------------------------------
def reference(sessions: list[dict], index: int) -> tuple[dict | None, str]:
    """The llama.cpp run a session's ratios are taken against: its own, else the latest
    earlier one on the same model (said so in the table)."""
    own = next((r for r in sessions[index]["runs"] if r["runtime"] == "llama"), None)
    if own:
        return own, ""
    for earlier in reversed(sessions[:index]):
        if earlier["model"] == sessions[index]["model"]:
            run = next((r for r in earlier["runs"] if r["runtime"] == "llama"), None)
            if run:
                return run, f" (against llama.cpp of {earlier['date']})"
    return None, " (no llama.cpp run to compare with)"


def _spread(values: list[float] | None, form: str) -> str:
    """' (low–high)' of the measured runs, when there was more than one."""
    return f" ({min(values):{form}}–{max(values):{form}})" if values and len(values) > 1 else ""


def session_table(sessions: list[dict], index: int) -> list[str]:
    session = sessions[index]
    ref, note = reference(sessions, index)
    machine = session["machine"]
    during = sorted({b for run in session["runs"] for b in run.get("busy_during", [])})
    busy = "; other busy processes during a run: " + "; ".join(during) if during else \
        "; no other busy process seen during the runs"
    bandwidth = session.get("bandwidth_gb_per_s")
    repeats = session.get("repeats", 1)
    measured = f"median of {repeats} measured runs (range)" if repeats > 1 else "one measured run"
    lines = [f"#### {session['model']}, {session['date']}{note}", "", "```", session["command"], "```", "",
             f"{measured.capitalize()} per configuration.",
             f"Load average {machine['load_before']} before, {machine.get('load_after', '?')} after "
             f"({machine['cpus']} cores{', ' + machine['cpu'] if machine.get('cpu') else ''}){busy}."
             + (f" Memory read bandwidth {bandwidth} GB/s." if bandwidth else ""), "",
             "| configuration | weights (GB) | TTFT (s) | TTFT ÷ llama.cpp | decode (ms/token) "
             "| decode ÷ llama.cpp | bandwidth limit (ms/token) |",
             "|---|---|---|---|---|---|---|"]
    for run in session["runs"]:
        ttft_ratio = f"{run['ttft_s'] / ref['ttft_s']:.2f}" if ref else "–"
        decode_ratio = f"{run['ms_per_token'] / ref['ms_per_token']:.2f}" if ref else "–"
        limit = f"{run['weight_bytes'] / (bandwidth * 1e9) * 1000:.0f}" if bandwidth else "–"
        lines.append(f"| `{run['config']}`: {run['about']} | {run['weight_bytes'] / 1e9:.2f} | "
                     f"{run['ttft_s']:.2f}{_spread(run.get('ttft_runs_s'), '.1f')} | {ttft_ratio} | "
                     f"{run['ms_per_token']:.1f}{_spread(run.get('ms_per_token_runs'), '.0f')} | {decode_ratio} | {limit} |")
    return lines + [""] + pooled_table(session) + turns_table(session)


def pooled_table(session: dict) -> list[str]:
    """For a session with rounds: every configuration's runs pooled, and paired wins
    against the llama.cpp run of the same round."""
    rounds = session.get("rounds", 1)
    if rounds < 2:
        return []
    per_round = len(session["runs"]) // rounds
    names = [run["config"] for run in session["runs"][:per_round]]
    llama = [run for run in session["runs"] if run["runtime"] == "llama"]
    lines = [f"Pooled over {rounds} interleaved rounds: the median of every measured run, and the "
             "rounds in which the configuration decoded faster (and reached its first token sooner) "
             "than llama.cpp did in the same round.", "",
             "| configuration | decode ms/token, median (range) | ÷ llama.cpp | faster decode than llama.cpp "
             "| TTFT s, median | ÷ llama.cpp | sooner first token |", "|---|---|---|---|---|---|---|"]
    pooled = {name: [run for run in session["runs"] if run["config"] == name] for name in names}

    def every_run(runs: list[dict]) -> list[float]:
        return [v for run in runs for v in run["ms_per_token_runs"]]

    ref_decode = statistics.median(every_run(llama)) if llama else None
    ref_ttft = statistics.median([run["ttft_s"] for run in llama]) if llama else None
    for name, runs in pooled.items():
        decode = every_run(runs)
        ttft = statistics.median([run["ttft_s"] for run in runs])
        med = statistics.median(decode)
        if llama and runs[0]["runtime"] != "llama" and len(llama) == len(runs):
            wins = sum(r["ms_per_token"] <= l["ms_per_token"] for r, l in zip(runs, llama))
            sooner = sum(r["ttft_s"] <= l["ttft_s"] for r, l in zip(runs, llama))
            paired, paired_ttft = f"{wins}/{len(runs)}", f"{sooner}/{len(runs)}"
        else:
            paired = paired_ttft = "–"
        lines.append(f"| `{name}` | {med:.1f} ({min(decode):.1f}–{max(decode):.1f}) | "
                     f"{med / ref_decode:.2f} | {paired} | {ttft:.2f} | {ttft / ref_ttft:.2f} | {paired_ttft} |"
                     if ref_decode else f"| `{name}` | {med:.1f} | – | – | {ttft:.2f} | – | – |")
    return lines + [""]


def turns_table(session: dict) -> list[str]:
    """For a session measured in turns: each decode step against llama.cpp's step of the
    same number, made within a second of it."""
    if "turns_pause_s" not in session:
        return []
    lines = [f"Measured in turns (`--turns`): every configuration in one process, one token each in turn, "
             f"{session['turns_pause_s'] * 1000:.0f} ms untimed pause before each step. Each decode step is "
             "paired with llama.cpp's step of the same number.", "",
             "| configuration | decode step ÷ llama.cpp's paired step, median | steps faster than llama.cpp's |",
             "|---|---|---|"]
    for run in session["runs"][1:]:
        lines.append(f"| `{run['config']}` | {run['step_ratio_median']:.2f} | "
                     f"{run['steps_faster']}/{run['steps_paired']} ({run['steps_faster'] / run['steps_paired']:.0%}) |")
    return lines + [""]


def write_markdown(sessions: list[dict], path: Path) -> None:
    """decode.md: every session's table, newest first."""
    out = ["# Decode speed against llama.cpp", "",
           f"Made by `python -m bench.decode` (see bench/decode.py): a {PROMPT_TOKENS}-token prompt, "
           f"{NEW_TOKENS} new tokens forced (greedy, min_new_tokens), measured runs (each with its own prompt) after a "
           "warm-up with another prompt, each configuration in its own process. Ratios below 1 are better than llama.cpp. "
           "Times are wall-clock from the call to each token as it is produced (a token streamer, no "
           "detokenising); `decode.json` also holds genai's own perf_metrics. What the sessions showed, "
           "and the configurations' names: [bench/NOTES.md](../NOTES.md).", "",
           "## Sessions (newest first)", ""]
    for index in reversed(range(len(sessions))):
        out += session_table(sessions, index)
    path.write_text("\n".join(out))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("phi3", "bundled"), default="phi3")
    parser.add_argument("--configs", default="llama,seed,default", help="comma-separated names (see --list)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measured runs per configuration, each with its own prompt (median reported)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the whole list this many times, interleaved, and pool the results")
    parser.add_argument("--list", action="store_true", help="print the named configurations and exit")
    parser.add_argument("--bandwidth-mb", type=int, default=1024, help="0 skips the bandwidth measurement")
    parser.add_argument("--quiet-wait", type=float, default=1800,
                        help="seconds to wait for other busy processes to end before each run (0: don't)")
    parser.add_argument("--turns", action="store_true",
                        help="every configuration in one process, a token each in turn (llama first: the reference)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if bad := [c for c in args.configs if c not in CONFIGS]:
        parser.error(f"unknown configuration(s): {', '.join(bad)}")
    if args.turns:
        if args.configs[0] != "llama" or args.rounds > 1:
            parser.error("--turns takes llama first (the reference) and no --rounds (use --repeats)")
        if with_env := [c for c in args.configs if CONFIGS[c].env]:
            parser.error(f"{', '.join(with_env)} set the environment and cannot share a process with others")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1], argv[2])
    args = parse_args(argv)
    if args.list:
        for name, config in CONFIGS.items():
            print(f"{name:18} {config.about}")
        return 0
    session = run_session(args, argv)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "decode.json"
    data = json.loads(json_path.read_text()) if json_path.exists() else {"sessions": []}
    data["sessions"].append(session)
    json_path.write_text(json.dumps(data, indent=1))
    write_markdown(data["sessions"], args.out / "decode.md")
    print("\n".join(session_table(data["sessions"], len(data["sessions"]) - 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
