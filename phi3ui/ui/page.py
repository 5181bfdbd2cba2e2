"""`Page`: the page around one backend. layout.py places the components; every event is wired
here, in `_setup_events`, by name. The page's own events are private (not in the API page or
gradio_client), but raw HTTP can still reach them, so each does the server-side checks itself
and its work is bounded by `Limits`; only `/chat` is an API endpoint."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from ..chat import ChatBackend, LoadRequest
from ..chat_presets import ChatPreset
from ..service import ChatService
from ..sessions import Sessions
from . import gradio_internals
from .chat import ChatEvents
from .chat_presets import PresetEvents
from .conversation_list import ConversationEvents
from .layout import Components, render
from .model_panel import ModelPanel
from .versions_row import VersionEvents

PHONE_WIDTH = 768  # below this many CSS pixels the sidebar starts closed


def storage_step(step: str, inputs: dict[str, Any]) -> dict:
    """An event's inputs, by name, and its `js=` step: static/storage.js's step `step` reads
    and replaces them by those names before they go to Python (in this order)."""
    names = json.dumps(list(inputs))
    return {"inputs": list(inputs.values()),
            "js": f"(...values) => window.phi3ui.step({json.dumps(step)}, {names}, values)"}


def close_on_phone(width: float | None) -> Any:
    """On a phone-sized screen the sidebar starts closed, and closes when a conversation is chosen."""
    return gr.update(open=False) if width and width < PHONE_WIDTH else gr.skip()


@dataclass
class Page(ChatEvents, VersionEvents, ConversationEvents, PresetEvents, ModelPanel):
    """Builds the page around one backend; `ui` holds its components once built."""

    backend: ChatBackend
    lock_settings: bool = False
    # Each browser session's answer in flight, early Stops, and which chat is on screen.
    sessions: Sessions = field(default_factory=Sessions)
    trust_proxy: bool = False  # the client is the first X-Forwarded-For entry (fairness.client_address)
    # The one way in for answers, with the fair-use limits, shared with /v1; a default one
    # (no per-client limits) when not given.
    service: ChatService | None = None
    startup: LoadRequest | None = None  # the model the server starts with, shown before it is loaded
    host_presets: tuple[ChatPreset, ...] = ()  # the host's chat presets (`--chat-presets`)
    ui: Components | None = None
    # Budgets being worked out now. They run outside the queue (on every keystroke), so raw
    # HTTP calls could otherwise ask for any number at once.
    _budget_slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(4))

    def __post_init__(self) -> None:
        if self.service is None:
            self.service = ChatService(self.backend)

    def system_prompt_box(self) -> gr.Textbox:
        """Editable, with the host's prompt as its default; read-only when the host locked it,
        and empty (the server fills it in) when the host keeps it private."""
        host = self.backend.host_prompt
        if not (host.locked and host.text):
            return gr.Textbox(label="System prompt", lines=3, value=host.text, elem_id="system-prompt")
        return gr.Textbox(label="System prompt (set by the host)", lines=3, interactive=False,
                          value=host.text if host.shown else "", elem_id="system-prompt",
                          placeholder="The host's system prompt is in force.",
                          info="This server answers with its own system prompt; it cannot be changed here.")

    def build(self) -> gr.Blocks:
        demo, self.ui = render(self)
        with demo:
            self._setup_events(demo)
        return demo

    def _setup_events(self, demo: gr.Blocks) -> None:
        """Every event of the page."""
        c = self.ui
        gen = c.settings  # by name, in the table's order (the Python functions take them last)
        quick = dict(queue=False, api_visibility="private", show_progress="hidden")
        controls = [c.message, c.send, c.stop_btn]
        details_out = c.details
        chat_now = {"chatbot": c.chatbot, "message": c.message, **gen}
        generate = dict(fn=self.respond, inputs=[c.chatbot, *gen.values()], outputs=c.chatbot,
                        concurrency_limit=self.service.places, concurrency_id="generate",
                        api_visibility="private", show_progress="hidden")
        details = dict(fn=self.details, inputs=list(chat_now.values()), outputs=details_out, **quick)
        after_change = dict(fn=self.after_change, inputs=list(chat_now.values()),
                            outputs=[c.unsaved, *details_out, *controls], **quick)
        started = dict(fn=lambda: self.controls(True), inputs=None, outputs=controls, **quick)
        idle = dict(fn=lambda: self.controls(False), inputs=None, outputs=controls, **quick)
        row_out = [c.version_md, c.previous_version, c.next_version, c.fork_btn]
        row = dict(fn=self.version_row, inputs=[c.chatbot, c.versions], outputs=row_out, **quick)
        row_off = dict(fn=lambda: (gr.skip(), *[gr.update(interactive=False)] * 3), outputs=row_out, **quick)
        # The browser's own flags: an answer is streaming, and the tab is busy until it is saved
        # (storage.js reads them when leaving a conversation and when another tab wrote).
        answering = dict(fn=None, outputs=None, **storage_step("answering", {}), **quick)
        answer_ended = dict(fn=None, outputs=None, **storage_step("answer_ended", {}), **quick)
        answered = dict(fn=None, outputs=None, **storage_step("answered", {}), **quick)
        answers = []  # events that stream an answer: going to another conversation cancels them
        # The chat presets: the browser does the preset job and lists the visitor's own, then the
        # list shows them with the conversation's preset chosen (after every change of conversation).
        show_presets = dict(fn=self.show_presets, outputs=[c.preset_job, c.preset_note, c.current, c.chat_preset],
                            **storage_step("presets", {"storage_report": c.storage_report, "preset_job": c.preset_job,
                                                       "current": c.current}), **quick)

        # A step in Python works out a job for the browser's storage, the browser does it
        # (`do_job`: writes, then a removal and the conversation to open, then the list) and the
        # next step shows how it went. Saving the chat on screen and going to another
        # conversation keep their jobs apart (`save_job`, `open_job`): a save in between the
        # steps of a change of conversation must not replace its job, nor do it.
        def do_job(job: gr.JSON) -> dict:
            return storage_step("do_job", {"storage_report": c.storage_report, "job": job, "current": c.current,
                                           "search": c.search})

        listed = [c.conv_list, c.current, c.conv_title, c.storage_note]
        save_changed = dict(fn=self.save_changed, outputs=[c.save_job, c.unsaved], **quick, **storage_step(
            "peek", {"storage_report": c.storage_report, "unsaved": c.unsaved, "chatbot": c.chatbot,
                     "current": c.current, "versions": c.versions, **gen}))
        save_now = dict(fn=self.save_now, outputs=[c.save_job], **quick, **storage_step(
            "peek", {"storage_report": c.storage_report, "chatbot": c.chatbot, "current": c.current,
                     "versions": c.versions, **gen}))
        after_save = dict(fn=self.after_save, outputs=listed, **do_job(c.save_job), **quick)

        def saved(event: Any, save: dict = save_changed) -> Any:
            return event.then(**save).then(**after_save)

        # Going to another conversation (or a new one): the one on screen is saved first.
        opened = [c.chatbot, c.versions, c.current, c.conv_title, *gen.values(), c.conv_list, c.storage_note, c.unsaved,
                  c.deleted, c.restore_btn, *controls]
        show_opened = dict(fn=self.show_opened, outputs=opened, **do_job(c.open_job), **quick)
        remember = dict(fn=None, outputs=None, **storage_step("remember", {"current": c.current}), **quick)
        listing = {"storage_report": c.storage_report, "search": c.search, "current": c.current}
        listed = dict(fn=self.conversation_list, outputs=c.conv_list, **storage_step("list", listing), **quick)
        close_sidebar = dict(fn=close_on_phone, outputs=[c.sidebar], **quick,
                             **storage_step("viewport", {"viewport_width": c.viewport_width}))

        def go_to(trigger: Any, fn: Any, extra: dict | None = None, read: str = "leave", away: bool = True) -> Any:
            """`fn` decides where to go (and what to save of the chat on screen), the browser
            does it, `show_opened` shows the result. `away`: the page may leave the chat on
            screen (its answer is cancelled; on a phone the sidebar closes to show the chat)."""
            step = storage_step(read, {"storage_report": c.storage_report, "streaming": c.streaming,
                                       "chatbot": c.chatbot, "current": c.current, "versions": c.versions,
                                       **(extra or {}), **gen})
            went = trigger(fn=fn, outputs=c.open_job, cancels=answers if away else None, **step, **quick)
            if away:  # closed before the chat shows: a sidebar opened after that stays open
                went = went.success(**close_sidebar)
            went = went.success(**show_opened)
            if away:
                went = went.then(**answered)
            return went.then(**remember).then(**details).then(**row)

        def send(event: Any) -> None:
            event.success(**row_off)  # no other version or fork while the answer comes
            answer = event.success(**answering).success(**generate)
            answers.append(answer)
            # the tab counts as answering until its answer is saved: another tab's change shown
            # before that would replace the chat about to be saved (and skip the two-tabs copy)
            ended = answer.then(**answer_ended).then(**{**after_change, "fn": self.after_answer,
                                                        "outputs": [c.unsaved, *details_out]})
            ended.then(**row)
            saved(ended).then(**answered).then(**idle)  # Send is back once the answer is kept

        sent = [c.message, c.chatbot, c.send, c.stop_btn]
        # Queued, though quick: Gradio shows a queued event's refusal as a toast, and an
        # unqueued one's only as "Error" on the chat.
        check = dict(fn=self.submit, inputs=[c.message, c.chatbot, *gen.values()], outputs=sent,
                     **{**quick, "queue": True}, concurrency_limit=4, concurrency_id="check")
        for trigger in (c.message.submit, c.send.click):
            send(trigger(**check))
        send(c.chatbot.example_select(self.example, None, c.message, **quick).success(**check))
        chat_versions = [c.chatbot, c.versions]
        send(c.chatbot.retry(self.retry, chat_versions, chat_versions, **quick).success(**started))
        send(c.chatbot.edit(self.edit, chat_versions, chat_versions, **quick).success(**started))
        undone = c.chatbot.undo(self.undo, chat_versions, [c.chatbot, c.message, c.versions], **quick)
        saved(undone.then(**after_change)).then(**row)
        c.chatbot.select(self.pick, chat_versions, c.versions, **quick).then(**row)
        for button, fn in ((c.previous_version, self.previous_version), (c.next_version, self.next_version)):
            saved(button.click(fn, chat_versions, chat_versions, **quick).then(**after_change)).then(**row)
        c.stop_btn.click(self.stop, None, None, **quick)

        go_to(c.conv_list.select, self.switch)
        for trigger in (c.new_chat.click, c.clear.click):
            go_to(trigger, self.start_new)
        for trigger in (c.delete_btn.click, c.chatbot.clear):
            go_to(trigger, self.delete)
        go_to(c.restore_btn.click, self.restore_deleted, {"deleted": c.deleted})
        go_to(c.fork_btn.click, self.fork)
        go_to(c.upload.upload, self.load_file, {"file": c.upload}, read="merge")
        go_to(c.import_all.upload, self.load_file, {"file": c.import_all}, read="merge", away=False).then(
            **show_presets)
        saved(c.conv_title.submit(self.rename, [c.conv_title, c.current], c.current, **quick), save_now)
        c.search.change(**listed, trigger_mode="always_last")
        c.assets.click(self.follow_other_tab, outputs=[c.conv_list, c.chatbot, c.versions, c.current, c.conv_title,
                                                        *gen.values()],
                       trigger_mode="always_last", **storage_step("sync", listing), **quick).then(**details).then(
            **row).then(**show_presets)
        c.download_all_btn.click(self.download_all, outputs=[c.download_text, c.storage_note], **quick,
                                 **storage_step("everything", {"storage_report": c.storage_report,
                                                               "download_text": c.download_text})).success(
            None, outputs=None, **storage_step("download", {"download_text": c.download_text}), **quick)

        c.current.change(**show_presets)
        chosen = {"storage_report": c.storage_report, "chat_preset": c.chat_preset, "current": c.current}
        saved(c.chat_preset.input(self.pick_preset, outputs=[*gen.values(), c.preset_note, c.preset_name, c.current],
                                  **storage_step("presets", chosen), **quick), save_now)
        for button, fn, read in ((c.save_preset, self.save_preset, {"preset_name": c.preset_name, **gen}),
                                 (c.delete_preset, self.delete_preset, {"chat_preset": c.chat_preset,
                                                                        "current": c.current})):
            preset_job = button.click(fn, outputs=[c.preset_job, c.preset_note], **quick,
                                      **storage_step("presets", {"storage_report": c.storage_report, **read}))
            saved(preset_job.then(**show_presets), save_now)

        demo.load(**close_sidebar)
        saved(demo.load(self.open_page, outputs=[c.chatbot, c.versions, c.current, c.conv_title, *gen.values(),
                                                 c.conv_list, c.storage_note, c.unsaved], **quick,
                        **storage_step("open_last", {"storage_report": c.storage_report, "chatbot": c.chatbot,
                                                     "search": c.search}))).then(
            **remember).then(**details).then(**row).then(
            **listed).then(  # a search typed while the page was loading
            None, outputs=None, **storage_step("loaded", {}), **quick)
        preparation = dict(fn=self.preparation, outputs=[c.preparing, c.model_md, c.poll], **quick)
        demo.load(**preparation)
        # the budget, once there is a model to count with (not `details`: it rewrites the chat's files)
        c.poll.tick(**preparation).then(self.budget, list(chat_now.values()), [c.budget_md, c.inspector], **quick)
        demo.unload(self.tab_closed)
        for box in (c.message, *gen.values()):
            box.change(self.budget, list(chat_now.values()), [c.budget_md, c.inspector], trigger_mode="always_last",
                       **quick)
        # A conversation keeps the settings the visitor chose: on `input` (and a slider's ↺, which
        # sends only `release`), as `change` would also save each setting a change of
        # conversation puts on screen.
        for box in gen.values():
            by_visitor = [box.input, box.release] if isinstance(box, gr.Slider) else [box.input]
            gr.on(by_visitor, **{**save_now, "trigger_mode": "always_last"}).then(**after_save)
        c.model_box.change(self.defaults_for, [c.model_box, c.export_preset], c.group_size, **quick)
        c.export_preset.change(self.apply_preset, [c.export_preset, c.model_box],
                        [c.weight_format, c.group_size, c.ratio, c.sym, c.all_layers], **quick)
        c.export_btn.click(
            self.export_and_load,
            [c.model_box, c.weight_format, c.group_size, c.ratio, c.sym, c.all_layers, c.device, c.engine,
             c.prompt_lookup],
            [c.export_log, c.model_md], concurrency_limit=1, concurrency_id="export", api_visibility="private",
        )
        chat = gr.api(self.api_chat, api_name="chat", concurrency_limit=self.service.places,
                      concurrency_id="generate")
        # A refusal before Gradio queues the call costs it nothing (no session state of its own).
        gradio_internals.set_validator(demo, chat, self.api_door)
        gradio_internals.build_configs_when_asked()
