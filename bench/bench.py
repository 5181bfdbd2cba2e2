"""Multi-turn chat benchmark: time to first token per turn, decode speed, load time, memory.

For the bundled model (or the Phi-3-mini-shaped one) it runs a scripted conversation (fixed
user messages, every answer forced to the same length with min_new_tokens = max_new_tokens,
greedy) on each engine, each engine in a child process of its own so its peak memory is its own:

* load time cold (an empty OpenVINO CACHE_DIR) and warm (the same cache, second load),
* per turn: time to first token and decode tokens/s,
* peak RSS of the process that loaded the model and ran the conversation.

Then the same conversation through the running app over HTTP (`python app.py --engine genai`
and `gradio_client` on its `/chat` endpoint), as the client sees it; and the machine's memory
read bandwidth, which bounds decoding: every token reads all the weights once, so
weight bytes / bandwidth is the least time per token.

    python -m bench.bench                 # the bundled SmolLM2-135M int4
    python -m bench.bench --phi3-shaped   # Phi-3-mini sizes, random weights (2.5 min export once)
    python -m bench.bench --phi3-shaped --preset 'fastest decode' --engines genai --no-http
    python -m bench.bench --turns 2 --tokens 4 --no-http --out /tmp/b   # smoke run

Writes `<out>/<label>.json` and `<out>/<label>.png`, then rewrites `<out>/README-section.md`
from every result JSON in `<out>`. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from phi3ui.files import staged
from phi3ui.settings import LOCAL_ENGINES
from tests.app_process import AppProcess, vm_hwm_mb

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
ENGINES = LOCAL_ENGINES
PHI3_SHAPED_VERSION = "2"  # bump when build_phi3_shaped changes what it builds

# Fixed user turns, each about 100 tokens, so a turn adds a paragraph to the history as a
# real chat does. Answers are the model's own (greedy), so the history is what the app sends.
MESSAGES = [
    "I am planning a small vegetable garden behind my house. The plot is about four metres by "
    "three, it gets sun from late morning until evening, and the soil is heavy clay that stays "
    "wet for days after rain. I would like to grow tomatoes, beans, lettuce and some herbs. "
    "Where should I start, and what should I do about the soil before I plant anything?",
    "Thanks. I read that raised beds help with clay. How deep should a raised bed be for "
    "tomatoes and beans, what should I fill it with, and is it worth mixing some of the "
    "existing clay into the bottom layer or should I keep it separate? I have a budget of "
    "about two hundred euros for the whole project, including wood and soil.",
    "Let us talk about watering. I work during the day, so I can only water early in the "
    "morning or after seven in the evening. In July it often gets above thirty degrees here "
    "for a week at a time. Is a simple drip line on a timer a good idea, and how much water "
    "would tomatoes in a raised bed need on such days?",
    "My neighbour says I should plant marigolds and basil between the tomatoes to keep pests "
    "away, and that beans should never be planted next to onions. Is there any evidence for "
    "companion planting like this, or is it mostly folklore? Please separate what is known "
    "from what is just tradition, and tell me what you would actually do in my place.",
    "Last year the leaves on my potted tomatoes got yellow patches with brown rings, starting "
    "from the bottom of the plant and moving up, and by August most of the lower leaves had "
    "died. The fruit was fine but small. What could that have been, how do I avoid it in the "
    "new beds, and should I throw away the old potting soil?",
    "I would like to plan the season so that something is ready to harvest every few weeks "
    "from May to October rather than everything at once. Could you sketch a sowing calendar "
    "for lettuce, beans and radishes with successive sowings, assuming the last frost is in "
    "mid April and the first frost comes around the end of October?",
    "For the herbs I am thinking of basil, parsley, thyme, rosemary and mint. Some of them "
    "like dry soil and others like it moist, and I have heard that mint spreads everywhere. "
    "Should they share one bed or be kept apart, which ones can stay outside over the winter, "
    "and which ones are easier to grow from cuttings than from seed?",
    "I also want to start composting kitchen scraps and garden waste so I can improve the "
    "soil every year. I have room for a bin of about one cubic metre in a shady corner. What "
    "can and cannot go in, how often should I turn it, how long until it is usable, and how "
    "do I stop it from smelling or attracting rats?",
    "Slugs destroyed most of my lettuce seedlings last spring, sometimes overnight. I do not "
    "want to use chemical pellets because a hedgehog visits the garden in the evenings and my "
    "neighbour has a cat. What are the options that actually work, how much effort does each "
    "take, and is there anything I can do when building the beds to make it harder for them?",
    "Finally, could you summarise everything we discussed as a short checklist for the next "
    "three months, in order, so I can print it and stick it on the shed door? Keep each item "
    "to one line, mention the soil, the beds, watering, the sowing calendar, the herbs, the "
    "compost and the slugs, and put the things I must buy first at the top.",
]


# --- results ------------------------------------------------------------------------------
@dataclass
class Turn:
    """One answer as the engine saw it (prepare = fitting and rendering the prompt)."""

    turn: int
    prompt_tokens: int
    answer_tokens: int
    prepare_s: float
    ttft_s: float
    tokens_per_s: float
    total_s: float
    load_avg: float = 0.0  # the machine's 1-minute load average after the turn: is it shared?


@dataclass
class Start:
    """One start of an engine: loading, then a 1-token answer to a short prompt (the first
    inference after a load does one-off work that would otherwise land on turn 1)."""

    cache: str  # "cold": empty CACHE_DIR, "warm": the cache the cold start wrote, "none": no CACHE_DIR
    load_s: float
    first_token_s: float
    peak_rss_mb: float


@dataclass
class EngineRun:
    engine: str
    starts: list[Start]
    peak_rss_mb: float  # the process that loaded (warm) and ran the whole conversation
    turns: list[Turn]
    decode_tokens_per_s: float = 0.0  # median over turns
    fraction_of_bandwidth_limit: float = 0.0
    cache_mb: float | None = None  # what the cold start wrote to CACHE_DIR (the app's default CACHE_MODE)
    ttft_turn_last_over_turn2: float | None = None


@dataclass
class HttpTurn:
    turn: int
    answer_tokens: int
    ttft_s: float
    tokens_per_s: float
    total_s: float
    same_text_as_engine: bool | None = None


@dataclass
class HttpRun:
    engine: str
    startup_s: float
    server_peak_rss_mb: float
    turns: list[HttpTurn]
    decode_tokens_per_s: float = 0.0
    fraction_of_engine_tokens_per_s: float = 0.0
    median_ttft_overhead_s: float = 0.0  # HTTP TTFT minus the engine's prepare + TTFT, same turn


@dataclass
class Bandwidth:
    gb_per_s: float  # the best of single- and multi-threaded: what the machine can read
    single_thread_gb_per_s: float
    threads: int
    array_mb: int
    runs: int


@dataclass
class Report:
    label: str
    model: str
    folder: str
    weight_bytes: int
    date: str
    command: str
    turns: int
    answer_tokens: int
    machine: dict
    bandwidth: Bandwidth
    limit_ms_per_token: float
    limit_tokens_per_s: float
    engines: list[EngineRun] = field(default_factory=list)
    http: HttpRun | None = None
    targets: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


# --- memory bandwidth ---------------------------------------------------------------------
def measure_bandwidth(array_mb: int = 1024, runs: int = 5) -> Bandwidth:
    """Read a large array with numpy, one thread and one per core; best of `runs` each."""
    import numpy as np

    data = np.ones(array_mb * 2**20 // 8, dtype=np.float64)  # touched, so no page faults later
    threads = os.cpu_count() or 1
    parts = np.array_split(data, threads)

    def best(read) -> float:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            read()
            times.append(time.perf_counter() - start)
        return data.nbytes / min(times) / 1e9

    single = best(data.sum)
    with ThreadPoolExecutor(threads) as pool:  # numpy's reductions release the GIL
        multi = best(lambda: list(pool.map(np.sum, parts)))
    return Bandwidth(round(max(single, multi), 2), round(single, 2), threads, array_mb, runs)


# --- one engine, in a child process -------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak RSS. Not getrusage's ru_maxrss: Linux carries that across exec,
    so a child would report its parent's peak (the bandwidth array) as its own."""
    return vm_hwm_mb(os.getpid())


