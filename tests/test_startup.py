"""From nothing to chatting: the page is served at once while the model is downloaded,
exported and loaded, with its progress; `/v1` and `/chat` say 503 with Retry-After
meanwhile; an export that cannot fit is refused with the numbers; the ready-made OpenVINO
export is a download instead of an export; a Space's environment and its restart.

The hub here is tests/local_hub.py: local folders served to the real huggingface_hub
client, with the weights held half-sent so that the download is in progress for as long
as a test looks at it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from phi3ui.export import Exported
from phi3ui.fairness import PUBLIC_CONCURRENCY, PUBLIC_RATE_PER_MINUTE
from phi3ui.settings import DEFAULT_MODEL, READY_MADE
from tests.app_process import AppProcess
from tests.local_hub import LocalHub, ready_made_repo
from tests.waiting import wait_until

pytestmark = [pytest.mark.server, pytest.mark.slow]
READY = READY_MADE[DEFAULT_MODEL]
QUESTION = {"model": "any", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


def hub_env(hub: LocalHub, data: Path) -> dict[str, str]:
    """An app that downloads from `hub` into caches under `data` (empty at first)."""
    return {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(data / "huggingface"),
            "PHI3UI_HOME": str(data / "phi3ui"),
            "HF_HUB_DOWNLOAD_TIMEOUT": "600"}  # a held file waits for the test, not for a client timeout


@pytest.fixture(scope="module")
def ready_made(tiny_phi3: Exported, tmp_path_factory) -> Path:
    """A folder laid out as the hub's OpenVINO/Phi-3-mini-4k-instruct-int4-ov is, built from the
    tiny Phi-3's export."""
    folder = ready_made_repo(tiny_phi3.folder, tmp_path_factory.mktemp("ready-made"))
    assert {"openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml",
            "openvino_config.json", "config.json", "tokenizer.json", "README.md"} <= {p.name for p in folder.iterdir()}
    return folder


def preparing(app: AppProcess, stage: str) -> dict:
    """/health's body once it says the model is in `stage`."""
    def in_stage() -> dict:
        status, body = app.health()
        assert status in (200, 503)
        return body if body.get("progress", {}).get("stage") == stage else {}

    return wait_until(in_stage, 300, lambda: f"stage {stage!r}: {app.health()}\n{app.output()[-3000:]}", every_s=0.2)


def assert_not_ready_yet(app: AppProcess) -> None:
    """/v1 and raw /chat answer 503 with Retry-After and say why; gradio_client is told why."""
    v1 = httpx.post(app.url + "v1/chat/completions", json=QUESTION, timeout=30)
    assert v1.status_code == 503 and int(v1.headers["retry-after"]) > 0
    assert v1.json()["error"]["code"] == "model_not_loaded" and "not ready yet" in v1.json()["error"]["message"]
    chat = httpx.post(app.url + "gradio_api/call/chat", json={"data": ["Hi"]}, timeout=30)
    assert chat.status_code == 503 and int(chat.headers["retry-after"]) > 0
    assert "not ready yet" in chat.json()["error"]
    from gradio_client import Client

    with pytest.raises(Exception, match="not ready yet"):
        Client(app.url, verbose=False).predict("Hi", [], 4, api_name="/chat")


@pytest.mark.browser
def test_cold_start_serves_the_page_with_progress_then_the_chat(tiny_phi3_source: Path, tmp_path: Path,
                                                                 browser: Browser) -> None:
    with LocalHub({DEFAULT_MODEL: tiny_phi3_source}) as hub:
        hub.hold("model.safetensors")
        app = AppProcess(env=hub_env(hub, tmp_path)).wait_page()
        try:
            body = preparing(app, "Downloading")
            weights = (tiny_phi3_source / "model.safetensors").stat().st_size

            def weights_arriving() -> dict:
                progress = app.health()[1]["progress"]
                total, done = progress["bytes_total"], progress["bytes_done"]
                return progress if total >= weights and done > total - weights else {}

            progress = wait_until(weights_arriving, 120, lambda: f"the weights to arrive: {app.health()}")
            assert body["status"] == "preparing" and progress["bytes_done"] < progress["bytes_total"], "held half-way"
            assert (progress["stage"], progress["stage_number"], progress["stages"]) == ("Downloading", 1, 5)
            assert_not_ready_yet(app)

            page = browser.new_page()
            page.goto(app.url)
            banner = page.locator("#preparing")
            expect(banner).to_contain_text(re.compile(r"Downloading .* \(stage 1 of 5, [\d.]+ MB of [\d.]+ MB"))
            page.locator("#message textarea").fill("Hello there")
            page.locator("#send").click()
            expect(page.get_by_text("Nothing was sent; your text is still in the box").first).to_be_visible()
            expect(page.locator("#message textarea")).to_have_value("Hello there")

            hub.release_all()
            expect(banner).to_be_hidden(timeout=600_000)  # exported, loaded and warmed up
            expect(page.locator("#model-info")).to_contain_text("int4-sym-g128-r0.6")
            page.locator("#send").click()
            expect(page.locator("#chat .bot-row [data-testid=bot]")).not_to_have_count(0, timeout=120_000)
            assert app.health()[0] == 200
            page.close()
        finally:
            app.stop()
    assert app.stages() == ["Downloading 1/5", "Exporting 2/5", "Checking the export 3/5", "Loading 4/5",
                                    "Warming up 5/5"]


