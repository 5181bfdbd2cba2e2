"""Chat presets: a name, a system prompt and generation settings, picked per conversation.

A preset, as a host's file gives it, the browser keeps it and the file of all conversations
carries it:

    {"name": "Terse", "system_prompt": "Answer in one sentence.",
     "settings": {"temperature": 0.0, "max_new_tokens": 128, …}}

`settings` holds the other rows of settings.GENERATION_TABLE, by name; a row not named takes
the table's default, so a preset is always a whole set and picking one fills every
generation setting. "Chat preset" is the word on the page: "export preset" is something else
(settings.PRESETS, how a model is exported).

Two kinds:
- The host's: `--chat-presets FILE`, a JSON list of presets read once at start
  (`read_host_file`). A file that cannot be read, or a preset the table refuses, stops the
  start with a message naming the preset and the setting. On a server whose system prompt is
  locked (`--lock-settings` with `--system-prompt`), a preset's system prompt does not apply:
  the host's stays, and the server holds every value to its limits.
- A visitor's own: saved from the page and kept in the browser (localStorage, key
  `phi3ui:preset:<name>`, the preset as JSON with `"updated": ms`), never on the server.
  What the browser or a file gives is cleaned (`clean`), not trusted: values of the wrong kind
  are left out (the table's defaults stand in) and the page holds the rest to the host's
  limits when the preset is picked. A visitor's preset cannot take a host preset's name.

No Gradio here: phi3ui/ui/chat_presets.py shows them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .json_answers import schema_problem
from .settings import PAGE_SETTINGS, SETTING, GenerationSettings, Limits, SettingsError, stored_values, typed

STORAGE_PREFIX = "phi3ui:preset:"  # + name: one localStorage entry per preset of the visitor's own
MAX_NAME_CHARS = 60
MAX_PRESETS = 100  # in a host's file, and saved from the page
SYSTEM = "system_prompt"
TUNED = tuple(name for name in PAGE_SETTINGS if name != SYSTEM)  # what a preset's `settings` holds
FIELDS = ("name", "system_prompt", "settings")


class PresetError(ValueError):
    """A preset or presets file that cannot be used; the text says why, as is."""


@dataclass(frozen=True)
class ChatPreset:
    """One preset; `settings` has every TUNED name."""

    name: str
    system_prompt: str = ""
    settings: dict = field(default_factory=dict)
    updated: int = 0  # a visitor's own: when it was saved (of two versions, the later one is kept)

    def values(self) -> dict:
        """What a conversation gets from it: every GENERATION_TABLE name, in the table's order."""
        return {name: self.system_prompt if name == SYSTEM else self.settings[name] for name in PAGE_SETTINGS}

    def record(self) -> dict:
        """As the browser keeps it and files carry it."""
        return {"name": self.name, "system_prompt": self.system_prompt, "settings": dict(self.settings),
                "updated": self.updated}


def defaults(limits: Limits | None = None) -> dict:
    """The table's defaults, held to the host's limits (a lower token cap)."""
    return {name: SETTING[name].clamp(SETTING[name].default, limits) if SETTING[name].step else SETTING[name].default
            for name in TUNED}


def name_of(value: Any) -> str:
    """A preset's name on one line; a PresetError when there is none or it is too long."""
    if not isinstance(value, str) or not value.split():
        raise PresetError("A chat preset needs a name.")
    name = " ".join(value.split())
    if len(name) > MAX_NAME_CHARS:
        raise PresetError(f"A chat preset's name is at most {MAX_NAME_CHARS} characters, not {len(name)}.")
    return name


def name_or_none(value: Any) -> str:
    """The preset a stored conversation names, or "" when it names none that could be one."""
    try:
        return name_of(value)
    except PresetError:
        return ""


def _setting(name: str, value: Any, limits: Limits) -> Any:
    """One setting of a preset, checked against its row of the table."""
    setting = SETTING[name]
    if setting.type is str and not isinstance(value, str):
        raise SettingsError(f"{name} must be text, not {value!r}.")
    if name == "seed" and value in (None, -1):  # -1: random, as the page's box has it
        return None
    value = typed(name, setting.type, value)
    if problem := setting.check(value, limits):
        raise SettingsError(problem)
    return value


