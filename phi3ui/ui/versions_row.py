"""Answer versions on the page: retry, edit and undo keep the `versions` state in step with
the chat, and the row under the chat (‹ n/m ›, "Fork from here") acts on one message.

Gradio's Chatbot has no control of its own on each message for this (its `options` show only
under the last answer, and its toolbar buttons act on the whole chat), so the row acts on the
message last clicked in the chat (`Chatbot.select`), or else the last one that has versions.
phi3ui/versions.py has the tree; this only converts the page's chat to a record's messages
and back (conversations.record_messages / display_messages, which escape what is shown).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import gradio as gr

from .. import conversations
from .. import prompt as prompts
from .. import versions as branches
from ..display import file_message, file_of, from_display, shown, to_display

NO_FOCUS = "Click a message to fork from it or to see its versions."


class VersionEvents:
    """The versions' events; mixed into `Page`."""

    @staticmethod
    def retry(display: list, versions: dict | None) -> tuple[list, dict]:
        """Back to the last user message, its answer kept as another version; `respond`
        then answers it anew."""
        last_user = max((i for i, m in enumerate(display) if m["role"] == "user"), default=-1)
        kept = display[: last_user + 1]  # the message and the files under it
        _, state = branches.set_aside(conversations.record_messages(display), versions,
                                      len(conversations.record_messages(kept)))
        return kept, state

    @staticmethod
    def undo(display: list, versions: dict | None) -> tuple[list, str, dict]:
        """Remove the last exchange (with its versions) and give its message's text back to
        the box (its files go with it: attach them again)."""
        last_user = max((i for i, m in enumerate(display) if m["role"] == "user" and file_of(m) is None),
                        default=None)
        if last_user is None:
            return display, "", versions or branches.empty()
        kept = display[:last_user]
        return (kept, from_display(prompts.message_text(display[last_user]["content"])),
                branches.cut_to(versions, conversations.record_messages(kept)))

    @staticmethod
    def edit(display: list, versions: dict | None, data: gr.EditData) -> tuple[list, dict]:
        """Continue from an edited user message, or from the message whose file was edited (the
        file keeps its name); the branch from it as it was (Gradio has already put the new text
        in `display`) is kept as another version. The box shows the escaped text;
        round-tripping escapes anything typed anew."""
        index, text = data.index, from_display(str(data.value))
        file = file_of(display[index]) if index < len(display) else None
        changed = file_message(replace(file, text=text)) if file else {"role": "user", "content": shown(text)}
        end = index + 1
        while end < len(display) and file_of(display[end]) is not None:  # the message's other files stay
            end += 1
        edited = [*display[:index], changed, *display[index + 1:end]]
        position = conversations.record_index(display, index)
        try:
            previous = prompts.message_text(data.previous_value)
        except prompts.PromptError:  # not text as Gradio sends it: the edit goes on without keeping it
            return edited, branches.cut_to(versions, conversations.record_messages(edited)[:position])
        before = [*display[:index], {**display[index], "content": previous}, *display[index + 1:]]
        _, state = branches.set_aside(conversations.record_messages(before), versions, position)
        return edited, state

    @staticmethod
    def pick(display: list, versions: dict | None, data: gr.SelectData) -> dict:
        """A message clicked in the chat: the row acts on it."""
        index = conversations.record_index(display, data.index) if isinstance(data.index, int) else data.index
        return branches.clicked(versions, conversations.record_messages(display), index)

    @staticmethod
    def other_version(display: list, versions: dict | None, step: int) -> tuple[list, dict]:
        """‹ (-1) or › (+1): the neighbouring version of the row's message, shown with
        everything after it; the model then reads that branch."""
        messages = conversations.record_messages(display)
        position = branches.focus(versions, messages)
        if position is None:
            return gr.skip(), gr.skip()
        chat, state = branches.switch(messages, versions, position, step)
        return conversations.display_messages(chat), state

    def previous_version(self, display: list, versions: dict | None) -> tuple[list, dict]:
        return self.other_version(display, versions, -1)

    def next_version(self, display: list, versions: dict | None) -> tuple[list, dict]:
        return self.other_version(display, versions, 1)

    @staticmethod
    def version_row(display: list, versions: dict | None) -> tuple[Any, Any, Any, Any]:
        """The row: which message it acts on and its version (‹ n/m ›), and the buttons."""
        messages = conversations.record_messages(display)
        position = branches.focus(versions, messages)
        if position is None:
            return (gr.update(value=NO_FOCUS if messages else "", visible=bool(messages)),
                    gr.update(interactive=False), gr.update(interactive=False), gr.update(interactive=bool(messages)))
        n, m = branches.counts(versions, position)
        who = "answer" if messages[branches.index_of(messages, position)]["role"] == "assistant" else "message"
        text = to_display(f"Message {position + 1} ({who}) · version {n} of {m}")
        return (gr.update(value=text, visible=True), gr.update(interactive=n > 1), gr.update(interactive=n < m),
                gr.update(interactive=True))

    def fork(self, request: gr.Request, report: dict, streaming: bool, display: list, current: dict | None,
             versions: dict | None, *gen) -> dict:
        """"Fork from here": a new conversation with the messages up to the row's message (the
        last one when none was clicked), titled after them (or this one's own name); it is
        saved and shown, and this one is left as it was."""
        messages = conversations.record_messages(display)
        if not messages:
            return {"error": "There is nothing to fork yet."}
        position = branches.focus(versions, messages)
        position = len(branches.positions(messages)) - 1 if position is None else position
        kept = branches.up_to(messages, position)
        named = (current or {}).get("title") if (current or {}).get("renamed") else ""
        meta = conversations.new_meta(f"{named or conversations.title_for(kept)} (fork)", renamed=True)
        chat = conversations.display_messages(kept)
        record = conversations.build(meta, chat, self.setting_values(*gen), None)
        left = self.leave_conversation(request, report, streaming, display, current, versions, *gen)
        return {"write": [*left, {"record": record, "expect": None}], "open": record["id"]}
