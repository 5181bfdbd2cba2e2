"""The rules for many conversations kept in the browser (phi3ui/conversations.py), and the
page's steps around them on a fake backend: no server, no browser, no model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import gradio as gr
import pytest

from phi3ui import conversations as conv
from phi3ui.chat import HostPrompt
from phi3ui.display import note, shown
from phi3ui.prompt import message_text
from phi3ui.ui import LEFT_MID_ANSWER, Page
from tests.test_page import GEN, FakeBackend

NOW = 1_750_000_000_000  # ms
MIN = 60_000
DAY = 86_400_000
SETTINGS = dict(zip(conv.SETTINGS, GEN))


def page_chat(*texts: str) -> list[dict]:
    """A chat as the page shows it: alternating user/assistant, each answer with its stats note."""
    display = []
    for i, text in enumerate(texts):
        display.append({"role": "user" if i % 2 == 0 else "assistant", "content": shown(text)})
        if i % 2:
            display.append(note("0.1 s to first token · 50 tokens/s · 5 prompt + 3 answer tokens"))
    return display


def record(title: str = "", *texts: str, updated: int = NOW, rid: str | None = None, renamed: bool = False) -> dict:
    built = conv.build({"id": rid or conv.new_id(), "title": title, "renamed": renamed},
                       page_chat(*(texts or ("hello", "hi"))), SETTINGS, None, now=updated)
    assert built is not None
    return built


# --- records -----------------------------------------------------------------------------
def test_a_record_keeps_the_text_as_typed_and_the_stats_notes() -> None:
    display = page_chat("Is 2 < 3 & `a<b`?", "Yes: 2 < 3.")
    built = conv.build(conv.new_meta(), display, SETTINGS, None, now=NOW)
    assert built["messages"][0] == {"role": "user", "content": "Is 2 < 3 & `a<b`?"}
    assert built["messages"][2]["metadata"]["title"].startswith("0.1 s to first token")
    assert conv.chat_of(built["messages"]) == [{"role": "user", "content": "Is 2 < 3 & `a<b`?"},
                                              {"role": "assistant", "content": "Yes: 2 < 3."}]
    back = conv.display_messages(built["messages"])
    assert [message_text(m["content"]) for m in back] == [message_text(m["content"]) for m in display]
    assert back[2]["metadata"] == {"title": display[2]["metadata"]["title"], "status": "done"}
    assert (built["created"], built["updated"], built["settings"]) == (NOW, NOW, SETTINGS)


def test_everything_from_a_record_is_escaped_for_the_page_notes_too() -> None:
    hostile = "<img src=x onerror=alert(1)>"
    messages = [{"role": "user", "content": hostile},
                {"role": "assistant", "content": hostile, "metadata": {"title": hostile}}]
    for message in conv.display_messages(messages):
        assert "<img" not in message_text(message["content"])
        assert "<img" not in message.get("metadata", {}).get("title", "")


def test_titles_come_from_the_first_message_until_renamed() -> None:
    assert conv.title_for([]) == conv.NEW_TITLE
    assert conv.title_for([{"role": "user", "content": "  What is\n the capital of France?  "}]) == \
        "What is the capital of France?"
    long = conv.title_for([{"role": "user", "content": "Explain what int4 weight compression does to a "
                                                       "language model, in three sentences."}])
    assert long.endswith("…") and len(long) <= conv.TITLE_CHARS + 1 and " " in long
    assert record("", "first question", "answer")["title"] == "first question"
    renamed = record("My  title ", "first question", "answer", renamed=True)
    assert (renamed["title"], renamed["renamed"]) == ("My title", True)
    assert record("", "q", "a", renamed=True)["renamed"] is False, "an empty name gives the automatic title back"


def test_build_writes_nothing_for_an_empty_chat_or_an_unchanged_one_and_keeps_times() -> None:
    meta = conv.new_meta()
    assert conv.build(meta, [], SETTINGS, None) is None
    first = conv.build(meta, page_chat("q", "a"), SETTINGS, None, now=NOW)
    assert conv.build(meta, page_chat("q", "a"), SETTINGS, first, now=NOW + MIN) is None
    other = conv.build(meta, page_chat("q", "a"), {**SETTINGS, "temperature": 0.7}, first, now=NOW + MIN)
    assert other["updated"] == NOW and other["rev"] != first["rev"], "a setting is kept, the order stays"
    longer = conv.build(meta, page_chat("q", "a", "q2", "a2"), SETTINGS, first, now=NOW + MIN)
    assert (longer["created"], longer["updated"]) == (NOW, NOW + MIN)


def test_clean_reads_what_is_stored_and_refuses_what_is_not_a_conversation() -> None:
    kept = record("", "q", "a")
    assert conv.clean(json.loads(json.dumps(kept))) == kept
    assert conv.readable([kept, {"id": "bad id!"}, "text", None, {"id": "x", "messages": "no"}]) == [kept]
    brief = {k: kept[k] for k in ("id", "title", "renamed", "created", "updated", "rev")}
    assert conv.clean(brief)["title"] == kept["title"], "the list's entries carry no messages"
    lying = conv.clean({**kept, "title": "Not what it says", "renamed": False})
    assert lying["title"] == "q", "an automatic title is always the first message's"
    odd = conv.clean({**kept, "settings": {"temperature": "hot", "top_k": 7.0, "seed": None, "x": 1}})
    assert odd["settings"] == {"top_k": 7, "seed": None}


def test_leaving_mid_answer_keeps_the_answer_so_far_with_a_note() -> None:
    asked = page_chat("q")
    assert conv.stopped(asked, False, "why") == asked
    cut = conv.stopped([*asked, {"role": "assistant", "content": "partial"}], True, "why")
    assert cut[-1]["metadata"]["title"] == "⏹ Stopped" and cut[-2]["content"] == "partial"
    assert conv.stopped(asked, True, "why")[-1]["metadata"]["title"] == "⏹ Stopped before it started"


# --- the list ------------------------------------------------------------------------------
def test_the_list_is_newest_first_with_when_each_was_last_used() -> None:
    old = record("", "old one", "a", updated=NOW - 3 * DAY)
    new = record("", "new one", "a", updated=NOW - 5 * MIN)
    mid = record("", "middle", "a", updated=NOW - 2 * 3_600_000)
    assert conv.listing([old, new, mid], now=NOW) == [("new one · 5 min ago", new["id"]),
                                                      ("middle · 2 h ago", mid["id"]),
                                                      ("old one · 3 days ago", old["id"])]
    assert conv.last_used(NOW - 10_000, NOW) == "just now"
    assert conv.last_used(NOW - DAY - 1, NOW) == "yesterday"
    assert conv.last_used(1_600_000_000_000, NOW) == "13 Sep 2020"


def test_search_matches_every_word_in_titles_and_messages_in_any_case() -> None:
    paris = record("", "What is the capital of France?", "Paris.")
    renamed = record("Cooking notes", "How long do eggs boil?", "Ten minutes.", renamed=True)
    both = [paris, renamed]
    assert [i for _, i in conv.listing(both, "PARIS capital")] == [paris["id"]]
    assert [i for _, i in conv.listing(both, "cooking")] == [renamed["id"]]
    assert [i for _, i in conv.listing(both, "eggs minutes")] == [renamed["id"]]
    assert conv.listing(both, "paris eggs") == []
    assert len(conv.listing(both, "  ")) == 2


# --- files and merging ---------------------------------------------------------------------
def test_download_and_read_back_all_conversations() -> None:
    kept = [record("", "q1", "a1", updated=NOW - MIN), record("Named", "q2", "a2", renamed=True)]
    text = conv.file_text(kept, now=NOW)
    data = json.loads(text)
    assert (data["format"], data["version"], data["exported"]) == ("phi3ui-conversations", 1, NOW)
    assert [c["id"] for c in data["conversations"]] == [kept[1]["id"], kept[0]["id"]], "newest first"
    records, everything = conv.read_file(text)
    assert everything and sorted(records, key=lambda r: r["id"]) == sorted(kept, key=lambda r: r["id"])


def test_a_single_chat_download_reads_as_one_new_conversation() -> None:
    records, everything = conv.read_file(json.dumps([{"role": "user", "content": "hi <b>"},
                                                     {"role": "assistant", "content": "hello"}]), now=NOW)
    assert not everything and len(records) == 1
    assert records[0]["title"] == "hi <b>" and records[0]["messages"][0]["content"] == "hi <b>"


@pytest.mark.parametrize("text, says", [
    ("not json", "not a chat saved by phi3ui"),
    ('{"format": "something else"}', "neither a chat nor"),
    ('{"format": "phi3ui-conversations", "version": 99, "conversations": []}', "newer phi3ui"),
    ('{"format": "phi3ui-conversations", "version": 1, "conversations": [{"id": "a b"}]}', "Conversation 1"),
    ('[{"role": "tool", "content": "x"}]', "roles must be"),
    ("[]", "no messages"),
])
def test_files_that_are_not_conversations_are_refused_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(conv.ConversationError, match=says):
        conv.read_file(text)


def test_merge_adds_new_ones_and_never_duplicates() -> None:
    mine = record("", "q1", "a1", updated=NOW)
    same_chat_other_id = {**record("", "q1", "a1"), "id": conv.new_id()}
    new = record("", "q2", "a2")
    plan = conv.merge([mine], [mine, same_chat_other_id, new, new])
    assert [r["id"] for r, _ in plan.write] == [new["id"]]
    assert plan.write[0][1] is None and plan.write[0][0]["rev"] != new["rev"]
    assert (plan.added, plan.updated, plan.already) == (1, 0, 3)
    assert plan.ids == [mine["id"], mine["id"], new["id"], new["id"]]
    assert plan.summary() == "1 added, 3 already here"


def test_merge_keeps_the_later_version_of_one_conversation() -> None:
    mine = record("", "q", "a", updated=NOW)
    later = {**conv.build(conv.meta_of(mine), page_chat("q", "a", "q2", "a2"), SETTINGS, mine, now=NOW + MIN)}
    plan = conv.merge([mine], [later])
    assert [(r["id"], expect) for r, expect in plan.write] == [(mine["id"], mine["rev"])]
    assert plan.updated == 1
    assert conv.merge([later], [mine]).write == [], "an older version does not replace a newer one"


def test_the_two_tabs_rule_makes_a_copy_not_an_overwrite() -> None:
    kept = record("", "q", "a")
    copy = conv.conflict_copy(kept)
    assert copy["id"] != kept["id"] and copy["title"] == "q (copy)" and copy["renamed"]
    assert conv.conflict_copy({**kept, "title": "q (copy)"})["title"] == "q (copy)"


# --- the page's steps, on a fake backend ---------------------------------------------------
class Backend(FakeBackend):
    host_prompt = HostPrompt()
    loaded = None


@pytest.fixture(scope="module")
def page() -> Page:
    built = Page(Backend(["ok"]))
    built.build()
    return built


def request(session: str = "s1") -> SimpleNamespace:
    return SimpleNamespace(session_hash=session)


def test_leaving_stops_the_answer_and_saves_the_chat_so_far(page: Page) -> None:
    meta = conv.new_meta()
    display = [*page_chat("q"), {"role": "assistant", "content": "par"}]
    chat = page.sessions.saving_chat("leaver")
    writes = page.leave_conversation(request("leaver"), {"peek": None}, True, display, meta, None, *GEN)
    assert not page.sessions.is_current("leaver", chat), "the answer on its way writes nothing more"
    (item,) = writes
    assert item["record"]["id"] == meta["id"] and item["copy"]["id"] != meta["id"]
    assert item["record"]["messages"][-1] == {"role": "assistant", "content": LEFT_MID_ANSWER,
                                              "metadata": {"title": "⏹ Stopped"}}
    assert page.leave_conversation(request("leaver"), {"peek": item["record"]}, False, display, meta, None, *GEN) != []
    assert page.leave_conversation(request("leaver"), {}, False, [], meta, None, *GEN) == [], "an empty chat is not kept"


def test_a_save_goes_to_the_conversation_on_screen_when_the_step_runs(page: Page) -> None:
    """`record` takes the chat and the conversation from the same step, not what `settle`
    saw: a save racing a switch cannot put one conversation's messages into another."""
    meta = conv.new_meta()
    assert page.save_changed(request(), {}, None, page_chat("q", "a"), meta, None, *GEN) == {page.ui.save_job: None}
    out = page.save_changed(request(), {}, page_chat("stale"), page_chat("q", "a"), meta, None, *GEN)
    (item,) = out[page.ui.save_job]["write"]
    assert item["record"]["id"] == meta["id"] and item["record"]["messages"][0]["content"] == "q"
    assert out[page.ui.unsaved] is None


