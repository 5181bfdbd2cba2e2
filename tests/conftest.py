"""Shared fixtures. Exports are expensive, so they are built once and cached on disk by
model and settings, in a test cache folder (`PHI3UI_TEST_HOME`, default
`~/.cache/phi3ui-tests`), never the user's own; everything else is cheap.

Markers: `slow` (exports and real inference), `server` (the app as a subprocess),
`browser` (headless Chromium). `pytest -m "not slow and not server and not browser"` runs
only the fast unit tests. `bench` marks the tests of the benchmark code in bench/ (the only
tests that import bench/). The README's screenshots are a script: `python -m tests.screenshots`.

The tests never use the network, with or without it: the Hugging Face hub is offline for
this process and the apps it starts, so a missing model falls back the same way everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

os.environ["PHI3UI_HOME"] = os.environ.get("PHI3UI_TEST_HOME") or str(Path.home() / ".cache" / "phi3ui-tests")
os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is imported: set before anything imports it
for name in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ[name] = "False" if name.startswith("GRADIO") else "1"

from tests.app_process import AppProcess  # noqa: E402
from phi3ui.engines import Engine, load_engine  # noqa: E402
from phi3ui.export import Exported, ensure_exported  # noqa: E402
from phi3ui.settings import BUNDLED, LOCAL_ENGINES, ExportSettings, RuntimeSettings, cache_root  # noqa: E402
from tests.phi3_fixtures import make_phi3_tokenizer, make_tiny_longrope_phi3, make_tiny_phi3  # noqa: E402

ENGINE_NAMES = LOCAL_ENGINES
TINY_PHI3_VERSION = "2"  # bump when phi3_fixtures changes what it builds
TINY_LONGROPE_PHI3_VERSION = "1"  # the same for make_tiny_longrope_phi3
# int8 per channel stores the tiny LongRoPE model's grid weights exactly and keeps the rotary
# factors in f32 (fp16 rounds those: phi3ui/rope.py), so its logits can match transformers'.
LONGROPE_EXPORT = ExportSettings(weight_format="int8")


def pytest_configure(config: pytest.Config) -> None:
    for marker, text in {
        "slow": "exports a model or runs real inference",
        "server": "starts the app as a subprocess",
        "browser": "drives the page in headless Chromium",
        "bench": "tests the benchmark code in bench/ (CI runs them with the rest; `-m \"not bench\"` leaves them out)",
    }.items():
        config.addinivalue_line("markers", f"{marker}: {text}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with browser tests first, then those starting apps, then the other slow ones, the
    unit tests last: on two workers (`-n 2`, a file each with --dist loadfile) the short files
    then fill the end of the run, rather than one long file running alone. Within a file the
    order stays (the sort is stable)."""
    ranks = ("browser", "server", "slow")
    rank: dict[Path, int] = {}
    for item in items:
        mine = next((i for i, marker in enumerate(ranks) if item.get_closest_marker(marker)), len(ranks))
        rank[item.path] = min(rank.get(item.path, len(ranks)), mine)
    items.sort(key=lambda item: rank[item.path])


PHASES = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, pytest.TestReport,
                                                                                     pytest.TestReport]:
    """Keeps the report of each phase of a test on it, for fixtures that look back (`failed`)."""
    report = yield
    item.stash.setdefault(PHASES, {})[report.when] = report
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    """In a fixture's teardown: whether the setup or the body of its test failed."""
    return any(report.failed for report in request.node.stash.get(PHASES, {}).values())


@pytest.fixture(scope="session")
def phi3_tokenizer(tmp_path_factory):
    """A real tokenizer with Phi-3's special tokens and chat template."""
    return make_phi3_tokenizer(tmp_path_factory.mktemp("phi3-tokenizer"))


