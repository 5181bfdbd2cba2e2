"""The memory of a chat that fills the window, beside llama.cpp's, on the Phi-3-mini shape.

Each configuration is a server of its own, started, driven and stopped in turn: phi3ui
(`python app.py --model EXPORT`, with one export preset, `--concurrency` and KV cache
precision) and llama.cpp's own OpenAI-compatible server (`python -m llama_cpp.server`, the
same weights as GGUF Q4_0, `n_ctx` 4096, its default f16 KV cache, 2 threads). The same
three-turn chat goes through each one's `/v1` with the `openai` client: a first message of
about 3,650 tokens, then two short ones, 32 new tokens an answer, ending near 3,900 tokens
of the 4,096-token window. The server process's `/proc/PID/smaps_rollup` is read every
0.2 s: resident memory (Rss) and its anonymous part (the rest is file pages: mapped
weights), once ready, after each turn and at the peak.

    python -m bench.memory                                  # every configuration, ~40 minutes
    python -m bench.memory --configs default-1,llama        # some of them
    python -m bench.memory --breakdown                      # where the memory goes, ~5 minutes

`--breakdown` loads the default export with openvino-genai's LLMPipeline directly (no app)
and reads a two-turn chat (768, then 1,024 tokens) in several ways: in one piece into a
cache grown as needed (phi3ui before), in 256-token pieces into a fixed cache (phi3ui now),
with a 4-bit KV cache, in 128-token pieces. It reports the mapped weights file, the plugin's
own copy of the weights, and what each turn added.

Writes bench/results/memory.json and .md (`--breakdown`: memory-breakdown.json and .md).
Needs llama-cpp-python[server] (requirements-bench.txt) for the llama.cpp row; its GGUF is
bench/decode.py's `phi3_gguf()`. Not a test: nothing asserts a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.bench import MESSAGES, cpu_name
from bench.decode import ASYM_CW_R1, model_export, phi3_gguf
from tests.app_process import ROOT, AppProcess, free_port
from tests.waiting import wait_until

RESULTS = ROOT / "bench" / "results"
FIRST_TOKENS = 3650  # the first message, about
NEW_TOKENS = 32
GB = 2**30


@dataclass(frozen=True)
class Config:
    name: str
    about: str
    export: dict | None = None  # over the default export; None: the default export ("most accurate")
    concurrency: int = 1
    kv: str = ""  # --kv-cache-precision
    llama: bool = False


CONFIGS = {c.name: c for c in (
    Config("default-1", "phi3ui, default export (int4 sym g128, ratio 0.6), --concurrency 1"),
    Config("default-4", "phi3ui, default export, --concurrency 4 (a public server's default: batching)",
           concurrency=4),
    Config("default-1-u4", "phi3ui, default export, --concurrency 1, --kv-cache-precision u4", kv="u4"),
    Config("fastest-1", "phi3ui, \"fastest decode\" preset (int4 asym per channel, ratio 1.0), --concurrency 1",
           ASYM_CW_R1),
    Config("fastest-4", "phi3ui, \"fastest decode\" preset, --concurrency 4", ASYM_CW_R1, concurrency=4),
    Config("fastest-1-u4", "phi3ui, \"fastest decode\" preset, --concurrency 1, --kv-cache-precision u4",
           ASYM_CW_R1, kv="u4"),
    Config("llama", "llama.cpp (llama-cpp-python server), Q4_0, n_ctx 4096, f16 KV cache, 2 threads", llama=True),
)}


@dataclass
class Memory:
    rss: float  # GB
    anon: float

    def text(self) -> str:
        return f"{self.rss:.2f} / {self.anon:.2f}"


def rollup(pid: int | str = "self") -> Memory:
    fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M))
    return Memory(int(fields["Rss"]) * 1024 / GB, int(fields["Anonymous"]) * 1024 / GB)


class PeakMemory:
    """The highest resident and anonymous memory of a process, sampled in a thread."""

    def __init__(self, pid: int | str = "self", every_s: float = 0.2):
        self.pid, self.every_s = pid, every_s
        self.peak = rollup(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(self.every_s):
            try:
                now = rollup(self.pid)
            except OSError:
                return
            self.peak = Memory(max(self.peak.rss, now.rss), max(self.peak.anon, now.anon))

    def stop(self) -> Memory:
        self._done.set()
        self._thread.join()
        return self.peak


@dataclass
class Turn:
    prompt_tokens: int
    seconds: float
    memory: Memory


@dataclass
class Run:
    config: Config
    command: str
    disk_gb: float
    ready: Memory
    turns: list[Turn] = field(default_factory=list)
    peak: Memory | None = None
    when: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))

    @property
    def full(self) -> Memory:
        return self.turns[-1].memory


def first_message(tokens: int) -> str:
    """About `tokens` tokens of plain English (four characters a token, as Phi-3's
    vocabulary reads such text): bench.py's chat messages, over and over."""
    text, i = "", 0
    while len(text) < tokens * 4:
        text += MESSAGES[i % len(MESSAGES)] + "\n\n"
        i += 1
    return "Here are my notes from this year; read them, then answer my questions.\n\n" + text