def load_backend(folder: str, engine: str, cache_dir: str):
    from phi3ui.chat import ChatBackend
    from phi3ui.settings import RuntimeSettings

    backend = ChatBackend()
    start = time.perf_counter()
    backend.load(folder, runtime=RuntimeSettings(engine=engine, properties={"CACHE_DIR": cache_dir}))
    return backend, time.perf_counter() - start


def run_conversation(backend, turns: int, tokens: int) -> tuple[list[Turn], list[str]]:
    """The scripted chat: each answer joins the history the next turn sends."""
    from phi3ui.settings import GenerationSettings

    settings = GenerationSettings(max_new_tokens=tokens, min_new_tokens=tokens)
    history: list[dict] = []
    results, answers = [], []
    for number, message in enumerate(MESSAGES[:turns], start=1):
        start = time.perf_counter()
        fitted = backend.prepare(history, message, settings)
        prepare_s = time.perf_counter() - start
        answer = backend.start(fitted, settings)
        answer.text()
        stats = answer.stats
        results.append(Turn(number, stats.prompt_tokens, stats.answer_tokens, round(prepare_s, 4),
                            round(stats.ttft_s, 4), round(stats.tokens_per_s, 2), round(stats.total_s, 3),
                            round(os.getloadavg()[0], 2)))
        answers.append(stats.text)
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": stats.text}]
        print(f"  {backend.engine.name} turn {number}: {stats.summary()}", file=sys.stderr, flush=True)
    return results, answers