def cached_source(name: str, make: Callable[[Path], object]) -> Path:
    """A Hugging Face folder `make` builds once, kept where the export cache can key it."""
    dest = cache_root() / "test-sources" / name
    if not (dest / "config.json").exists():
        make(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_phi3_source() -> Path:
    """A tiny random Phi-3 as a Hugging Face folder."""
    return cached_source(f"tiny-phi3-v{TINY_PHI3_VERSION}", make_tiny_phi3)


@pytest.fixture(scope="session")
def tiny_phi3(tiny_phi3_source: Path) -> Exported:
    """The tiny Phi-3 exported through the app's own path with the default int4 settings."""
    return ensure_exported(str(tiny_phi3_source), ExportSettings())


@pytest.fixture(scope="session")
def tiny_longrope_phi3_source() -> Path:
    """A tiny random Phi-3 with Phi-3-mini-128k's LongRoPE settings, as a Hugging Face folder."""
    return cached_source(f"tiny-longrope-phi3-v{TINY_LONGROPE_PHI3_VERSION}", make_tiny_longrope_phi3)


@pytest.fixture(scope="session")
def tiny_longrope_phi3(tiny_longrope_phi3_source: Path) -> Exported:
    """The tiny LongRoPE Phi-3 exported through the app's own path, int8 (lossless for it)."""
    return ensure_exported(str(tiny_longrope_phi3_source), LONGROPE_EXPORT)


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


class KeptApps:
    """The apps tests share, started once per argument list and kept while this worker's
    next file uses them too. Each file asks again (the fixtures are per module): a session
    fixture would be ended by pytest whenever its engine parameter changes, which on two
    workers (`--dist loadfile`) is in every file, yet kept across a file that does not use it,
    after it was stopped here. An idle app is not free (Gradio's queue polls every
    millisecond), so at each new file the apps it does not use are stopped."""

    def __init__(self) -> None:
        self.apps: dict[tuple[str, ...], tuple[str, AppProcess]] = {}

    def get(self, fixture: str, *args: str) -> AppProcess:
        kept = self.apps.get(args)
        if kept is None or kept[1].process.poll() is not None:  # never started, or it ended
            self.apps[args] = fixture, AppProcess(*args).wait_ready()
        return self.apps[args][1]

    def keep_only(self, fixtures: set[str]) -> None:
        for args, (fixture, app) in list(self.apps.items()):
            if fixture not in fixtures:
                del self.apps[args]
                app.stop()


KEPT_APPS = KeptApps()


@pytest.hookimpl(trylast=True)  # after the file's own fixtures, which may still use an app, are torn down
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After a file's last test, keep only the apps the next file uses (xdist tells a
    worker its next test)."""
    if nextitem is None or nextitem.path != item.path:
        after = {name for other in item.session.items if nextitem and other.path == nextitem.path
                 for name in getattr(other, "fixturenames", ())}
        KEPT_APPS.keep_only(after)


def pytest_sessionfinish() -> None:
    KEPT_APPS.keep_only(set())  # also when the run was cut short


@pytest.fixture(scope="module")
def app_server(bundled: Exported, engine_name: str) -> AppProcess:
    """The real app on the bundled model, once per engine."""
    return KEPT_APPS.get("app_server", "--model", BUNDLED, "--engine", engine_name)


CHAT_PRESETS = Path(__file__).parent / "data" / "chat_presets.json"  # a host's chat presets, "Brief" and "Pirate"


@pytest.fixture(scope="module")
def browser_app(bundled: Exported, engine_name: str) -> AppProcess:
    """The app for browser tests, on each engine, with a 200-character message limit so an
    over-long message is quick to type, and the host's chat presets in CHAT_PRESETS."""
    return KEPT_APPS.get("browser_app", "--model", BUNDLED, "--engine", engine_name, "--max-message-chars", "200",
                         "--chat-presets", str(CHAT_PRESETS))


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser() -> Iterator:
    """One headless Chromium for every browser test: Playwright's sync API allows one
    instance per thread, so this lives here rather than in a test module."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        message = "Chromium is not installed: bash scripts/install.sh --test (or apt-get install chromium)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
