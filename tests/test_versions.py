"""Answer versions (phi3ui/versions.py) and how a record keeps them (conversations.py): retry and
edit set the branch aside, ‹ › switches, choices deeper down travel with their branch, a record
round-trips through storage and the file of all conversations, and old records still load."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from phi3ui import conversations as conv
from phi3ui import versions as v
from phi3ui.ui.versions_row import VersionEvents
from phi3ui.window import CUT_TITLE


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def answer(text: str) -> dict:
    return {"role": "assistant", "content": text}


def note(title: str) -> dict:
    return {"role": "assistant", "content": "", "metadata": {"title": title}}


def chat_of(messages: list[dict]) -> list[str]:
    return [m["content"] for m in messages if not m.get("metadata")]


def retried(messages: list[dict], state: dict | None, index: int, *new: dict) -> tuple[list[dict], dict]:
    """Retry or edit at `index`, then the new messages come."""
    head, state = v.set_aside(messages, state, index)
    return [*head, *new], state


def two_answers() -> tuple[list[dict], dict]:
    """A question answered twice (the second on screen), each with its stats note."""
    return retried([user("q"), answer("A1"), note("stats 1")], None, 1, answer("A2"), note("stats 2"))


def test_retry_keeps_the_earlier_answer_as_a_sibling_and_shows_the_new_one_last() -> None:
    messages, state = two_answers()
    assert chat_of(messages) == ["q", "A2"]
    assert v.counts(state, 1) == (2, 2) and v.focus(state, messages) == 1
    messages, state = retried(messages, state, 1, answer("A3"))
    assert v.counts(state, 1) == (3, 3)
    back, state = v.switch(messages, state, 1, -1)
    assert chat_of(back) == ["q", "A2"] and back[-1] == note("stats 2"), "an answer comes back with its stats"
    first, state = v.switch(back, state, 1, -1)
    assert chat_of(first) == ["q", "A1"] and v.counts(state, 1) == (1, 3)
    assert v.switch(first, state, 1, -1) == (first, state), "‹ on the first version stays"
    again, state = v.switch(*v.switch(first, state, 1, 1), 1, 1)
    assert chat_of(again) == ["q", "A3"] and v.counts(state, 1) == (3, 3)


def test_a_branch_of_notes_only_is_not_kept() -> None:
    messages, state = retried([user("q"), note("⚠️ Not sent")], None, 1, answer("A"))
    assert state["choices"] == {} and chat_of(messages) == ["q", "A"]


def test_an_edit_keeps_the_whole_branch_with_its_own_versions() -> None:
    messages, state = two_answers()
    messages += [user("q2"), answer("B")]
    edited, state = retried(messages, state, 0, user("q'"), answer("C"))
    assert chat_of(edited) == ["q'", "C"] and list(state["choices"]) == ["0"]
    back, state = v.switch(edited, state, 0, -1)
    assert chat_of(back) == ["q", "A2", "q2", "B"]
    assert v.counts(state, 0) == (1, 2) and v.counts(state, 1) == (2, 2), "the answer's versions came back too"
    older, state = v.switch(back, state, 1, -1)
    assert chat_of(older) == ["q", "A1"], "the earlier answer's branch ended there"
    newest, state = v.switch(older, state, 0, 1)
    assert chat_of(newest) == ["q'", "C"] and v.counts(state, 1) == (1, 1)
    round_trip, _ = v.switch(newest, state, 0, -1)
    assert chat_of(round_trip) == ["q", "A1"], "switching back finds the branch as it was left"


def test_the_cut_marker_has_no_position() -> None:
    cut = {"role": "assistant", "content": "…", "metadata": {"title": CUT_TITLE}}
    messages, state = retried([user("q"), answer("A"), user("q2"), answer("B")], None, 3, answer("B2"))
    marked = [messages[0], messages[1], cut, *messages[2:]]  # the page moved the cut in meanwhile
    assert v.index_of(marked, 3) == 4 and v.position_of(marked, 4) == 3
    back, _ = v.switch(marked, state, 3, -1)
    assert chat_of(back) == ["q", "A", "q2", "B"]


def test_clicking_undo_and_fork() -> None:
    messages, state = two_answers()
    assert v.focus(v.clicked(state, messages, 0), messages) == 0
    assert v.focus(v.clicked(state, messages, 99), messages) == 1, "a message gone: the last with versions"
    assert v.cut_to(state, messages[:1]) == v.empty()
    assert v.up_to(messages, 1) == messages, "an answer's fork takes its stats with it"
    assert v.up_to(messages, 0) == [user("q")]


def test_a_record_keeps_the_versions_inside_its_messages_and_gives_them_back() -> None:
    messages, state = two_answers()
    display = conv.display_messages(messages)
    record = conv.build(conv.new_meta(), display, {}, None, versions=state)
    assert chat_of(record["messages"]) == ["q", "A2"] and record["messages"][1]["version"] == 1
    assert record["messages"][1]["versions"] == [[answer("A1"), note("stats 1")]]
    text = conv.file_text([record])
    loaded, everything = conv.read_file(text)
    assert everything and loaded[0]["messages"] == record["messages"]
    plain, back = v.unnest(loaded[0]["messages"])
    assert plain == messages and back["choices"] == state["choices"]
    same = conv.build(conv.meta_of(record), display, {}, record, versions=state)
    assert same is None, "nothing changed: nothing to write"
    switched, moved = v.switch(plain, back, 1, -1)
    changed = conv.build(conv.meta_of(record), conv.display_messages(switched), {}, record, versions=moved)
    assert changed is not None and chat_of(changed["messages"]) == ["q", "A1"]


def test_merge_and_fingerprint_go_by_the_branch_on_screen() -> None:
    messages, state = two_answers()
    record = conv.clean({"id": "c1", "messages": v.nest(messages, state), "updated": 1})
    plain = conv.clean({"id": "c2", "messages": messages, "updated": 2})
    assert conv.fingerprint(record["messages"]) == conv.fingerprint(plain["messages"])
    plan = conv.merge([plain], [record])
    assert plan.already == 1 and plan.ids == ["c2"]
    newer = conv.clean({**record, "updated": 5})
    assert conv.merge([conv.clean({**record, "messages": messages})], [newer]).updated == 1, \
        "a newer copy with versions replaces one without"


def test_old_records_load_and_bad_versions_are_refused_clearly() -> None:
    old = conv.clean({"id": "c1", "messages": [user("q"), answer("a")]})
    assert v.unnest(old["messages"]) == (old["messages"], v.empty())
    bad = [({"versions": "A1"}, "must be a list of branches"), ({"versions": [[]]}, "has no messages"),
           ({"versions": [[answer("x")]], "version": 2}, "from 0 to 1"),
           ({"versions": [[{"role": "system", "content": "x"}]]}, "role: user|assistant")]
    for extra, says in bad:
        with pytest.raises(conv.ConversationError, match=says):
            conv.clean({"id": "c1", "messages": [user("q"), {**answer("a"), **extra}]})
    deep: dict = answer("x")
    for _ in range(conv.MAX_DEPTH + 1):
        deep = {**answer("x"), "versions": [[deep]]}
    with pytest.raises(conv.ConversationError, match="nested more than"):
        conv.clean({"id": "c1", "messages": [user("q"), deep]})
    text = json.dumps({"format": conv.FORMAT, "version": 1, "conversations": [
        {"id": "c1", "messages": [user("q"), {**answer("a"), "versions": 3}]}]})
    with pytest.raises(conv.ConversationError, match="Conversation 1 in that file"):
        conv.read_file(text)


def test_shown_text_stays_escaped_and_typed_text_is_kept() -> None:
    typed = "<b>bold</b> & `code`"
    messages, state = retried([user("q"), answer(typed)], None, 1, answer("new"))
    display = conv.display_messages(messages)
    record = conv.build(conv.new_meta(), display, {}, None, versions=state)
    assert record["messages"][1]["versions"] == [[answer(typed)]], "kept as typed"
    back, _ = v.switch(*v.unnest(record["messages"]), 1, -1)
    shown = conv.display_messages(back)[1]["content"]
    assert "<b>" not in json.dumps(shown), "shown escaped"


def test_a_state_that_is_not_one_is_left_out() -> None:
    messages = [user("q"), answer("A")]
    for state in (None, [], {"choices": {"x": {}, "1": {"others": "A", "version": 0}}},
                  {"choices": {"1": {"others": [], "version": 3}}}):
        assert v.focus(state, messages) is None and v.counts(state, 1) == (1, 1)
    odd = {"choices": {"1": {"others": [[{"role": "system", "content": "x"}]], "version": 0}}}
    record = conv.build(conv.new_meta(), conv.display_messages(messages), {}, None, versions=odd)
    assert record["messages"] == messages, "the chat is kept, without what is not a version"


def test_the_page_keeps_the_state_in_step_with_the_chat() -> None:
    """Retry, edit and undo as the page calls them (the chat as Gradio sends it, text parts)."""
    page = VersionEvents
    display = [{"role": "user", "content": [{"type": "text", "text": "a &lt; b"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "A1"}]}]
    chat, state = page.retry(display, None)
    assert chat == display[:1] and v.counts(state, 1) == (2, 2)
    row = page.version_row([*chat, answer("A2")], state)
    assert "version 2 of 2" in row[0]["value"] and row[1]["interactive"] and not row[2]["interactive"]
    edit = SimpleNamespace(index=0, value="c &lt; d", previous_value=[{"type": "text", "text": "a &lt; b"}])
    edited, state = page.edit([{"role": "user", "content": "c &lt; d"}, answer("A2")], state, edit)
    assert len(edited) == 1 and v.counts(state, 0) == (2, 2)
    assert state["choices"]["0"]["others"][0][0] == user("a < b"), "kept as typed"
    unreadable = SimpleNamespace(index=0, value="x", previous_value=None)
    assert page.edit([user("x"), answer("A")], state, unreadable)[1]["choices"] == {}, "edited without keeping"
    _, box, after = page.undo([*edited, answer("C")], state)
    assert box == "c < d" and after == v.empty()