def test_opening_shows_the_conversation_with_its_settings_or_stays_when_storage_is_full(page: Page) -> None:
    kept = conv.build(conv.new_meta(), page_chat("q", "a"), {**SETTINGS, "max_new_tokens": 99999, "temperature": 0.5},
                      None)
    out = page.show_opened(request(), {"open": kept, "conversations": [kept]}, {"open": kept["id"]}, None, "")
    assert out[page.ui.current]["id"] == kept["id"] and out[page.ui.chatbot][0]["content"] == shown("q")
    assert out[page.ui.settings["max_new_tokens"]] == page.backend.limits.max_new_tokens, "held to the slider's range"
    assert out[page.ui.settings["temperature"]] == 0.5
    full = page.show_opened(request(), {"failed": "full", "conversations": []},
                       {"write": [{"record": kept}], "open": "other"}, conv.meta_of(kept), "")
    assert page.ui.chatbot not in full and "storage is full" in full[page.ui.storage_note]


def test_a_locked_system_prompt_is_neither_kept_nor_applied() -> None:
    backend = Backend([])
    backend.host_prompt = HostPrompt("Be terse.", locked=True, shown=True)
    locked = Page(backend)
    assert locked.setting_values(*GEN[:-1], "mine")["system_prompt"] == ""
    assert locked.setting_updates({"system_prompt": "mine"})[-1] == gr.skip()