def test_an_export_that_cannot_fit_is_refused_with_the_numbers(tiny_phi3_source: Path, tmp_path: Path) -> None:
    with LocalHub({DEFAULT_MODEL: tiny_phi3_source}) as hub:
        # the estimate for the tiny model is 0.85 GB + 1.35 x 71 MB: its weights make it not fit
        app = AppProcess("--export-memory-limit", "0.9", env=hub_env(hub, tmp_path)).wait_page()
        try:
            body = wait_until(lambda: (b := app.health()[1])["status"] == "failed" and b, 120, "the refusal")
            assert hub.fetched == ["microsoft/Phi-3-mini-4k-instruct/config.json"], "refused before the download"
        finally:
            app.stop()
    reason = body["reason"]
    assert re.search(r"needs about [\d.]+ MB of memory at its peak, and 900.0 MB is the limit", reason), reason
    assert f"ready-made OpenVINO export {READY} instead" in reason and "close other programs" in reason
    assert not (tmp_path / "phi3ui" / "models").exists() or not any((tmp_path / "phi3ui" / "models").rglob("*.xml"))


def test_ready_made_on_a_space_downloads_once_and_a_restart_reuses_it(ready_made: Path, tmp_path: Path) -> None:
    """The Space's persistent disk is `data`; the second start has no hub at all."""
    space = {"SPACE_ID": "someone/phi3ui", "SPACE_HOST": "someone-phi3ui.hf.space"}
    with LocalHub({READY: ready_made}) as hub:
        env = {**hub_env(hub, tmp_path / "data"), **space, "PHI3UI_READY_MADE": "1"}
        first = AppProcess(env=env).wait_ready()
        try:
            status, body = first.health()
            assert status == 200 and body["model"] == READY
            assert any(name.endswith("openvino_model.bin") for name in hub.fetched)
            defaults(first)
        finally:
            first.stop()
    assert "Exporting" not in first.output() and first.stages() == [
        "Downloading 1/3", "Loading 2/3", "Warming up 3/3"]

    again = AppProcess(env=env).wait_ready()  # the hub has gone: all of it must come from the disk
    try:
        assert again.health()[1]["model"] == READY
        from gradio_client import Client

        assert Client(again.url, verbose=False).predict("Hi", [], 4, api_name="/chat").strip()
    finally:
        again.stop()
    assert again.stages() == ["Loading 1/2", "Warming up 2/2"]


def defaults(app: AppProcess) -> None:
    """What visitors of a Space get by default: a locked page, fair-use limits, no /v1 without
    a key, answers batched."""
    log = app.output()
    assert f"Fair use: {PUBLIC_RATE_PER_MINUTE} requests a minute" in log, log
    assert "ready-made OpenVINO IR" in log
    v1 = httpx.post(app.url + "v1/chat/completions", json=QUESTION, timeout=30)
    assert v1.status_code in (401, 403), v1.text
    assert app.health()[1]["slots"] == PUBLIC_CONCURRENCY
    config = httpx.get(app.url + "config", timeout=30).json()
    accordion = next(c for c in config["components"] if c.get("props", {}).get("label") == "Export and load")
    assert accordion["props"]["visible"] is False


def test_a_download_that_breaks_off_falls_back_to_the_bundled_model_and_says_so(tiny_phi3_source: Path,
                                                                                 tmp_path: Path) -> None:
    """The app's own cache holds the bundled export (the tests' cache): only the hub model is new."""
    with LocalHub({DEFAULT_MODEL: tiny_phi3_source}) as hub:
        hub.broken.add("model.safetensors")
        env = {**hub_env(hub, tmp_path), "PHI3UI_HOME": os.environ["PHI3UI_HOME"]}
        app = AppProcess(env=env).wait_ready()
        try:
            status, body = app.health()
            assert status == 200 and body["model"] == "bundled"
            assert "Downloading microsoft/Phi-3-mini-4k-instruct failed" in app.output()
            assert "Running the bundled SmolLM2-135M-Instruct instead" in app.output()
        finally:
            app.stop()