def chat(base_url: str, pid: int) -> list[Turn]:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="none", timeout=3600)
    model = client.models.list().data[0].id
    history: list[dict] = []
    turns = []
    for text in (first_message(FIRST_TOKENS), MESSAGES[3], MESSAGES[4]):
        history.append({"role": "user", "content": text})
        start = time.perf_counter()
        reply = client.chat.completions.create(model=model, messages=history, max_tokens=NEW_TOKENS,
                                               temperature=0)
        seconds = time.perf_counter() - start
        history.append({"role": "assistant", "content": reply.choices[0].message.content or ""})
        time.sleep(1)  # let freed buffers settle before reading the steady figure
        turns.append(Turn(reply.usage.prompt_tokens, round(seconds, 1), rollup(pid)))
        print(f"  turn {len(turns)}: {reply.usage.prompt_tokens} prompt tokens, {seconds:.0f} s, "
              f"{turns[-1].memory.text()} GB", flush=True)
    return turns


def run_phi3ui(config: Config) -> Run:
    folder = model_export("phi3", config.export)
    args = ["--model", str(folder), "--concurrency", str(config.concurrency), "--max-message-chars", "60000"]
    if config.kv:
        args += ["--kv-cache-precision", config.kv]
    app = AppProcess(*args).wait_ready(timeout=1800)
    try:
        time.sleep(1)
        run = Run(config, "python app.py " + " ".join(args).replace(str(folder), "EXPORT"),
                  sum(p.stat().st_size for p in folder.glob("*.bin")) / GB, rollup(app.process.pid))
        peak = PeakMemory(app.process.pid)
        run.turns = chat(app.url + "v1", app.process.pid)
        run.peak = peak.stop()
        return run
    finally:
        app.stop()