def test_deleting_offers_the_conversation_back(page: Page) -> None:
    kept = conv.build(conv.new_meta(), page_chat("q", "a"), SETTINGS, None)
    pending = page.delete(request(), {}, False, page_chat("q", "a"), conv.meta_of(kept), None, *GEN)
    assert pending["remove"] == kept["id"] and pending["new"]
    out = page.show_opened(request(), {"removed": kept, "conversations": []}, pending, conv.meta_of(kept), "")
    assert out[page.ui.chatbot] == [] and out[page.ui.current]["id"] != kept["id"]
    assert out[page.ui.deleted]["id"] == kept["id"] and out[page.ui.restore_btn]["visible"] is True
    back = page.restore_deleted(request(), {}, False, [], out[page.ui.current], None, out[page.ui.deleted], *GEN)
    assert back["open"] == kept["id"] and back["write"][-1]["expect"] is None


def test_loading_the_same_file_twice_adds_nothing(page: Page, tmp_path) -> None:
    kept = [record("", "q1", "a1"), record("", "q2", "a2")]
    file = tmp_path / "all.json"
    file.write_text(conv.file_text(kept))
    first = page.load_file(request(), {"conversations": []}, False, [], conv.new_meta(), None, str(file), *GEN)
    assert len(first["write"]) == 2 and first["stay"] and "2 added" in first["note"]
    again = page.load_file(request(), {"conversations": kept}, False, [], conv.new_meta(), None, str(file), *GEN)
    assert again["write"] == [] and "2 already here" in again["note"]
    single = tmp_path / "chat.json"
    single.write_text(json.dumps(conv.chat_of(kept[0]["messages"])))
    opened = page.load_file(request(), {"conversations": kept}, False, [], conv.new_meta(), None, str(single), *GEN)
    assert opened["open"] == kept[0]["id"] and opened["write"] == [], "a chat already kept is opened, not copied"
    bad = tmp_path / "bad.json"
    bad.write_text('[{"role": "<img src=x onerror=alert(1)>", "content": "x"}]')
    refused = page.load_file(request(), {"conversations": []}, False, [], None, None, str(bad), *GEN)
    assert "roles must be" in refused["error"] and "write" not in refused
    out = page.show_opened(request(), {"conversations": []}, refused, conv.meta_of(kept[0]), "")
    assert page.ui.chatbot not in out and "roles must be" in out[page.ui.storage_note]
    assert "<img" not in out[page.ui.storage_note], "what a file says is shown as text"
    assert page.download_all({"conversations": []}) == ("", "There are no conversations to download yet.")


