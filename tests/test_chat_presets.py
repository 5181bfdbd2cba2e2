"""Chat presets (phi3ui/chat_presets.py): checked against settings.GENERATION_TABLE, a host's
file refused with a message that names what is wrong, kept with conversations and in their
file, and the page's steps on a fake backend, a locked server's included. No model, no server."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from phi3ui import chat_presets
from phi3ui import conversations as conv
from phi3ui import server
from phi3ui.chat import HostPrompt
from phi3ui.chat_presets import PresetError
from phi3ui.settings import GENERATION_TABLE, PAGE_SETTINGS, SETTING, Limits
from phi3ui.ui import Page
from phi3ui.ui.chat_presets import GONE
from tests.test_conversations import NOW, SETTINGS, Backend, page_chat, request
from tests.test_page import GEN

LIMITS = Limits(max_new_tokens=512)
TERSE = {"name": "Terse", "system_prompt": "Answer in one sentence.", "settings": {"temperature": 0, "max_new_tokens": 64}}


def host_file(tmp_path, content) -> str:
    path = tmp_path / "presets.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


# --- what a preset is ------------------------------------------------------------------------
def test_a_preset_has_every_row_of_the_table_and_defaults_for_the_rows_not_named() -> None:
    preset = chat_presets.validate(TERSE, LIMITS)
    assert tuple(preset.values()) == PAGE_SETTINGS
    assert preset.values()["temperature"] == 0.0 and isinstance(preset.values()["temperature"], float)
    assert preset.values()["max_new_tokens"] == 64 and preset.values()["system_prompt"] == TERSE["system_prompt"]
    assert preset.values()["top_k"] == SETTING["top_k"].default


@pytest.mark.parametrize("setting", [s for s in GENERATION_TABLE if s.low is not None], ids=lambda s: s.name)
def test_each_bounded_setting_is_checked_with_the_tables_bounds_and_words(setting) -> None:
    low, high = setting.bounds(LIMITS)
    chat_presets.validate({"name": "x", "settings": {setting.name: setting.type(high)}}, LIMITS)
    with pytest.raises(PresetError) as refused:
        chat_presets.validate({"name": "x", "settings": {setting.name: setting.type(high) + 1}}, LIMITS)
    assert str(refused.value) == setting.check(setting.type(high) + 1, LIMITS), "the same words as the page and API"
    with pytest.raises(PresetError, match=f"{setting.name} must be"):
        chat_presets.validate({"name": "x", "settings": {setting.name: "high"}}, LIMITS)


@pytest.mark.parametrize("preset, says", [
    ({"settings": {}}, "needs a name"),
    ({"name": "x" * 61}, "at most 60 characters"),
    ({"name": "x", "settings": {"temprature": 1}}, "Unknown setting.*'temprature'.*temperature"),
    ({"name": "x", "settings": {"system_prompt": "hi"}}, "beside settings"),
    ({"name": "x", "prompt": "hi"}, "Unknown field"),
    ({"name": "x", "system_prompt": 3}, "system_prompt must be text"),
    ({"name": "x", "settings": {"answer_json": "yes"}}, "answer_json must be true or false"),
    ({"name": "x", "settings": {"answer_json": True, "json_schema": "{"}}, "JSON"),
    ({"name": "x", "settings": {"top_k": 2.5}}, "top_k must be a whole number"),
    ({"name": "x", "system_prompt": "y" * 20_000}, "The system prompt is 20000 characters"),
    (["Terse"], "is an object"),
])
def test_a_preset_the_table_refuses_says_why(preset, says: str) -> None:
    with pytest.raises(PresetError, match=says):
        chat_presets.validate(preset, LIMITS)


def test_a_random_seed_is_null_or_minus_one() -> None:
    for seed in (None, -1):
        assert chat_presets.validate({"name": "x", "settings": {"seed": seed}}, LIMITS).values()["seed"] is None
    assert chat_presets.validate({"name": "x", "settings": {"seed": 7}}, LIMITS).values()["seed"] == 7


# --- the host's file -------------------------------------------------------------------------
def test_a_host_file_is_read_and_held_to_the_servers_limits(tmp_path) -> None:
    path = host_file(tmp_path, [TERSE, {"name": "Long", "settings": {"max_new_tokens": 2000}}])
    assert [p.name for p in chat_presets.read_host_file(path, Limits())] == ["Terse", "Long"]
    with pytest.raises(PresetError, match=r"presets.json, preset 2 \('Long'\): Max new tokens must be between 1 and 512"):
        chat_presets.read_host_file(path, LIMITS)


@pytest.mark.parametrize("content, says", [
    ("[{", "is not JSON"),
    ({"name": "Terse"}, "must hold a list of chat presets"),
    ([], "must hold a list"),
    ([TERSE, TERSE], r"preset 2 \('Terse'\): another preset already has that name"),
    ([TERSE, {"name": "Hot", "settings": {"temperature": 9}}], r"preset 2 \('Hot'\): Temperature must be between 0 and 2"),
])
def test_a_bad_host_file_stops_the_start_with_a_clear_message(tmp_path, capsys, content, says: str) -> None:
    path = host_file(tmp_path, content)
    with pytest.raises(SystemExit):
        server.parse_args(["--chat-presets", path])
    assert f"--chat-presets {path}" in capsys.readouterr().err
    with pytest.raises(PresetError, match=says):
        chat_presets.read_host_file(path, Limits())


def test_a_missing_host_file_and_the_environment_variable(tmp_path, monkeypatch, capsys) -> None:
    with pytest.raises(SystemExit):
        server.parse_args(["--chat-presets", str(tmp_path / "nowhere.json")])
    assert "cannot be read (No such file or directory)" in capsys.readouterr().err
    monkeypatch.setenv("PHI3UI_CHAT_PRESETS", host_file(tmp_path, [TERSE]))
    assert [p.name for p in server.parse_args([]).host_presets] == ["Terse"]
    # a locked server's token cap (1024 unless told) applies to the host's own presets too
    monkeypatch.setenv("PHI3UI_CHAT_PRESETS", host_file(tmp_path, [{"name": "L", "settings": {"max_new_tokens": 2048}}]))
    assert server.parse_args([]).host_presets[0].values()["max_new_tokens"] == 2048
    with pytest.raises(SystemExit):
        server.parse_args(["--lock-settings"])
    assert "between 1 and 1024" in capsys.readouterr().err


# --- kept in the browser, with conversations and in their file -------------------------------
def test_stored_presets_are_cleaned_not_trusted() -> None:
    stored = [{"name": "  My   preset ", "system_prompt": 5, "settings": {"temperature": "hot", "top_k": 3.0,
                                                                          "unknown": 1}, "updated": "soon"},
              {"settings": {}}, "junk", {"name": "My preset", "settings": {"top_k": 9}}]
    (preset,) = chat_presets.readable(stored)
    assert preset.name == "My preset" and preset.system_prompt == "" and preset.updated == 0
    assert preset.values()["top_k"] == 3 and preset.values()["temperature"] == SETTING["temperature"].default


def test_a_conversation_remembers_its_preset_and_old_records_still_load() -> None:
    built = conv.build({**conv.new_meta(), "preset": "Terse"}, page_chat("q", "a"), SETTINGS, None, now=NOW)
    assert built["preset"] == "Terse" and conv.meta_of(built)["preset"] == "Terse"
    assert conv.clean(built)["preset"] == "Terse"
    old = {k: v for k, v in built.items() if k != "preset"}
    assert conv.clean(old)["preset"] == ""
    assert conv.clean({**built, "preset": {"name": "<b>"}})["preset"] == "", "not a name: none"
    assert conv.build(conv.meta_of(built), page_chat("q", "a"), SETTINGS, built) is None, "nothing changed"
    other = conv.build({**conv.meta_of(built), "preset": "Other"}, page_chat("q", "a"), SETTINGS, built)
    assert other["preset"] == "Other" and other["updated"] == built["updated"], "a setting, not a message"


def test_presets_go_out_and_come_back_with_the_conversations() -> None:
    kept = [conv.build({**conv.new_meta(), "preset": "Mine"}, page_chat("q", "a"), SETTINGS, None, now=NOW)]
    mine = chat_presets.validate({**TERSE, "name": "Mine"}, LIMITS, updated=NOW)
    text = conv.file_text(kept, now=NOW, presets=[mine])
    records, everything = conv.read_file(text)
    assert everything and records == kept
    assert conv.file_presets(text) == [mine]
    older = json.loads(text)
    del older["presets"]  # a file written before presets
    assert conv.read_file(json.dumps(older))[0] == kept and conv.file_presets(json.dumps(older)) == []
    with pytest.raises(conv.ConversationError, match="Chat preset 1 in that file: A chat preset needs a name"):
        conv.file_presets(json.dumps({**older, "presets": [{"settings": {}}]}))


def test_loaded_presets_merge_by_name_and_never_take_a_host_presets_name() -> None:
    mine = chat_presets.validate({**TERSE, "name": "Mine"}, LIMITS, updated=NOW)
    newer = chat_presets.validate({**TERSE, "name": "Mine", "system_prompt": "Newer."}, LIMITS, updated=NOW + 1)
    fresh = chat_presets.validate({**TERSE, "name": "Fresh"}, LIMITS, updated=NOW)
    host = chat_presets.validate(TERSE, LIMITS, updated=NOW)
    plan = chat_presets.merge([mine], [newer, fresh, host, mine], reserved={"Terse"})
    assert plan.write == [newer, fresh] and (plan.added, plan.updated, plan.already, plan.taken) == (1, 1, 1, 1)
    assert "1 left out" in plan.summary()
    assert chat_presets.merge([newer], [mine], set()).write == [], "an older version changes nothing"


# --- the page's steps ------------------------------------------------------------------------
HOST = chat_presets.validate(TERSE, LIMITS)


def preset_page(**host_prompt) -> Page:
    backend = Backend([])
    backend.limits = Limits(max_new_tokens=256)
    backend.host_prompt = HostPrompt(**host_prompt)
    built = Page(backend, host_presets=(HOST,))
    built.build()
    return built


def test_picking_a_preset_fills_the_settings_and_the_conversation_keeps_it() -> None:
    page = preset_page()
    own = chat_presets.validate({"name": "Long", "system_prompt": "Be thorough.",
                                 "settings": {"max_new_tokens": 512, "top_k": 7}}, Limits())
    out = page.pick_preset({"presets": [own.record()]}, "Long", conv.new_meta())
    shown = {name: out[page.ui.settings[name]] for name in PAGE_SETTINGS}
    assert shown["system_prompt"] == "Be thorough." and shown["top_k"] == 7
    assert shown["max_new_tokens"] == 256, "held to the host's limit"
    assert out[page.ui.current]["preset"] == "Long"
    assert page.pick_preset({"presets": []}, "Long", conv.new_meta())[page.ui.preset_note] == GONE


def test_saving_and_deleting_ones_own_presets() -> None:
    page = preset_page()
    saved = page.save_preset({"presets": []}, "  Mine ", *GEN)
    job = saved[page.ui.preset_job]
    assert job["use"] == "Mine" and job["write"][0]["name"] == "Mine"
    assert job["write"][0]["settings"]["max_new_tokens"] == GEN[0] and job["write"][0]["settings"]["seed"] is None
    taken = page.save_preset({"presets": []}, "Terse", *GEN)
    assert taken[page.ui.preset_job] is None and "one of this server's presets" in taken[page.ui.preset_note]
    assert "needs a name" in page.save_preset({"presets": []}, " ", *GEN)[page.ui.preset_note]
    bad = page.save_preset({"presets": []}, "<b>J</b>", *GEN[:-1], "", True, "{")  # answer as JSON, a broken schema
    assert bad[page.ui.preset_job] is None and "<b>" not in bad[page.ui.preset_note]
    gone = page.delete_preset({}, "Mine", {"preset": "Mine"})
    assert gone[page.ui.preset_job] == {"remove": ["Mine"], "use": ""}
    kept = page.delete_preset({}, "Terse", {"preset": "Terse"})
    assert kept[page.ui.preset_job] is None and "this server's" in kept[page.ui.preset_note]
    listed = page.show_presets({"presets": job["write"]}, job, {"preset": ""})
    assert listed[page.ui.current]["preset"] == "Mine"
    assert listed[page.ui.chat_preset].choices == [("Terse · this server's", "Terse"), ("Mine", "Mine")]
    assert listed[page.ui.chat_preset].value == "Mine"
    full = page.show_presets({"failed": "full", "presets": []}, job, {"preset": ""})
    assert "storage is full" in full[page.ui.preset_note] and page.ui.current not in full


def test_a_locked_servers_presets_keep_the_hosts_system_prompt() -> None:
    page = preset_page(text="You are the ship's computer.", locked=True, shown=False)
    pirate = {"name": "Pirate", "system_prompt": "You are a pirate.", "settings": {"temperature": 1.5}}
    for name, report in (("Pirate", {"presets": [pirate]}), ("Terse", {})):
        out = page.pick_preset(report, name, conv.new_meta())
        assert out[page.ui.settings["system_prompt"]] == gr.skip(), "the host's stays in the box"
        assert "keeps its own system prompt" in out[page.ui.preset_note]
    assert out[page.ui.settings["max_new_tokens"]] == 64
    saved = page.save_preset({}, "Mine", *GEN[:-1], "You are a pirate.")
    assert saved[page.ui.preset_job]["write"][0]["system_prompt"] == "", "nor kept in a visitor's preset"


def test_importing_a_file_brings_its_presets(tmp_path) -> None:
    page = preset_page()
    mine = chat_presets.validate({**TERSE, "name": "Mine"}, LIMITS, updated=NOW)
    file = tmp_path / "all.json"
    file.write_text(conv.file_text([conv.build(conv.new_meta(), page_chat("q", "a"), SETTINGS, None)],
                                   presets=[mine, HOST]))
    job = page.load_file(None, {"conversations": [], "presets": []}, False, [], conv.new_meta(), None, str(file), *GEN)
    assert job["presets"]["write"] == [mine.record()]
    assert "2 chat preset(s): 1 added, 1 left out" in job["note"]
    text, note = page.download_all({"conversations": [], "presets": [mine.record()]})
    assert note == "" and conv.file_presets(text) == [mine]


def test_the_copy_the_two_tabs_rule_makes_keeps_the_preset() -> None:
    page = preset_page()
    meta = {**conv.new_meta(), "preset": "Terse"}
    pending = page.save_now(request(), {}, page_chat("q", "a"), meta, *GEN)[page.ui.save_job]
    assert pending["write"][0]["record"]["preset"] == "Terse"
    copy = pending["write"][0]["copy"]
    out = page.after_save(request(), {"copied": [[meta["id"], copy["id"], copy["title"]]], "conversations": []},
                          pending, meta, "")
    assert out[page.ui.current] == {"id": copy["id"], "title": copy["title"], "renamed": True, "preset": "Terse"}
