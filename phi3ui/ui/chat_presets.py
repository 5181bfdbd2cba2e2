"""Chat presets in the sidebar: pick one (it fills the system prompt and the generation
settings, and the conversation keeps its name), save the settings as one, delete one of
your own. phi3ui/chat_presets.py has what a preset is and every rule.

The host's presets stay on the server: the page gets their names and picking one is done
here, so a locked server holds what a preset sets to its limits and keeps its own system
prompt whatever a visitor sends (raw HTTP reaches these events too). A visitor's own presets
are kept in the browser; the `presets` step of static/storage.js reads them and does the
*preset job* worked out here ({write: [preset], remove: [name], use: name}).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from .. import chat_presets
from ..chat_presets import ChatPreset, PresetError
from ..conversations import now_ms
from ..display import to_display
from ..settings import SETTING

HOST_MARK = " · this server's"  # after a host preset's name in the list
GONE = "That chat preset is no longer kept here (deleted in another tab?)."


class PresetEvents:
    """The chat presets' events; mixed into `Page` (its host presets are `self.host_presets`)."""

    host_presets: tuple[ChatPreset, ...]

    @property
    def host_names(self) -> set[str]:
        return {p.name for p in self.host_presets}

    def preset_choices(self, own: list[ChatPreset]) -> list[tuple[str, str]]:
        """(label, name) of the host's presets, then the visitor's own."""
        return [(f"{p.name}{HOST_MARK}", p.name) for p in self.host_presets] + [
            (p.name, p.name) for p in own if p.name not in self.host_names]

    def find_preset(self, name: Any, report: dict) -> ChatPreset | None:
        """The preset by that name: the host's first (a visitor's cannot take a host's name)."""
        own = chat_presets.readable(report.get("presets"))
        return next((p for p in (*self.host_presets, *own) if p.name == name), None)

    def show_presets(self, report: dict, job: dict | None, current: dict | None) -> dict:
        """After the browser did a preset job (or only read them): the list, with the preset
        of the conversation on screen chosen, and a note if the browser could not write."""
        ui, job, current = self.ui, job or {}, current or {}
        choices = self.preset_choices(chat_presets.readable(report.get("presets")))
        result = {ui.preset_job: None}
        if report.get("failed") and (job.get("write") or job.get("remove")):
            result[ui.preset_note] = ("⚠️ **Browser storage is full**: the preset is not saved." if
                                      report["failed"] == "full" else
                                      "⚠️ This browser keeps no storage for this page: presets cannot be saved.")
        elif "use" in job:
            current = {**current, "preset": job["use"]}
            result[ui.current] = current
        chosen = current.get("preset")
        result[ui.chat_preset] = gr.Dropdown(choices=choices, value=chosen if chosen in {c[1] for c in choices}
                                             else None)
        return result

    def pick_preset(self, report: dict, name: Any, current: dict | None) -> dict:
        """Fill the settings from a preset, held to the host's limits; a locked system prompt
        stays the host's (setting_updates). The conversation keeps the preset's name."""
        ui = self.ui
        preset = self.find_preset(name, report)
        if preset is None:
            return {ui.preset_note: GONE if name else ""}
        kept = self.prompt_locked and preset.system_prompt
        note = "This server keeps its own system prompt; the preset's settings apply." if kept else ""
        return {**dict(zip(ui.gen, self.setting_updates(preset.values()))), ui.preset_note: note,
                ui.preset_name: preset.name, ui.current: {**(current or {}), "preset": preset.name}}

    def save_preset(self, report: dict, name: Any, *gen) -> dict:
        """The settings on screen as a preset of the visitor's own (the same name replaces it);
        the conversation on screen then uses it."""
        ui = self.ui
        try:
            name = chat_presets.name_of(name)
            if name in self.host_names:
                raise PresetError(f"“{name}” is one of this server's presets: give yours another name.")
            own = {p.name for p in chat_presets.readable(report.get("presets"))}
            if name not in own and len(own) >= chat_presets.MAX_PRESETS:
                raise PresetError(f"You have {len(own)} presets, the most this page keeps: delete one first.")
            values = {k: ("" if v is None and SETTING[k].type is str else v)  # an empty text box
                      for k, v in self.setting_values(*gen).items()}
            preset = chat_presets.validate(
                {"name": name, "system_prompt": values.pop("system_prompt"), "settings": values},
                self.backend.limits, updated=now_ms())
        except PresetError as exc:
            return {ui.preset_job: None, ui.preset_note: f"⚠️ {to_display(str(exc))}"}
        return {ui.preset_job: {"write": [preset.record()], "use": name},
                ui.preset_note: f"Saved “{to_display(name)}”."}

    def delete_preset(self, report: dict, name: Any, current: dict | None) -> dict:
        """Remove the chosen preset of the visitor's own; the host's stay."""
        ui = self.ui
        if not name:
            return {ui.preset_job: None, ui.preset_note: "Choose one of your presets above to delete it."}
        if name in self.host_names:
            return {ui.preset_job: None,
                    ui.preset_note: f"“{to_display(name)}” is this server's; only your own presets can be deleted."}
        use = {"use": ""} if (current or {}).get("preset") == name else {}
        return {ui.preset_job: {"remove": [name], **use}, ui.preset_note: f"Deleted “{to_display(name)}”."}
