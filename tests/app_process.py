"""The app as a child process on a free loopback port, and two clients of it (raw `/chat`,
streamed `/v1`): for the tests and the benchmarks (`from tests.app_process import AppProcess`)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_mb(pid: int) -> float:
    """A live process's peak RSS, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_ticks(pid: int) -> int:
    """A live process's user and system CPU time so far, in clock ticks
    (`os.sysconf("SC_CLK_TCK")` a second), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class AppProcess:
    """`python app.py ...`, its output kept in a log file for failures."""

    # How often a start is looked at: every poll it waits is time lost, at each of the suite's
    # thirty-odd starts (a failed connection or a /health answer costs the app next to nothing).
    POLL_S = 0.05

    def __init__(self, *args: str, env: dict | None = None, log_path: Path | None = None, root: Path = ROOT):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"phi3ui-app-{self.port}.log"
        self.log = self.log_path.open("w")
        self.started = time.perf_counter()
        self.startup_s = self.page_s = 0.0
        self.process = subprocess.Popen(
            [sys.executable, str(root / "app.py"), "--port", str(self.port), *args],
            cwd=root, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )

    def wait_page(self, timeout: float = 300) -> AppProcess:
        """Return once the page answers (the model may still be being prepared); `page_s` is
        how long that took."""
        wait_until(self._answers, timeout, lambda: f"the app to serve its page:\n{self.output()}",
                   every_s=self.POLL_S)
        self.page_s = time.perf_counter() - self.started
        return self

    def wait_ready(self, timeout: float = 900) -> AppProcess:
        """Return once the model is loaded and answers (`/health` says "ok"); `startup_s` is
        how long that took (the benchmarks report it; the timeout only guards against a hang)."""
        self.wait_page(timeout)
        wait_until(self._model_ready, timeout, lambda: f"the model to be ready:\n{self.output()}",
                   every_s=self.POLL_S)
        self.startup_s = time.perf_counter() - self.started
        return self

    def health(self) -> tuple[int, dict]:
        response = httpx.get(self.url + "health", timeout=10)
        return response.status_code, response.json()

    def _model_ready(self) -> bool:
        """Whether /health says the model answers; a start that failed never will."""
        self._check_running()
        try:
            status, body = self.health()
        except httpx.TimeoutException:
            # The batching engine's first step holds Python's lock while it compiles (openvino-genai
            # 2026.4's step() does not release it), seconds on the Phi-3 shape: still preparing.
            return False
        if body.get("status") == "failed":
            raise RuntimeError(f"the app could not load its model: {body.get('reason')}\n{self.output()}")
        return status == 200 or body.get("status") == "unavailable"  # a remote engine that is down still serves

    def _answers(self) -> bool:
        """Whether the page answers yet."""
        self._check_running()
        try:
            urllib.request.urlopen(self.url, timeout=2).close()
        except OSError:
            return False
        return True

    def _check_running(self) -> None:
        """An app that has exited will never answer: say so at once, with its output."""
        if self.process.poll() is not None:
            raise RuntimeError(f"app exited with {self.process.returncode}:\n{self.output()}")

    def stages(self) -> list[str]:
        """The stages of the model's preparation the app announced, in order, as 'Name k/n'."""
        return [f"{name} {k}/{n}" for name, k, n in
                re.findall(r"INFO (\w[\w ]*?) \S+ \(stage (\d+) of (\d+),", self.output())]

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> float:
        """Stop the app; its peak RSS in MB (0 if it had already exited)."""
        peak = vm_hwm_mb(self.process.pid) if self.process.poll() is None else 0.0
        end_process(self.process)
        self.log.close()
        return peak


def end_process(process: subprocess.Popen, grace_s: float = 30) -> None:
    """Ask a child process to end, and kill it if it has not within `grace_s`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- clients, as a script (not a browser) sends requests -------------------------------------
KEY = "burst-test-key"
QUESTION = "What is the capital of France?"
# /chat's other arguments, in order: temperature, top-p, top-k, repetition penalty, seed, system prompt,
# JSON schema (a raw call must send every one).
DEFAULTS = [0.0, 1.0, 50, 1.0, None, "", ""]


@dataclass
class Reply:
    """One request as its client saw it (times from a shared monotonic clock)."""

    text: str = ""
    error: str | None = None
    sent: float = 0.0
    first: float | None = None  # first text
    ended: float = 0.0

    @property
    def ttft_s(self) -> float | None:
        return None if self.first is None else self.first - self.sent


def ask_chat(url: str, address: str, message: str = QUESTION, tokens: int = 16, reply: Reply | None = None) -> Reply:
    """One `/chat` call as a client behind a proxy (raw HTTP, as a script would send it).
    `reply`, when given, is filled in as the answer streams, so another thread can watch it."""
    headers = {"X-Forwarded-For": address}
    reply = Reply() if reply is None else reply
    reply.sent = time.monotonic()
    with httpx.Client(timeout=300) as http:
        joined = http.post(f"{url}gradio_api/call/chat", json={"data": [message, [], tokens, *DEFAULTS]},
                           headers=headers)
        if joined.status_code != 200:
            reply.error, reply.ended = f"HTTP {joined.status_code}: {joined.text}", time.monotonic()
            return reply
        kind = ""
        with http.stream("GET", f"{url}gradio_api/call/chat/{joined.json()['event_id']}", headers=headers) as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    data = json.loads(line.removeprefix("data:"))
                    if kind == "error":
                        reply.error = str(data)
                        break
                    if kind in ("generating", "complete") and data and data[0]:
                        reply.text = data[0]
                        reply.first = reply.first or time.monotonic()
                    if kind == "complete":
                        break
    reply.ended = time.monotonic()
    return reply


def ask_v1(url: str, address: str, message: str = QUESTION, tokens: int = 16, reply: Reply | None = None) -> Reply:
    """One streamed chat completion through the `openai` client; `reply` as for `ask_chat`."""
    import openai

    client = openai.OpenAI(base_url=f"{url}v1", api_key=KEY, max_retries=0, timeout=300,
                           default_headers={"X-Forwarded-For": address})
    reply = Reply() if reply is None else reply
    try:
        model = client.models.list().data[0].id
        reply.sent = time.monotonic()
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": message}],
                                                max_tokens=tokens, temperature=0, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                reply.text += chunk.choices[0].delta.content
                reply.first = reply.first or time.monotonic()
    except openai.APIError as exc:
        reply.error = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
    finally:
        client.close()
    reply.ended = time.monotonic()
    return reply
