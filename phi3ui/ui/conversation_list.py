"""The conversations: the list in the sidebar, opening, new, delete and restore, rename,
search, loading a file, downloading them all, saving the one on screen, and following
another tab.

They are kept in the browser (phi3ui/conversations.py has the rules). Gradio's own
`BrowserState` keeps one value under one key: every save rewrites all conversations (two tabs
would overwrite each other's), a full storage fails with nothing but a console message, and
other tabs are never told. So the page reads and writes localStorage itself, one entry per
conversation, in the `js=` step of its events (static/storage.js); every decision about what
to write is made here and in conversations.py.

Words: the storage *job* is what Python asks the browser to do (write, remove, open); the
storage *report* is what the browser says it did and holds (`storage.js`, `run`). *Saving*
writes the conversation on screen; *opening* shows a kept one; *leaving* is what happens to
the one on screen when another is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from .. import chat_presets, conversations
from .. import versions as branches
from ..display import to_display
from ..settings import SETTING

LEFT_MID_ANSWER = "You left this conversation while its answer was on its way."
STORAGE_FULL = ("⚠️ **Browser storage is full**: the latest change to “{title}” is not saved (what was saved "
                "before is kept, and the chat stays on screen). Delete or download old conversations, then go on.")
STORAGE_OFF = ("⚠️ **This browser keeps no storage for this page** (private window, or storage blocked): "
               "conversations last until the page is closed.")
COPIED = ("“{title}” was changed in another tab at the same time; this tab's version is kept as "
          "“{copy}”, beside the other.")
GONE = "That conversation is no longer kept here (deleted in another tab?): this is a new chat."


def readable(value: Any) -> dict | None:
    """A stored conversation, checked; None for anything that is not one."""
    try:
        return conversations.clean(value) if value else None
    except conversations.ConversationError:
        return None


def storage_problem(report: dict, title: str) -> str:
    """The note under the chat when the browser could not save: full, or no storage at all."""
    if report.get("failed") == "full":
        return STORAGE_FULL.format(title=to_display(title))
    return STORAGE_OFF if report.get("failed") else ""


def save_item(record: dict) -> dict:
    """A record to write, with the copy it becomes if another tab changed it meanwhile."""
    return {"record": record, "copy": conversations.conflict_copy(record)}


class ConversationEvents:
    """The conversations' events; mixed into `Page` (its components are `self.ui`)."""

    # --- settings, which each conversation keeps ------------------------------------------
    @property
    def prompt_locked(self) -> bool:
        """The host's system prompt is in force and the box is read-only."""
        host = getattr(self.backend, "host_prompt", None)
        return bool(host and host.locked and host.text)

    def setting_values(self, *gen) -> dict:
        """The sidebar's settings as a conversation keeps them; a locked system prompt is the
        host's, not the conversation's."""
        values = dict(zip(conversations.SETTINGS, gen))
        if self.prompt_locked:
            values["system_prompt"] = ""
        return values

    def setting_updates(self, settings: dict) -> list:
        """A conversation's settings for the sidebar, held to the sliders' ranges (the table's
        bounds); a setting it does not have (or a locked system prompt) is left as it is."""
        values = []
        for name in conversations.SETTINGS:
            setting, value = SETTING[name], settings.get(name)
            if name not in settings or (name == "system_prompt" and self.prompt_locked):
                values.append(gr.skip())
            elif name == "seed":
                low, high = setting.bounds()
                values.append(value if isinstance(value, int) and low <= value <= high else -1)
            elif setting.step is not None:  # a slider
                values.append(setting.clamp(value, self.backend.limits))
            else:
                values.append(value)
        return values

    # --- what the page shows -------------------------------------------------------------
    def view_of(self, record: dict | None, leaving: dict | None = None) -> dict:
        """What shows a conversation: its messages (the branch on screen, its other versions
        beside it), title and settings. A new chat (None) gets a new id and keeps the
        sidebar's settings, and the chat preset of the one it replaces."""
        ui = self.ui
        if record is None:
            preset = (leaving or {}).get("preset", "")
            return {ui.chatbot: [], ui.versions: branches.empty(), ui.current: conversations.new_meta(preset=preset),
                    ui.conv_title: ""}
        messages, versions = branches.unnest(record["messages"])
        return {ui.chatbot: conversations.display_messages(messages), ui.versions: versions,
                ui.current: conversations.meta_of(record), ui.conv_title: record["title"],
                **dict(zip(ui.gen, self.setting_updates(record["settings"])))}

    @staticmethod
    def conversation_list(report: dict, query: str, current: dict | None, choose: bool = True) -> gr.Radio | dict:
        """The sidebar's list: the kept conversations that match the search, newest first, with
        `current` chosen (`choose`), or the page's choice left as it is."""
        choices = conversations.listing(conversations.readable(report.get("conversations")), query or "")
        if not choose:
            return gr.update(choices=choices)
        current_id = (current or {}).get("id")
        return gr.Radio(choices=choices, value=current_id if current_id in {c[1] for c in choices} else None)

    # --- saving the conversation on screen --------------------------------------------------
    def save_items(self, report: dict, display: list, current: dict | None, versions: dict | None, *gen,
                   streaming: bool = False) -> list:
        """The chat on screen, with its versions, as writes for the browser; none when there is
        nothing new."""
        if not current:
            return []
        chat = conversations.stopped(display or [], streaming, LEFT_MID_ANSWER)
        record = conversations.build(current, chat, self.setting_values(*gen), readable(report.get("peek")),
                                     versions=versions)
        return [save_item(record)] if record else []

    def save_changed(self, request: gr.Request, report: dict, unsaved: Any, display: list, current: dict | None,
                     versions: dict | None, *gen) -> dict:
        """After a change to the chat (`after_change` marked it unsaved): the job that saves
        it, built from the chat and the conversation on screen as they are now, read in the
        same step, so it always goes to the conversation it belongs to."""
        if unsaved is None or not current:
            return {self.ui.save_job: None}
        return {**self.save_now(request, report, display, current, versions, *gen), self.ui.unsaved: None}

    def save_now(self, request: gr.Request, report: dict, display: list, current: dict | None,
                 versions: dict | None, *gen) -> dict:
        """The job that saves the conversation on screen as it is (after a setting or the title
        changed); none when nothing differs from what is kept."""
        writes = self.save_items(report, display, current, versions, *gen)
        return {self.ui.save_job: {"write": writes, "chat": self.sessions.saving_chat(request.session_hash)}
                if writes else None}

    def after_save(self, request: gr.Request, report: dict, job: dict | None, current: dict | None,
                   query: str) -> dict:
        """After the browser wrote: the list, a note if it could not, and the title (the first
        message names a conversation; another tab's change makes this one a copy)."""
        ui, current = self.ui, current or {}
        written = [w["record"] for w in (job or {}).get("write", []) if w["record"]["id"] == current.get("id")]
        chat = (job or {}).get("chat")
        # `current` is read before this step waits its turn: unless the save was of the chat
        # still on screen, the page may have gone to another conversation, chosen in the list,
        # and noted how that went
        mine = bool(written) and chat is not None and self.sessions.is_current(request.session_hash, chat)
        problem = storage_problem(report, current.get("title") or conversations.NEW_TITLE)
        result = {ui.conv_list: self.conversation_list(report, query, current, choose=mine),
                  ui.storage_note: problem if mine or problem else gr.skip()}
        if not mine:
            return result
        record = written[-1]
        copied = [c for c in report.get("copied", []) if c[0] == record["id"]]
        if copied:
            _, copy_id, copy_title = copied[-1]
            meta = {**current, "id": copy_id, "title": copy_title, "renamed": True}
            result[ui.storage_note] = COPIED.format(title=to_display(record["title"]), copy=to_display(copy_title))
            result[ui.conv_list] = self.conversation_list(report, query, meta)
        elif record["title"] != current.get("title"):
            meta = conversations.meta_of(record)
        else:
            return result
        return {**result, ui.current: meta, ui.conv_title: meta["title"]}

    # --- going to another conversation: these return the open job ---------------------------
    def leave_conversation(self, request: gr.Request, report: dict, streaming: bool, display: list,
                           current: dict | None, versions: dict | None, *gen) -> list:
        """The page goes to another conversation: this one's answer stops and writes nothing
        more, and the chat so far is saved (with a note if its answer was cut short)."""
        self.replace_chat(request)
        return self.save_items(report, display, current, versions, *gen, streaming=bool(streaming))

    def switch(self, request: gr.Request, data: gr.SelectData, report: dict, streaming: bool, display: list,
               current: dict | None, versions: dict | None, *gen) -> dict:
        return {"write": self.leave_conversation(request, report, streaming, display, current, versions, *gen),
                "open": data.value}

    def start_new(self, request: gr.Request, report: dict, streaming: bool, display: list, current: dict | None,
                  versions: dict | None, *gen) -> dict:
        return {"write": self.leave_conversation(request, report, streaming, display, current, versions, *gen),
                "new": True}

    def delete(self, request: gr.Request, report: dict, streaming: bool, display: list, current: dict | None,
               versions: dict | None, *gen) -> dict:
        """Remove the conversation on screen from the browser and show a new chat; the page
        offers it back (Restore) until the next delete."""
        self.replace_chat(request)
        if not current:
            return {"new": True}
        unsaved = conversations.build(current, display or [], self.setting_values(*gen), None, versions=versions)
        return {"remove": current["id"], "new": True, "deleted": unsaved}

    def restore_deleted(self, request: gr.Request, report: dict, streaming: bool, display: list,
                        current: dict | None, versions: dict | None, deleted: Any, *gen) -> dict:
        record = readable(deleted)
        if record is None:
            return {"error": "There is no deleted conversation to restore."}
        back = {"record": {**record, "rev": conversations.new_rev()}, "expect": None}
        return {"write": [*self.leave_conversation(request, report, streaming, display, current, versions, *gen),
                          back],
                "open": record["id"], "restored": True}

    def load_file(self, request: gr.Request, report: dict, streaming: bool, display: list, current: dict | None,
                  versions: dict | None, file: Any, *gen) -> dict:
        """A file of all conversations merges into the kept ones (conversations.merge), its
        chat presets into the visitor's own (chat_presets.merge), and the chat on screen
        stays; a single chat's JSON becomes a conversation and is shown."""
        path = getattr(file, "path", None) or (file.get("path") if isinstance(file, dict) else file)
        try:
            text = Path(str(path)).read_text()
            records, everything = conversations.read_file(text)
            presets = conversations.file_presets(text) if everything else []
        except (conversations.ConversationError, UnicodeDecodeError, OSError) as exc:
            return {"error": str(exc)}
        plan = conversations.merge(conversations.readable(report.get("conversations")), records)
        writes = [{"record": record, "expect": rev} for record, rev in plan.write]
        if not everything:
            left = self.leave_conversation(request, report, streaming, display, current, versions, *gen)
            return {"write": [*left, *writes], "open": plan.ids[0]}
        note = f"Loaded {len(records)} conversation(s): {plan.summary()}."
        kept = chat_presets.merge(chat_presets.readable(report.get("presets")), presets, self.host_names)
        if presets:
            note += f" {len(presets)} chat preset(s): {kept.summary()}."
        mine = current and current["id"] in {record["id"] for record, _ in plan.write}
        # the conversation on screen came in newer: show it, unless its answer is on its way
        return {"write": writes, "note": note, "presets": {"write": [p.record() for p in kept.write]},
                **({"open": current["id"]} if mine and not streaming else {"stay": True})}

    def show_opened(self, request: gr.Request, report: dict, job: dict | None, current: dict | None,
                    query: str) -> dict:
        """After the browser did the job: show the conversation it opened (or a new chat). If
        it could not save the chat being left, the page stays on it."""
        ui, job, current = self.ui, job or {}, current or {}
        self.sessions.show(request.session_hash)
        problem = storage_problem(report, current.get("title") or conversations.NEW_TITLE)
        if job.get("error"):  # an event's own errors would not show: a note says it
            problem = f"⚠️ {to_display(job['error'])}"
        if job.get("stay") or job.get("error") or (report.get("failed") == "full" and job.get("write")):
            return {ui.conv_list: self.conversation_list(report, query, current),
                    ui.storage_note: problem or job.get("note", "")}
        self.sessions.settle(request.session_hash)
        record = readable(report.get("open"))
        shown = self.view_of(record, current)
        notes = [problem, job.get("note", ""), GONE if job.get("open") and record is None else ""]
        shown.update({ui.conv_list: self.conversation_list(report, query, shown[ui.current]),
                      ui.storage_note: " ".join(n for n in notes if n), ui.unsaved: None})
        if "remove" in job:
            gone = readable(report.get("removed")) or readable(job.get("deleted"))
            shown[ui.deleted] = gone
            shown[ui.restore_btn] = gr.update(value=f"Restore “{gone['title']}”" if gone else "Restore",
                                              visible=gone is not None)
        elif job.get("restored"):
            shown.update({ui.deleted: None, ui.restore_btn: gr.update(visible=False)})
        return {**shown, **dict(zip([ui.message, ui.send, ui.stop_btn], self.controls(False)))}

    def open_page(self, request: gr.Request, report: dict, display: list, query: str) -> dict:
        """The page opens with the conversation this tab (or, in a new tab, the browser) had on
        screen last, or a new chat. A message sent before the page finished opening stays on
        screen and is saved."""
        ui = self.ui
        record = readable(report.get("open"))
        shown = self.view_of(record)
        if record is None:
            del shown[ui.chatbot], shown[ui.versions]
            shown[ui.unsaved] = display or None
        return {**shown, ui.conv_list: self.conversation_list(report, query, shown[ui.current]),
                ui.storage_note: storage_problem(report, conversations.NEW_TITLE)}

    # --- the list itself ---------------------------------------------------------------------
    @staticmethod
    def rename(title: str, current: dict | None) -> Any:
        """A title typed by hand; an empty one gives the automatic title back."""
        if not current:
            return gr.skip()
        title = " ".join(str(title or "").split())[: conversations.MAX_TITLE_CHARS]
        return {**current, "title": title, "renamed": bool(title)}

    def follow_other_tab(self, request: gr.Request, report: dict, query: str, current: dict | None) -> dict:
        """Another tab changed the kept conversations: the list follows, and so does the chat
        on screen if it was changed there and this tab is idle (the browser checks both)."""
        result = {self.ui.conv_list: self.conversation_list(report, query, current)}
        changed = readable(report.get("changed"))
        if changed and current and changed["id"] == current.get("id"):
            result.update(self.view_of(changed))
        return result

    @staticmethod
    def download_all(report: dict, _previous: str = "") -> tuple[str, str]:
        """The file of all conversations and chat presets, for the browser to download; or a
        note why not."""
        records, presets = conversations.readable(report.get("conversations")), chat_presets.readable(
            report.get("presets"))
        if report.get("failed"):
            return "", STORAGE_OFF
        if not records and not presets:
            return "", "There are no conversations to download yet."
        return conversations.file_text(records, presets=presets), ""
