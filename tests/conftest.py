"""Shared fixtures. Exports are expensive, so they are built once and cached on disk by
model and settings (the app's own cache, `PHI3UI_HOME`); everything else is cheap.

Markers: `slow` (exports and real inference), `server` (the app as a subprocess),
`browser` (headless Chromium). `pytest -m "not slow and not server and not browser"` runs
only the fast unit tests.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "bench"))  # app_process.py and quality.py, shared with bench/

from app_process import AppProcess  # noqa: E402
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
