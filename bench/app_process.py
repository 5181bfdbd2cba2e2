"""The app as a child process on a free loopback port: for the benchmarks and the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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


class AppProcess:
    """`python app.py ...`, its output kept in a log file for failures."""

    def __init__(self, *args: str, env: dict | None = None, log_path: Path | None = None, root: Path = ROOT):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"phi3ui-app-{self.port}.log"
        self.log = self.log_path.open("w")
        self.started = time.perf_counter()
        self.startup_s = 0.0
        self.process = subprocess.Popen(
            [sys.executable, str(root / "app.py"), "--port", str(self.port), *args],
            cwd=root, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 900) -> AppProcess:
        """Return once the page answers; `startup_s` is how long that took."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app exited with {self.process.returncode}:\n{self.output()}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                self.startup_s = time.perf_counter() - self.started
                return self
            except OSError:
                time.sleep(0.25)
        raise TimeoutError(f"app did not start in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> float:
        """Stop the app; its peak RSS in MB (0 if it had already exited)."""
        peak = vm_hwm_mb(self.process.pid) if self.process.poll() is None else 0.0
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        return peak