def test_a_copy_made_by_the_two_tabs_rule_becomes_the_conversation_on_screen(page: Page) -> None:
    meta = conv.new_meta()
    pending = page.save_now(request("tabs"), {}, page_chat("q", "a"), meta, None, *GEN)[page.ui.save_job]
    copy = pending["write"][0]["copy"]
    out = page.after_save(request("tabs"), {"copied": [[meta["id"], copy["id"], copy["title"]]], "conversations": []},
                     pending, meta, "")
    assert out[page.ui.current]["id"] == copy["id"] and "another tab" in out[page.ui.storage_note]


def test_a_save_that_ends_after_the_page_moved_on_leaves_the_list_choice_to_the_page(page: Page) -> None:
    """An answer's save can end after the page went to another conversation and chose it in
    the list: the list is drawn again, its choice and the note under it are left alone."""
    left, other = (conv.build(conv.new_meta(), page_chat(q, "a"), SETTINGS, None) for q in ("q1", "q2"))
    report, session = {"conversations": [left, other]}, request("mover")

    def save() -> dict:  # of the chat the page shows, or showed when the save began
        return page.save_now(session, {}, page_chat("q1", "b"), conv.meta_of(left), None, *GEN)[page.ui.save_job]

    def list_after(job: dict | None) -> dict:
        out = page.after_save(session, report, job, conv.meta_of(left), "")
        assert out[page.ui.storage_note] == gr.skip() or out[page.ui.conv_list].value == left["id"]
        return out[page.ui.conv_list]

    before = save()
    assert list_after(before).value == left["id"], "a save of the chat on screen chooses it"
    page.switch(session, gr.SelectData(None, {"value": other["id"], "index": 1}), {}, False, [],
                conv.meta_of(left), None, *GEN)
    during = save()  # the page has not shown the other conversation yet
    for job in (before, during, None):  # None: the save had nothing to write
        late = list_after(job)
        assert isinstance(late, dict) and "value" not in late, f"the list's choice moved: {late}"
        assert {i for _, i in late["choices"]} == {left["id"], other["id"]}
    page.show_opened(session, {"open": other, "conversations": [left, other]}, {"open": other["id"]}, None, "")
    assert page.sessions.is_current("mover", save()["chat"]), "once shown, saves are of the chat on screen"