def time_first_token(backend) -> float:
    """Seconds to a 1-token answer to a short prompt, right after loading."""
    from phi3ui.settings import GenerationSettings

    settings = GenerationSettings(max_new_tokens=1, min_new_tokens=1)
    start = time.perf_counter()
    backend.reply([], "Hello!", settings).text()
    return time.perf_counter() - start


def worker_main(argv: list[str]) -> int:
    """`python -m bench.bench _worker ...`: load once (and maybe chat), write a JSON of what happened."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench _worker")
    parser.add_argument("--folder", required=True)
    parser.add_argument("--engine", required=True, choices=ENGINES)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--turns", type=int, default=0, help="0: load only")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    backend, load_s = load_backend(args.folder, args.engine, args.cache_dir)
    first_token_s = time_first_token(backend)
    start_rss = peak_rss_mb()
    turns, answers = run_conversation(backend, args.turns, args.tokens) if args.turns else ([], [])
    Path(args.out).write_text(json.dumps({
        "load_s": round(load_s, 3), "first_token_s": round(first_token_s, 3),
        "start_peak_rss_mb": round(start_rss, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
        "turns": [asdict(t) for t in turns], "answers": answers,
    }))
    return 0


def run_worker(folder: Path, engine: str, cache_dir: Path | str, turns: int, tokens: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, "-m", "bench.bench", "_worker", "--folder", str(folder), "--engine", engine,
                   "--cache-dir", str(cache_dir), "--turns", str(turns), "--tokens", str(tokens),
                   "--out", out.name]
        subprocess.run(command, check=True, cwd=ROOT)
        return json.loads(Path(out.name).read_text())


def bench_engine(folder: Path, engine: str, turns: int, tokens: int, limit_tps: float) -> tuple[EngineRun, list[str]]:
    """Each in a process of its own: a start without CACHE_DIR, a cold start (fresh cache), and a
    warm start (that cache) followed by the conversation."""
    print(f"[{engine}] start without a model cache…", file=sys.stderr, flush=True)
    none = run_worker(folder, engine, "", 0, tokens)
    with tempfile.TemporaryDirectory(prefix=f"phi3ui-bench-cache-{engine}-") as cache:
        print(f"[{engine}] cold start (empty CACHE_DIR)…", file=sys.stderr, flush=True)
        cold = run_worker(folder, engine, Path(cache), 0, tokens)
        cache_mb = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file()) / 1e6
        print(f"[{engine}] warm start and {turns}-turn conversation…", file=sys.stderr, flush=True)
        warm = run_worker(folder, engine, Path(cache), turns, tokens)
    starts = [Start(name, r["load_s"], r["first_token_s"], r["start_peak_rss_mb"])
              for name, r in (("cold", cold), ("warm", warm), ("none", none))]
    run = EngineRun(engine, starts, warm["peak_rss_mb"], [Turn(**t) for t in warm["turns"]], cache_mb=round(cache_mb))
    run.decode_tokens_per_s = round(median([t.tokens_per_s for t in run.turns]), 2)
    run.fraction_of_bandwidth_limit = round(run.decode_tokens_per_s / limit_tps, 3)
    if len(run.turns) >= 2 and run.turns[1].ttft_s > 0:
        run.ttft_turn_last_over_turn2 = round(run.turns[-1].ttft_s / run.turns[1].ttft_s, 2)
    return run, warm["answers"]


# --- the app over HTTP --------------------------------------------------------------------
def http_turn(client, message: str, history: list[dict], tokens: int) -> tuple[float, float | None, float, str]:
    """Submit one turn and follow the stream: (start, first text, last text) times and the text."""
    start = time.perf_counter()
    job = client.submit(message=message, history=history, max_new_tokens=tokens, api_name="/chat")
    first = last = None
    text = ""
    for text in job:
        last = time.perf_counter()
        if first is None and text:
            first = last
    return start, first, last or time.perf_counter(), text or ""


def bench_http(model: str, folder: Path, turns: int, tokens: int, engine_run: EngineRun | None,
               engine_answers: list[str], log_path: Path) -> HttpRun:
    """The conversation through the app's `/chat` endpoint, timed as the client sees it.

    The endpoint takes no min_new_tokens, so an answer that ends early is shorter; answer
    token counts are recorded per turn (and the text compared with the engine's) to show it.
    """
    import openvino_genai as ov_genai
    from gradio_client import Client

    tokenizer = ov_genai.Tokenizer(str(folder))
    app = AppProcess("--model", model, "--engine", "genai", log_path=log_path)
    try:
        print("[http] starting the app…", file=sys.stderr, flush=True)
        startup = app.wait_ready().startup_s
        client = Client(app.url, verbose=False, analytics_enabled=False, download_files=False)
        history: list[dict] = []
        results = []
        for number, message in enumerate(MESSAGES[:turns], start=1):
            start, first, last, text = http_turn(client, message, history, tokens)
            first = first or last
            count = int(tokenizer.encode(text, add_special_tokens=False).input_ids.shape[1]) if text else 0
            decode = last - first
            same = engine_answers[number - 1] == text if number <= len(engine_answers) else None
            results.append(HttpTurn(number, count, round(first - start, 4),
                                    round((count - 1) / decode, 2) if count > 1 and decode > 0 else 0.0,
                                    round(last - start, 3), same))
            print(f"  http turn {number}: {first - start:.2f} s to first token, "
                  f"{results[-1].tokens_per_s} tokens/s, {count} tokens", file=sys.stderr, flush=True)
            history += [{"role": "user", "content": message}, {"role": "assistant", "content": text}]
        client.close()
    finally:
        peak = app.stop()
    run = HttpRun("genai", round(startup, 2), round(peak, 1), results)
    run.decode_tokens_per_s = round(median([t.tokens_per_s for t in results]), 2)
    if engine_run:
        run.fraction_of_engine_tokens_per_s = round(run.decode_tokens_per_s / engine_run.decode_tokens_per_s, 3)
        overheads = [h.ttft_s - (e.prepare_s + e.ttft_s) for h, e in zip(results, engine_run.turns)]
        run.median_ttft_overhead_s = round(median(overheads), 4)
    return run


# --- the Phi-3-mini-shaped model ----------------------------------------------------------
def build_phi3_shaped(dest: Path) -> Path:
    """Phi-3-mini-4k-instruct with random weights (bf16 on disk): its config, its tokenizer and
    chat template (tests/phi3_tokenizer.py, checked against the original's ids) and its
    generation config, so the weights have the real model's size and prompts its tokens."""
    if (dest / "config.json").exists():
        return dest
    import torch
    from transformers import GenerationConfig, Phi3ForCausalLM

    from tests.phi3_tokenizer import phi3_generation_config, phi3_mini_config, phi3_tokenizer_folder

    print(f"Building a Phi-3-mini-shaped model with random weights in {dest}…", file=sys.stderr, flush=True)
    with staged(dest, last="config.json") as staging:
        staging.mkdir()
        phi3_tokenizer_folder(staging)
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # 7.6 GB instead of 15.3 GB in fp32
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = Phi3ForCausalLM(phi3_mini_config())
        finally:
            torch.set_default_dtype(default)
        model.generation_config = GenerationConfig(**phi3_generation_config())
        model.save_pretrained(staging)
        del model
    return dest


def phi3_source() -> Path:
    """Where the Phi-3-shaped model is kept as a Hugging Face folder."""
    from phi3ui.settings import cache_root

    return cache_root() / "sources" / f"phi3-mini-shaped-random-v{PHI3_SHAPED_VERSION}"


def resolve_model(args: argparse.Namespace) -> tuple[str, str, str, Path]:
    """(model, label, model argument for app.py, exported OpenVINO folder)."""
    from phi3ui.export import ensure_exported
    from phi3ui.settings import BUNDLED, PRESETS, export_preset

    suffix = "" if args.preset == PRESETS[0] else "-" + args.preset.replace(" ", "-")
    progress = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.phi3_shaped:
        source = build_phi3_shaped(phi3_source())
        exported = ensure_exported(str(source), export_preset(args.preset), progress=progress)
        return "phi3-shaped", "phi3-shaped" + suffix, str(exported.folder), exported.folder
    exported = ensure_exported(BUNDLED, export_preset(args.preset, BUNDLED), progress=progress)
    return BUNDLED, "bundled" + suffix, str(exported.folder) if suffix else BUNDLED, exported.folder


# --- targets, plot, markdown --------------------------------------------------------------
def targets(report: Report) -> list[dict]:
    """The project's targets (set for the Phi-3-mini-shaped model), measured, never assumed."""
    genai = next((e for e in report.engines if e.engine == "genai"), None)
    best = max(report.engines, key=lambda e: e.decode_tokens_per_s, default=None)
    rows = []
    if genai and genai.ttft_turn_last_over_turn2 is not None:
        rows.append({"target": f"genai TTFT turn {len(genai.turns)} ≤ 1.5× turn 2",
                     "measured": f"{genai.ttft_turn_last_over_turn2}×",
                     "met": genai.ttft_turn_last_over_turn2 <= 1.5})
    if best:
        rows.append({"target": "decode ≥ 75% of the bandwidth limit",
                     "measured": f"{best.fraction_of_bandwidth_limit:.0%} ({best.engine})",
                     "met": best.fraction_of_bandwidth_limit >= 0.75})
    if report.http and report.http.fraction_of_engine_tokens_per_s:
        rows.append({"target": "HTTP ≥ 95% of engine tokens/s",
                     "measured": f"{report.http.fraction_of_engine_tokens_per_s:.0%}",
                     "met": report.http.fraction_of_engine_tokens_per_s >= 0.95})
    return rows


def plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ttft, speed) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [(e.engine, e.turns) for e in report.engines]
    if report.http:
        series.append(("genai over HTTP", report.http.turns))
    for name, turns in series:
        x = [t.turn for t in turns]
        ttft.plot(x, [t.ttft_s for t in turns], marker="o", label=name)
        speed.plot(x, [t.tokens_per_s for t in turns], marker="o", label=name)
    speed.axhline(report.limit_tokens_per_s, color="grey", linestyle="--", label="bandwidth limit")
    ttft.set(title="Time to first token", xlabel="turn", ylabel="seconds")
    speed.set(title=f"Decode ({report.answer_tokens}-token answers)", xlabel="turn", ylabel="tokens/s")
    for ax in (ttft, speed):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{report.label}: {report.weight_bytes / 1e6:.0f} MB of weights, {report.date}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(report: Report) -> str:
    last = report.turns
    lines = [
        f"| run | start to ready (s): cold / warm / no cache | first answer's TTFT (s) | TTFT turn 1 (s) | turn 2 | turn {last} "
        f"| turn {last} ÷ turn 2 | decode tokens/s | of bandwidth limit | peak RSS (MB) | model cache (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ttft(turns: list, n: int) -> str:
        return f"{turns[n - 1].ttft_s:.2f}" if len(turns) >= n else "–"

    for e in report.engines:
        ratio = f"{e.ttft_turn_last_over_turn2}×" if e.ttft_turn_last_over_turn2 is not None else "–"
        starts = {s.cache: s for s in e.starts}

        def per_start(figure: str) -> str:
            return " / ".join(f"{getattr(starts[c], figure):.1f}" if c in starts else "–"
                              for c in ("cold", "warm", "none"))

        lines.append(f"| {e.engine} | {per_start('load_s')} | {per_start('first_token_s')} | {ttft(e.turns, 1)} | "
                     f"{ttft(e.turns, 2)} | {ttft(e.turns, last)} | {ratio} | {e.decode_tokens_per_s:.1f} | "
                     f"{e.fraction_of_bandwidth_limit:.0%} | {e.peak_rss_mb:.0f} | "
                     f"{'–' if e.cache_mb is None else f'{e.cache_mb:.0f}'} |")
    if h := report.http:
        turns = h.turns
        ratio = f"{turns[-1].ttft_s / turns[1].ttft_s:.2f}×" if len(turns) >= 2 and turns[1].ttft_s else "–"
        lines.append(f"| genai over HTTP (app) | start {h.startup_s:.1f} | – | {ttft(turns, 1)} | {ttft(turns, 2)} | "
                     f"{ttft(turns, last)} | {ratio} | {h.decode_tokens_per_s:.1f} "
                     f"({h.fraction_of_engine_tokens_per_s:.0%} of engine) | "
                     f"{h.decode_tokens_per_s / report.limit_tokens_per_s:.0%} | {h.server_peak_rss_mb:.0f} (server) | – |")
    return "\n".join(lines)


def section(report: Report, png: Path) -> str:
    m = report.machine
    shared = (f"shared with other work (load average {m['load_before']} before, {m['load_after']} after)"
              if m["shared"] else f"otherwise idle (load average {m['load_before']} before)")
    out = [
        f"### {report.label}: {report.weight_bytes / 1e6:,.0f} MB of weights ({report.date})",
        "",
        "```",
        report.command.strip(),
        "```",
        "",
        f"{report.turns} turns, answers forced to {report.answer_tokens} tokens, greedy. "
        f"Machine: {m['cpus']} cores{', ' + m['cpu'] if m.get('cpu') else ''}, {m['memory_gb']} GB, {shared}. "
        f"Memory read bandwidth "
        f"{report.bandwidth.gb_per_s} GB/s (numpy, best of {report.bandwidth.runs}), so at least "
        f"{report.limit_ms_per_token:.1f} ms per token ({report.limit_tokens_per_s:.1f} tokens/s) for "
        f"`openvino_model.bin`.",
        "",
        table(report),
        "",
    ]
    if report.targets:
        out += ["| target | measured | met |", "|---|---|---|"]
        out += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |" for t in report.targets]
        out.append("")
    out += [f"- {note}" for note in report.notes]
    rel = png.relative_to(ROOT) if png.is_relative_to(ROOT) else png
    out += ["", f"![Time to first token and decode speed per turn, {report.label}]({rel})", ""]
    return "\n".join(out)


def write_section(out: Path) -> Path:
    """README-section.md from every result JSON in `out` (bundled first)."""
    parts = ["## Benchmark", "",
             "Made by `python -m bench.bench` (see bench/bench.py); the JSON files beside this one hold "
             "every per-turn figure. Each start is a process of its own: \"cold\" loads with an "
             "empty OpenVINO `CACHE_DIR` (the OS file cache was warm), \"warm\" loads again with the "
             "cache that wrote, \"no cache\" without `CACHE_DIR`. \"Start to ready\" is loading plus the "
             "warm-up the app does before it takes questions (the first inference's one-off work); "
             "\"first answer's TTFT\" is a 1-token answer to a short prompt right after that. Over HTTP, "
             "start is from launching `python app.py` to the page answering, and turn 1 is the first "
             "answer. Decode tokens/s and HTTP figures are medians over turns.", ""]
    files = sorted(out.glob("*.json"), key=lambda p: (p.stem != "bundled", p.stem))
    for path in files:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and {"bandwidth", "engines", "turns"} <= data.keys():  # ours, not others'
            parts.append(section(report_from_json(data), path.with_suffix(".png")))
    target = out / "README-section.md"
    target.write_text("\n".join(parts))
    return target


def report_from_json(data: dict) -> Report:
    data = dict(data)
    data["bandwidth"] = Bandwidth(**data["bandwidth"])
    data["engines"] = [EngineRun(**{**e, "turns": [Turn(**t) for t in e["turns"]],
                                    "starts": [Start(**s) for s in e["starts"]]}) for e in data["engines"]]
    if data.get("http"):
        h = data["http"]
        data["http"] = HttpRun(**{**h, "turns": [HttpTurn(**t) for t in h["turns"]]})
    return Report(**data)


# --- main ---------------------------------------------------------------------------------
# The vector instructions OpenVINO's and llama.cpp's CPU kernels are chosen by.
CPU_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
                "avx512_bf16": "AVX-512 BF16", "amx_int8": "AMX"}


def cpu_name() -> str:
    """The CPU's model and its vector instructions, e.g. "AMD EPYC (AVX2)": machines of the
    same kind can differ here from one day to the next, and figures from CPUs that differ
    do not compare."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags = next((set(line.split(":", 1)[1].split()) for line in info.splitlines() if line.startswith("flags")), set())
    return f"{model} ({', '.join(name for flag, name in CPU_FEATURES.items() if flag in flags) or 'no AVX2'})"


def machine_info() -> dict:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpus": os.cpu_count(), "cpu": cpu_name(), "memory_gb": round(memory / 2**30, 1),
            "load_before": round(os.getloadavg()[0], 2)}


def notes_for(report: Report, args: argparse.Namespace) -> list[str]:
    notes = []
    if report.engines:
        fastest = max(report.engines, key=lambda e: e.decode_tokens_per_s)
        quickest = min(report.engines, key=lambda e: sum(t.ttft_s for t in e.turns))
        notes.append(f"Fastest decode: {fastest.engine}; least total time to first token over "
                     f"{report.turns} turns: {quickest.engine}.")
    for e in report.engines:
        fastest_start = min(e.starts, key=lambda s: s.load_s + s.first_token_s)
        loads = [t.load_avg for t in e.turns]
        notes.append(f"{e.engine}: quickest start to a first token is {fastest_start.cache} "
                     f"({fastest_start.load_s + fastest_start.first_token_s:.1f} s); 1-minute load average "
                     f"during its turns {min(loads, default=0):.1f} to {max(loads, default=0):.1f} "
                     f"on {report.machine['cpus']} cores.")
    if args.phi3_shaped:
        notes.append("Phi-3-mini-4k-instruct sizes (hidden 3072, MLP 8192, 32 layers, 32 heads, 4096 "
                     "positions, vocabulary 32064), random weights, Phi-3's own tokenizer and chat template; "
                     "exported "
                     f"with the sidebar preset \"{args.preset}\" ({Path(report.folder).name}).")
    if report.http and any(t.answer_tokens < report.answer_tokens for t in report.http.turns):
        notes.append("Over HTTP the answer length cannot be forced (the API has no min_new_tokens); "
                     "some answers ended early, see the JSON.")
    elif report.http and any(t.answer_tokens != report.answer_tokens for t in report.http.turns):
        notes.append("HTTP answer tokens are counted by re-tokenising the text the client received, "
                     "which can differ slightly from the tokens generated.")
    return notes


def parse_args(argv: list[str]) -> argparse.Namespace:
    from phi3ui.settings import PRESETS

    parser = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--phi3-shaped", action="store_true",
                        help="a Phi-3-mini-shaped model with random weights, built and exported once "
                             "(default: the bundled SmolLM2-135M)")
    parser.add_argument("--preset", default=PRESETS[0], choices=PRESETS,
                        help=f"the sidebar's export preset to measure (default: {PRESETS[0]})")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated (default: both)")
    parser.add_argument("--turns", type=int, default=10, choices=range(1, len(MESSAGES) + 1), metavar="N",
                        help=f"conversation turns, 1 to {len(MESSAGES)} (default 10)")
    parser.add_argument("--tokens", type=int, default=48, help="answer length in tokens (default 48)")
    parser.add_argument("--no-http", action="store_true", help="skip the run through the app over HTTP")
    parser.add_argument("--bandwidth-mb", type=int, default=1024, help="array read for the bandwidth (MB)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if bad := [e for e in args.engines if e not in ENGINES]:
        parser.error(f"unknown engine(s): {', '.join(bad)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    model, label, app_model, folder = resolve_model(args)
    print(f"Measuring memory bandwidth ({args.bandwidth_mb} MB)…", file=sys.stderr, flush=True)
    bandwidth = measure_bandwidth(args.bandwidth_mb)
    weight_bytes = (folder / "openvino_model.bin").stat().st_size
    report = Report(
        label=label, model=model, folder=str(folder),
        weight_bytes=weight_bytes, date=time.strftime("%Y-%m-%d %H:%M %Z"),
        command=("python -m bench.bench " + shlex.join(argv)).strip(), turns=args.turns, answer_tokens=args.tokens,
        machine=machine, bandwidth=bandwidth,
        limit_ms_per_token=round(weight_bytes / (bandwidth.gb_per_s * 1e9) * 1000, 2),
        limit_tokens_per_s=round(bandwidth.gb_per_s * 1e9 / weight_bytes, 2),
    )
    answers: dict[str, list[str]] = {}
    for engine in args.engines:
        run, answers[engine] = bench_engine(folder, engine, args.turns, args.tokens, report.limit_tokens_per_s)
        report.engines.append(run)
    if not args.no_http:
        genai = next((e for e in report.engines if e.engine == "genai"), None)
        report.http = bench_http(app_model, folder, args.turns, args.tokens, genai, answers.get("genai", []),
                                 Path(tempfile.gettempdir()) / f"phi3ui-bench-{label}-app.log")
    machine["load_after"] = round(os.getloadavg()[0], 2)
    # Busy if, besides this run, something else kept a core busy (load average counts us too).
    machine["shared"] = max(machine["load_before"], machine["load_after"] - 1) >= 0.5
    report.targets = targets(report)
    report.notes = notes_for(report, args)
    json_path, png_path = args.out / f"{label}.json", args.out / f"{label}.png"
    json_path.write_text(json.dumps(asdict(report), indent=2, ensure_ascii=False))
    plot(report, png_path)
    snippet = write_section(args.out)
    print(table(report))
    print(f"Wrote {json_path}, {png_path}, {snippet}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
