"""Shared fixtures. Exports are expensive, so they are built once and cached on disk by
model and settings (the app's own cache, `PHI3UI_HOME`); everything else is cheap.

Markers: `slow` (exports and real inference), `server` (the app as a subprocess),
`browser` (headless Chromium). `pytest -m "not slow and not server and not browser"` runs
only the fast unit tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from phi3_fixtures import make_phi3_tokenizer, make_tiny_phi3  # noqa: E402

from phi3ui.engines import Engine, load_engine  # noqa: E402
from phi3ui.export import Exported, ensure_exported  # noqa: E402
from phi3ui.settings import BUNDLED, ExportSettings, RuntimeSettings, cache_root  # noqa: E402

ENGINE_NAMES = ("genai", "optimum")
TINY_PHI3_VERSION = "1"  # bump when phi3_fixtures changes what it builds


def pytest_configure(config: pytest.Config) -> None:
    for marker, text in {
        "slow": "exports a model or runs real inference",
        "server": "starts the app as a subprocess",
        "browser": "drives the page in headless Chromium",
    }.items():
        config.addinivalue_line("markers", f"{marker}: {text}")


@pytest.fixture(scope="session")
def phi3_tokenizer(tmp_path_factory):
    """A real tokenizer with Phi-3's special tokens and chat template."""
    return make_phi3_tokenizer(tmp_path_factory.mktemp("phi3-tokenizer"))


@pytest.fixture(scope="session")
def tiny_phi3_source() -> Path:
    """A tiny random Phi-3 as a Hugging Face folder, kept where the export cache can key it."""
    dest = cache_root() / "test-sources" / f"tiny-phi3-v{TINY_PHI3_VERSION}"
    if not (dest / "config.json").exists():
        make_tiny_phi3(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_phi3(tiny_phi3_source: Path) -> Exported:
    """The tiny Phi-3 exported through the app's own path with the default int4 settings."""
    return ensure_exported(str(tiny_phi3_source), ExportSettings())


@pytest.fixture(scope="session")
def bundled() -> Exported:
    return ensure_exported(BUNDLED)


@pytest.fixture(scope="session", params=ENGINE_NAMES)
def engine_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def bundled_engine(bundled: Exported, engine_name: str) -> Engine:
    """The bundled model on each engine, loaded once per engine."""
    return load_engine(bundled.folder, RuntimeSettings(engine=engine_name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """`python app.py ...` on a free loopback port, with its log kept for failures."""

    def __init__(self, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"phi3ui-app-{self.port}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--port", str(self.port), *args],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 300) -> AppProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app exited with {self.process.returncode}:\n{self.output()}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"app did not start in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="session")
def app_server(bundled: Exported, engine_name: str) -> Iterator[AppProcess]:
    """The real app on the bundled model, once per engine."""
    app = AppProcess("--model", BUNDLED, "--engine", engine_name).wait_ready()
    yield app
    app.stop()


@pytest.fixture(scope="session")
def browser_app(bundled: Exported, engine_name: str) -> Iterator[AppProcess]:
    """The app for browser tests, on each engine, with a 200-character message limit so an
    over-long message is quick to type."""
    app = AppProcess("--model", BUNDLED, "--engine", engine_name, "--max-message-chars", "200").wait_ready()
    yield app
    app.stop()
