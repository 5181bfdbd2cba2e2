"""From nothing to chatting on the Phi-3-mini shape: how soon the page is served, how soon
the model answers, and how much memory the start takes, for three starts in a row:

- `cold`: an empty phi3ui cache, so the start exports the model (int4 defaults) from its
  Hugging Face folder on this disk (no download: the hub is out of reach here);
- `warm`: the same cache again, the export reused;
- `ready-made`: `--ready-made` with an empty Hugging Face cache, the OpenVINO export served
  as `OpenVINO/Phi-3-mini-4k-instruct-int4-ov` by tests/local_hub.py on loopback (a download
  at disk speed, not a network's), so no export runs.

Memory is the resident set of the app and its children (the optimum-cli export), summed and
sampled every 0.2 s; "ready" is the first `/health` 200.

    python -m bench.startup            # about 6 minutes, 12 GB of memory at the export's peak

Writes bench/results/startup.json and .md. Not a test (tests/test_startup.py checks what the
page, /health and the doors say during a start, not how long it takes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bench.bench import build_phi3_shaped, phi3_source
from phi3ui.progress import size_text
from phi3ui.settings import DEFAULT_MODEL, READY_MADE
from tests.app_process import ROOT, AppProcess
from tests.local_hub import LocalHub, ready_made_repo

RESULTS = ROOT / "bench" / "results"


@dataclass
class Start:
    name: str
    command: str
    page_s: float  # until the page answers
    ready_s: float  # until /health says ok
    peak_bytes: int  # the app and its children, summed
    ready_bytes: int  # the app once ready
    stages: list[str]


class TreeMemory:
    """The peak resident memory of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.2):
        self.process, self.every_s, self.peak = psutil.Process(pid), every_s, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def now(self) -> int:
        total = 0
        for process in (self.process, *self.process.children(recursive=True)):
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def _sample(self) -> None:
        while not self._done.wait(self.every_s):
            try:
                self.peak = max(self.peak, self.now())
            except psutil.NoSuchProcess:
                return

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def start(name: str, args: list[str], env: dict[str, str]) -> Start:
    app = AppProcess(*args, env=env)
    memory = TreeMemory(app.process.pid)
    try:
        app.wait_page()
        app.wait_ready(timeout=1800)
        ready_bytes = psutil.Process(app.process.pid).memory_info().rss
        peak = memory.stop()
        stages = [stage.rsplit(" ", 1)[0] for stage in app.stages()]
    finally:
        memory.stop()
        app.stop()
    shown = {k: ("<loopback hub>" if k == "HF_ENDPOINT" else v.replace(str(Path(v).parent), "$TMP") if "/" in v else v)
             for k, v in env.items()}
    command = " ".join([*(f"{k}={v}" for k, v in shown.items()), "python app.py", *args])
    return Start(name, command, round(app.page_s, 1), round(app.startup_s, 1), peak, ready_bytes, stages)


def markdown(starts: list[Start], source_bytes: int, when: str) -> str:
    rows = [f"| {s.name} | {s.page_s} s | {s.ready_s} s | {size_text(s.peak_bytes)} | {size_text(s.ready_bytes)} "
            f"| {' → '.join(s.stages) or '—'} |" for s in starts]
    return "\n".join([
        f"## From nothing to chatting ({when})", "",
        f"The Phi-3-mini shape ({size_text(source_bytes)} of bf16 weights on disk), default settings, 2 cores. "
        "Page: until the page answers; ready: until `/health` says ok (exported, loaded, warmed up). Peak: the "
        "app and its export child, resident, summed. Cold and warm start from the model's Hugging Face folder on "
        "this disk (no download: the hub is out of reach here); ready-made downloads over loopback from "
        "tests/local_hub.py, at disk speed rather than a network's. `python -m bench.startup`.", "",
        "| start | page | ready | peak memory | app once ready | stages |",
        "|---|---|---|---|---|---|", *rows, "",
        "Commands: " + "; ".join(f"{s.name}: `{s.command}`" for s in starts), ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    source = build_phi3_shaped(phi3_source())
    source_bytes = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    with tempfile.TemporaryDirectory(prefix="phi3ui-startup-") as tmp:
        home = {"PHI3UI_HOME": f"{tmp}/phi3ui", "HF_HOME": f"{tmp}/huggingface", "HF_HUB_OFFLINE": "1"}
        starts = [start("cold", ["--model", str(source)], home), start("warm", ["--model", str(source)], home)]
        exported = next(Path(f"{tmp}/phi3ui/models").glob("local-*/*"))
        with LocalHub({READY_MADE[DEFAULT_MODEL]: ready_made_repo(exported, Path(tmp) / "ready")}) as hub:
            env = {"PHI3UI_HOME": f"{tmp}/phi3ui-2", "HF_HOME": f"{tmp}/huggingface-2", "HF_HUB_OFFLINE": "0",
                   "HF_ENDPOINT": hub.url, "PHI3UI_READY_MADE": "1"}
            starts.append(start("ready-made", [], env))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(
        {"when": when, "source_bytes": source_bytes, "starts": [asdict(s) for s in starts]}, indent=2))
    (RESULTS / "startup.md").write_text(markdown(starts, source_bytes, when))
    print(markdown(starts, source_bytes, when))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
