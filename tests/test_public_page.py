"""A shared server's page and API on a fake backend (no model, no server): fair-use refusals
say which limit and when to retry, the token cap is the sidebar's maximum, and a locked
server shows visitors no server paths, stack traces or exception text."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from phi3ui.chat import HostPrompt, Loaded
from phi3ui.display import shown
from phi3ui.errors import MODEL_FAILED
from phi3ui.export import Exported
from phi3ui.fairness import FairUse, Gate
from phi3ui.service import ChatService
from phi3ui.settings import BUNDLED_EXPORT, ENGINES, Limits, RuntimeSettings
from phi3ui.ui import Page
from tests.test_page import ASKED, GEN, FakeBackend

SECRET_PATH = "/srv/phi3ui-cache/models/bundled-int4/openvino_model.bin"
INTERNAL = RuntimeError(f"Exception from src/plugin.cpp:42: cannot read {SECRET_PATH}\nTraceback (most recent call last)")


def visitor(host: str = "127.0.0.1", session: str = "s1", forwarded: str | None = None) -> SimpleNamespace:
    headers = {"x-forwarded-for": forwarded} if forwarded else {}
    return SimpleNamespace(session_hash=session, client=SimpleNamespace(host=host), headers=headers)


class Backend(FakeBackend):
    """FakeBackend that checks settings against its limits, as ChatBackend does, and holds a
    loaded model whose folder is a server path."""

    host_prompt = HostPrompt()

    def __init__(self, *args, cap: int = 4096, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = Limits(max_new_tokens=cap)
        engine = SimpleNamespace(context_window=8192, label="openvino-genai", device="CPU", name="genai",
                                 kind=ENGINES["genai"], notices=(), describe=lambda where=True: "genai engine on CPU",
                                 window_text=lambda cap=0: "8192-token window")
        self.loaded = Loaded(engine, Exported(Path(SECRET_PATH).parent, "bundled", BUNDLED_EXPORT, cached=True),
                             RuntimeSettings(engine="genai"), ())

    def prepare(self, history, message, settings, draft=False):
        settings.validate(self.limits)
        return super().prepare(history, message, settings, draft)


def api(page: Page, request=None, **values) -> list[str]:
    call = {"message": "hi", "history": [], "max_new_tokens": 16, **values}
    return list(page.api_chat(**call, request=request))


def exposes(text: str) -> bool:
    return any(leak in text for leak in ("/srv/", SECRET_PATH, "Traceback", "plugin.cpp", "Exception from"))


# --- nothing exposed when locked -----------------------------------------------------------
def test_locked_page_shows_a_plain_sentence_when_the_model_fails(caplog) -> None:
    page = Page(Backend(["par", "tial"], error=INTERNAL), lock_settings=True)
    with caplog.at_level(logging.ERROR):
        final = list(page.respond(visitor(), ASKED, *GEN))[-1]
    shown = str(final)
    assert MODEL_FAILED in shown and not exposes(shown)
    assert SECRET_PATH in caplog.text, "the log keeps the details"


def test_unlocked_page_still_shows_the_host_the_error() -> None:
    final = list(Page(Backend(["x"], error=INTERNAL)).respond(visitor(), ASKED, *GEN))[-1]
    assert SECRET_PATH in str(final)


def test_locked_api_gives_a_plain_sentence_when_the_model_fails(caplog) -> None:
    page = Page(Backend(["par", "tial"], error=INTERNAL), lock_settings=True)
    with pytest.raises(gr.Error) as failed, caplog.at_level(logging.ERROR):
        api(page)
    assert failed.value.message == MODEL_FAILED and SECRET_PATH in caplog.text


def test_locked_api_hides_errors_while_preparing_too() -> None:
    class Broken(Backend):
        def prepare(self, history, message, settings, draft=False):
            raise INTERNAL

    with pytest.raises(gr.Error) as failed:
        api(Page(Broken([]), lock_settings=True))
    assert not exposes(failed.value.message)


def test_locked_model_info_names_no_folder() -> None:
    locked, unlocked = Page(Backend([]), lock_settings=True).model_info(), Page(Backend([])).model_info()
    assert "bundled" in locked and "/" not in locked.replace("tokens/s", "")
    assert str(Path(SECRET_PATH).parent) in unlocked


def test_locked_model_info_names_a_local_model_folder_by_its_name_only(tmp_path) -> None:
    backend = Backend([])
    folder = tmp_path / "my-phi3-ov"
    folder.mkdir()
    backend.loaded = Loaded(backend.loaded.engine, Exported(folder, str(folder), None, cached=True),
                            backend.loaded.runtime, ())
    info = Page(backend, lock_settings=True).model_info()
    assert "**my-phi3-ov**" in info and str(tmp_path) not in info


# --- fair use --------------------------------------------------------------------------------
def test_a_second_answer_in_the_same_session_is_refused_until_the_first_ends() -> None:
    page = Page(Backend(["a"] * 20, delay=0.001))
    first = page.respond(visitor(), ASKED, *GEN)
    next(first)  # streaming
    refused = list(page.respond(visitor(), ASKED, *GEN))
    assert refused == [[*ASKED, {"role": "assistant", "content": refused[0][1]["content"],
                                 "metadata": {"title": "⚠️ Not sent", "status": "done"}}]]
    assert "One answer at a time" in refused[0][1]["content"] and "retry in 2 s" in refused[0][1]["content"]
    assert list(page.respond(visitor(session="s2"), ASKED, *GEN))[-1][1]["content"] == shown("a" * 20)
    first.close()  # the tab went away: its place is given back
    assert list(page.respond(visitor(), ASKED, *GEN))[-1][1]["content"] == shown("a" * 20)


def test_api_clients_are_rate_limited_by_address_behind_a_trusted_proxy() -> None:
    backend = Backend(["ok"])
    page = Page(backend, service=ChatService(backend, Gate(FairUse(rate_per_minute=3))), trust_proxy=True)
    flood = visitor(host="10.0.0.1", forwarded="203.0.113.9")
    for i in range(3):
        assert api(page, visitor(host="10.0.0.1", session=f"f{i}", forwarded="203.0.113.9"))[-1] == "ok"
    with pytest.raises(gr.Error) as refused:
        api(page, flood)
    assert refused.value.message.startswith("Too many requests: at most 3 a minute") and "Try again in 20 s" in \
        refused.value.message
    # the same proxy, another visitor: served
    assert api(page, visitor(host="10.0.0.1", forwarded="198.51.100.4"))[-1] == "ok"
    # the page's own events count against the same address
    note = list(page.respond(flood, ASKED, *GEN))[-1][-1]
    assert note["metadata"]["title"] == "⚠️ Not sent" and "Too many requests" in note["content"]


def test_an_api_client_gets_one_answer_at_a_time_whatever_session_it_claims() -> None:
    backend = Backend(["a"] * 20)
    page = Page(backend, service=ChatService(backend, Gate(FairUse(rate_per_minute=100))))
    running = page.api_chat("hi", [], 16, request=visitor(session="one"))
    next(running)
    with pytest.raises(gr.Error, match="One answer at a time: this address already has one"):
        api(page, visitor(session="two"))
    running.close()
    assert api(page, visitor(session="two"))[-1] == "a" * 20


def test_max_new_tokens_above_the_cap_are_refused_with_the_cap() -> None:
    page = Page(Backend(["ok"], cap=1024), lock_settings=True)
    with pytest.raises(gr.Error, match="between 1 and 1024, not 2000"):
        api(page, max_new_tokens=2000)
    assert api(page, max_new_tokens=1024)[-1] == "ok"


def test_the_sidebar_slider_stops_at_the_cap() -> None:
    page = Page(Backend([], cap=256), lock_settings=True)
    page.build()
    assert (page.ui.settings["max_new_tokens"].maximum, page.ui.settings["max_new_tokens"].value) == (256, 256)
