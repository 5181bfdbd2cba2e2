"""Each session's download folder is its own: session ids come from the client, so no id may
name the shared root or another session's folder, and closing one tab removes only its files."""

from __future__ import annotations

import tempfile
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from phi3ui import downloads
from phi3ui.sessions import Sessions
from phi3ui.ui import Page
from tests.waiting import wait_until

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.fixture(autouse=True)
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shared downloads folder, inside this test's own temporary folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path / "phi3ui-downloads"


@pytest.mark.parametrize("session", ["!!!", "...", "/", "..", "-", " "])
def test_an_id_without_word_characters_gets_a_folder_of_its_own(session: str, temp_root: Path) -> None:
    folder = downloads.folder_for(session)
    assert folder != temp_root and folder.parent == temp_root


def test_an_empty_id_is_refused() -> None:
    with pytest.raises(ValueError):
        downloads.folder_for("")


def test_ids_that_differ_only_in_punctuation_get_different_folders() -> None:
    assert downloads.folder_for("a.b") != downloads.folder_for("ab")
    assert downloads.folder_for("a-b") != downloads.folder_for("a_b")


def test_closing_one_tab_leaves_other_sessions_files() -> None:
    mine = [Path(p) for p in downloads.write_files(CHAT, "visitor")]
    for session in ("!!!", "visitor.", "other"):
        downloads.write_files(CHAT, session)
        downloads.remove_files(session)
        assert not downloads.folder_for(session).exists()
    assert all(path.exists() for path in mine)
    downloads.remove_files("visitor")
    assert not any(path.exists() for path in mine)


def test_the_page_writes_and_removes_no_files_for_an_empty_id(temp_root: Path) -> None:
    mine = [Path(p) for p in downloads.write_files(CHAT, "visitor")]
    assert Page.files([], "") == (None, None)
    Page.tab_closed(SimpleNamespace(sessions=Sessions()), SimpleNamespace(session_hash=""))  # just its state
    assert all(path.exists() for path in mine)


@pytest.mark.server
def test_a_raw_heartbeat_with_a_punctuation_id_removes_no_one_elses_files(app_server, monkeypatch) -> None:
    """The real app's unload event, as a raw HTTP client triggers it: opening and closing the
    session's heartbeat."""
    monkeypatch.setattr(tempfile, "tempdir", None)  # the app's own temporary folder
    mine = [Path(p) for p in downloads.write_files(CHAT, "phi3ui-test-visitor")]
    urllib.request.urlopen(f"{app_server.url}gradio_api/heartbeat/!!!", timeout=10).close()
    try:
        # Sessions that leave after "!!!": once their unloads have removed their files, the
        # one "!!!" triggered before them has run too (no sleep: each waits for its own event).
        for later in ("phi3ui-test-leaving", "phi3ui-test-leaving-too"):
            gone = [Path(p) for p in downloads.write_files(CHAT, later)]
            urllib.request.urlopen(f"{app_server.url}gradio_api/heartbeat/{later}", timeout=10).close()
            wait_until(lambda gone=gone: not any(path.exists() for path in gone), 120, f"{later}'s unload event to run",
                       every_s=0.1)
        assert all(path.exists() for path in mine)
    finally:
        downloads.remove_files("phi3ui-test-visitor")