def validate(item: Any, limits: Limits, updated: int = 0) -> ChatPreset:
    """A preset as a host's file gives it or the page saves it, checked against the table and
    the host's limits; a PresetError says what is wrong."""
    if not isinstance(item, dict):
        raise PresetError('A chat preset is an object: {"name": …, "system_prompt": …, "settings": {…}}.')
    if unknown := sorted(set(item) - set(FIELDS)):
        raise PresetError(f"Unknown field(s) {', '.join(map(repr, unknown))}; a chat preset has {', '.join(FIELDS)}.")
    name = name_of(item.get("name"))
    system, given = item.get(SYSTEM, ""), item.get("settings", {})
    if not isinstance(system, str):
        raise PresetError("system_prompt must be text.")
    if not isinstance(given, dict):
        raise PresetError("settings must be an object of generation settings by name.")
    if SYSTEM in given:
        raise PresetError("system_prompt goes beside settings, not inside them.")
    if unknown := sorted(set(given) - set(TUNED)):
        raise PresetError(f"Unknown setting(s) {', '.join(map(repr, unknown))}; the settings are {', '.join(TUNED)}.")
    try:
        values = {**defaults(limits), **{key: _setting(key, value, limits) for key, value in given.items()}}
        GenerationSettings(max_new_tokens=values["max_new_tokens"], system_prompt=system).validate(limits)  # its length
    except SettingsError as exc:
        raise PresetError(str(exc)) from None
    if values["answer_json"] and values["json_schema"].strip() and (problem := schema_problem(values["json_schema"])):
        raise PresetError(problem)
    return ChatPreset(name, system, values, updated)


def read_host_file(path: str | Path, limits: Limits) -> tuple[ChatPreset, ...]:
    """The host's presets (`--chat-presets`); a PresetError names the file, the preset and
    what is wrong with it."""
    where = f"--chat-presets {path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PresetError(f"{where}: cannot be read ({exc.strerror or exc}).") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PresetError(f"{where}: is not JSON ({exc}).") from None
    if not isinstance(data, list) or not data:
        raise PresetError(f'{where}: must hold a list of chat presets, such as '
                          f'[{{"name": "Terse", "system_prompt": "Answer briefly.", "settings": {{"temperature": 0}}}}].')
    if len(data) > MAX_PRESETS:
        raise PresetError(f"{where}: holds {len(data)} chat presets; at most {MAX_PRESETS}.")
    presets: list[ChatPreset] = []
    for i, item in enumerate(data, 1):
        label = f"preset {i}" + (f" ({item['name']!r})" if isinstance(item, dict) and "name" in item else "")
        try:
            preset = validate(item, limits)
        except PresetError as exc:
            raise PresetError(f"{where}, {label}: {exc}") from None
        if any(p.name == preset.name for p in presets):
            raise PresetError(f"{where}, {label}: another preset already has that name.")
        presets.append(preset)
    return tuple(presets)


def clean(item: Any) -> ChatPreset:
    """A visitor's preset as this module writes it, from what the browser or a file gave; a
    PresetError only when it is not a preset at all (no object, no name)."""
    if not isinstance(item, dict):
        raise PresetError("A chat preset must be an object.")
    system = item.get(SYSTEM)
    given = stored_values(item.get("settings"))
    updated = item.get("updated")
    ok = isinstance(updated, (int, float)) and not isinstance(updated, bool) and math.isfinite(updated)
    return ChatPreset(name_of(item.get("name")), system if isinstance(system, str) else "",
                      {**defaults(), **{k: v for k, v in given.items() if k in TUNED}},
                      int(updated) if ok and updated >= 0 else 0)


def readable(items: Any) -> list[ChatPreset]:
    """The presets among what the browser sent, by name; entries that are not are left out."""
    kept: dict[str, ChatPreset] = {}
    for item in items if isinstance(items, list) else []:
        try:
            preset = clean(item)
        except PresetError:
            continue
        kept.setdefault(preset.name, preset)
    return sorted(kept.values(), key=lambda p: p.name.casefold())


@dataclass
class PresetMerge:
    """What loading a file adds to a visitor's presets: the ones to write, and counts."""

    write: list[ChatPreset] = field(default_factory=list)
    added: int = 0
    updated: int = 0
    already: int = 0
    taken: int = 0  # named like one of the host's: left out

    def summary(self) -> str:
        parts = [f"{self.added} added" if self.added else "", f"{self.updated} updated" if self.updated else "",
                 f"{self.already} already here" if self.already else "",
                 f"{self.taken} left out (the name of one of this server's)" if self.taken else ""]
        return ", ".join(p for p in parts if p)


def merge(existing: list[ChatPreset], incoming: list[ChatPreset], reserved: set[str]) -> PresetMerge:
    """Fold loaded presets into a visitor's own, by name, as conversations merge: one with a
    kept name replaces it only if it was saved later and differs; new names are added."""
    mine = {p.name: p for p in existing}
    plan = PresetMerge()
    for preset in incoming:
        kept = mine.get(preset.name)
        if preset.name in reserved:
            plan.taken += 1
        elif kept is None:
            plan.write.append(preset)
            plan.added += 1
            mine[preset.name] = preset
        elif preset.updated > kept.updated and preset.values() != kept.values():
            plan.write.append(preset)
            plan.updated += 1
            mine[preset.name] = preset
        else:
            plan.already += 1
    return plan