def run_llama(config: Config) -> Run:
    gguf, port = phi3_gguf(), free_port()
    args = ["--model", str(gguf), "--n_ctx", "4096", "--n_threads", "2", "--n_threads_batch", "2",
            "--port", str(port), "--host", "127.0.0.1"]
    log = (Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{port}.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        import httpx

        def up() -> bool:
            assert server.poll() is None, Path(log.name).read_text()[-2000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 600, "llama.cpp's server to answer", every_s=0.5)
        time.sleep(1)
        run = Run(config, "python -m llama_cpp.server " + " ".join(args).replace(str(gguf), "GGUF")
                  .replace(f"--port {port}", "--port PORT"),
                  gguf.stat().st_size / GB, rollup(server.pid))
        peak = PeakMemory(server.pid)
        run.turns = chat(f"http://127.0.0.1:{port}/v1", server.pid)
        run.peak = peak.stop()
        return run
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def markdown(runs: list[Run], when: str) -> str:
    rows = []
    for r in runs:
        first = r.turns[0]
        rows.append(f"| {r.config.about} | {r.disk_gb:.2f} GB | {r.ready.text()} | {r.full.text()} | "
                    f"{r.peak.text()} | {r.turns[-1].prompt_tokens + NEW_TOKENS} | {first.seconds:.0f} s |")
    return "\n".join([
        "## Memory of a chat that fills the window", "",
        f"{when}, {cpu_name()}, 2 cores. The Phi-3-mini shape (random weights, real sizes). Resident / anonymous memory of the server process in "
        "GB (`/proc/PID/smaps_rollup`): once ready, after the last of three turns (the window then holds the "
        "tokens shown, of 4,096) and the highest seen in between. Resident minus anonymous is file pages: mapped "
        "weights. The last column is the first turn: reading its whole prompt and 32 new tokens. "
        "`python -m bench.memory`.", "",
        "| configuration | weights on disk | ready | full window | peak | tokens in the window | first turn |",
        "|---|---|---|---|---|---|---|", *rows, "",
        "Commands (and when each ran): " + "; ".join(f"{r.config.name}: `{r.command}` ({r.when})" for r in runs),
        ""])


# --- where the memory goes -----------------------------------------------------------------
U4 = {"KEY_CACHE_PRECISION": "u4", "VALUE_CACHE_PRECISION": "u4"}
ONE_PIECE = 1 << 30
# name: (tokens read at a time, a fixed cache of one window or one grown as needed, properties)
BREAKDOWN = {
    "one piece, grown cache (phi3ui before)": (ONE_PIECE, False, {}),
    "256-token pieces, grown cache": (256, False, {}),
    "256-token pieces, fixed cache (phi3ui now)": (256, True, {}),
    "256-token pieces, fixed cache, u4": (256, True, U4),
    "128-token pieces, fixed cache, u4": (128, True, U4),
}
BREAKDOWN_TOKENS = (768, 1024)  # a first prompt, then the same with more: a chat's second turn
WINDOW = 4096


def breakdown_child(folder: str, name: str) -> dict:
    """One LLMPipeline, in this process: memory at each step of a two-turn chat."""
    import openvino_genai as ov_genai

    from phi3ui import mapped_files
    from phi3ui.genai_engine import kv_cache_blocks

    chunk, fixed, properties = BREAKDOWN[name]
    scheduler = ov_genai.SchedulerConfig()
    scheduler.enable_prefix_caching, scheduler.max_num_batched_tokens = True, chunk
    if fixed:
        scheduler.num_kv_blocks = kv_cache_blocks(WINDOW, 1, "CPU")
    start = rollup()
    pipe = ov_genai.LLMPipeline(folder, "CPU", scheduler_config=scheduler, PERFORMANCE_HINT="LATENCY",
                                NUM_STREAMS="1", **properties)
    config = pipe.get_generation_config()
    config.apply_chat_template, config.max_new_tokens, config.min_new_tokens = False, 4, 4
    pipe.generate("Hello there, how are you?", config)
    warm, mapped = rollup(), mapped_files.resident_bytes(Path(folder)) / GB
    mapped_files.release(Path(folder))
    released = rollup()
    tokenizer = pipe.get_tokenizer()
    ids = [int(i) for i in tokenizer.encode(first_message(max(BREAKDOWN_TOKENS)),
                                            add_special_tokens=False).input_ids.data[0]]
    peak, turns, seconds = PeakMemory(), [], 0.0
    for tokens in BREAKDOWN_TOKENS:
        began = time.perf_counter()
        pipe.generate(tokenizer.decode(ids[:tokens]), config)
        seconds += time.perf_counter() - began
        time.sleep(1)
        turns.append(asdict(rollup()))
    return {"name": name, "start": asdict(start), "warm": asdict(warm), "mapped_weights_gb": mapped,
            "released": asdict(released), "turns": turns, "peak": asdict(peak.stop()),
            "prompt_tokens": list(BREAKDOWN_TOKENS), "prompt_s": round(seconds, 1),
            "still_mapped_gb": mapped_files.resident_bytes(Path(folder)) / GB}


def breakdown() -> str:
    folder = model_export("phi3", None)
    rows, results = [], []
    for name in BREAKDOWN:
        out = subprocess.run([sys.executable, "-m", "bench.memory", "--breakdown-child", str(folder), name],
                             capture_output=True, text=True, check=True, cwd=ROOT).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
        print(json.dumps(r), flush=True)
        own_copy = r["released"]["anon"] - r["start"]["anon"]
        first, second = (t["anon"] - r["released"]["anon"] for t in r["turns"])
        rows.append(f"| {name} | {r['mapped_weights_gb']:.2f} GB | {own_copy:.2f} GB | {first:.2f} GB | "
                    f"{second:.2f} GB ({second * GB / BREAKDOWN_TOKENS[-1] / 1024:.0f} KB a token) | "
                    f"{r['still_mapped_gb']:.2f} GB | {r['prompt_s']:.0f} s |")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory-breakdown.json").write_text(json.dumps({"when": when, "runs": results}, indent=2))
    first, second = BREAKDOWN_TOKENS
    text = "\n".join([
        "## Where the memory goes", "",
        f"{when}, {cpu_name()}. openvino-genai's LLMPipeline on the default export of the Phi-3-mini shape, in a process of its own "
        f"(no app), after a warm-up: a {first}-token prompt, then the same prompt grown to {second} tokens (a "
        "chat's next turn, its start read from the prefix cache), 4 new tokens each. Mapped weights: the "
        "export's file pages resident once warmed up (then handed back); own copy: the anonymous memory the load "
        "and warm-up added (the CPU plugin's repacked weights and its runtime); then the anonymous memory each "
        "turn added over that (KV cache and the plugin's working buffers); after the chat: the weights file's "
        "pages resident again. `python -m bench.memory --breakdown`.", "",
        f"| prompt read in | mapped weights | own copy | after {first} tokens | after {second} tokens | "
        "weights file after | both prompts' time |",
        "|---|---|---|---|---|---|---|", *rows, ""])
    (RESULTS / "memory-breakdown.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"from {', '.join(CONFIGS)}")
    parser.add_argument("--breakdown", action="store_true", help="where the memory goes (LLMPipeline alone)")
    parser.add_argument("--breakdown-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.breakdown_child:
        print(json.dumps(breakdown_child(*args.breakdown_child)))
        return 0
    if args.breakdown:
        print(breakdown())
        return 0
    for name in args.configs.split(","):
        config = CONFIGS[name]
        print(f"{name}: {config.about}", flush=True)
        run = run_llama(config) if config.llama else run_phi3ui(config)
        print(f"  ready {run.ready.text()} GB, peak {run.peak.text()} GB", flush=True)
        text = save(merged([run], RESULTS / "memory.json"))  # each run kept as soon as it is done
    print(text)
    return 0


def save(runs: list[Run]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps({"when": when, "cpu": cpu_name(), "runs": [
        {**asdict(r), "full": asdict(r.full)} for r in runs]}, indent=2))
    text = markdown(runs, when)
    (RESULTS / "memory.md").write_text(text)
    return text


def merged(runs: list[Run], path: Path) -> list[Run]:
    """These runs, and those of other configurations kept from the last results (a rerun
    of some configurations replaces only theirs), in the order of CONFIGS."""
    by_name = {}
    if path.exists():
        data = json.loads(path.read_text())
        for old in data["runs"]:
            config = CONFIGS.get(old["config"]["name"]) or Config(**old["config"])  # today's wording
            by_name[config.name] = Run(config, old["command"], old["disk_gb"], Memory(**old["ready"]),
                                       [Turn(t["prompt_tokens"], t["seconds"], Memory(**t["memory"]))
                                        for t in old["turns"]], Memory(**old["peak"]), old.get("when", data["when"]))
    by_name.update({r.config.name: r for r in runs})
    return [by_name[name] for name in CONFIGS if name in by_name]


if __name__ == "__main__":
    raise SystemExit(main())