def test_the_page_opens_the_conversation_in_use_or_a_new_chat(page: Page) -> None:
    kept = conv.build(conv.new_meta(), page_chat("q", "a"), SETTINGS, None)
    out = page.open_page(request(), {"open": kept, "conversations": [kept]}, [], "")
    assert out[page.ui.current]["id"] == kept["id"] and out[page.ui.conv_list].value == kept["id"]
    fresh = page.open_page(request(), {"open": None, "conversations": [kept]}, [], "")
    assert page.ui.chatbot not in fresh and fresh[page.ui.current]["id"] != kept["id"] and fresh[page.ui.unsaved] is None
    off = page.open_page(request(), {"failed": "unavailable", "conversations": []}, [], "")
    assert "keeps no storage" in off[page.ui.storage_note]


def test_numbers_json_cannot_hold_are_left_out_of_a_loaded_file() -> None:
    """Python's json reads Infinity and NaN; a file holding them loads without them."""
    record = json.loads('{"id": "c1", "messages": [], "created": Infinity, '
                        '"settings": {"temperature": Infinity, "top_k": NaN, "max_new_tokens": 5}}')
    cleaned = conv.clean(record, now=NOW)
    assert cleaned["settings"]["max_new_tokens"] == 5
    assert "temperature" not in cleaned["settings"] and "top_k" not in cleaned["settings"]
    assert cleaned["created"] == NOW
