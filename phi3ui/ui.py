"""The Gradio page: chat in the middle, export and generation settings in the sidebar.

Components are declared first and every event is wired in `_wire`, in one place. The page
only calls `ChatBackend`; all model work happens there.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gradio as gr

from . import downloads, window
from . import prompt as prompts
from .chat import ChatBackend
from .display import (
    STOPPED,
    chat_messages,
    from_display,
    note,
    shown_messages,
    stats_title,
    stored_chat,
    to_display,
)
from .engines import ENGINES, available_devices
from .export import ExportError, default_settings
from .fairness import Gate, LimitReached, Ticket, client_address
from .pump import pump
from .sessions import Sessions
from .settings import (
    BUNDLED_EXPORT,
    PRESETS,
    WEIGHT_FORMATS,
    ExportSettings,
    GenerationSettings,
    RuntimeSettings,
    SettingsError,
    cache_root,
    export_preset,
)
from .structured import STRUCTURE_MARK

log = logging.getLogger(__name__)

STREAM_INTERVAL_S = 0.05  # batch tokens: one page update per 50 ms at most
EXAMPLES = [
    "Explain what int4 weight compression does to a language model, in three sentences.",
    "Write a Python function that checks whether a string is a palindrome.",
    "What is the capital of France?",
    "把“早上好”翻译成英语和日语。",
]
USER_ERRORS = (SettingsError, prompts.PromptError, ExportError)
# What a visitor of a locked server reads when the model fails: the exception's own text
# can name server paths or internals, so it goes to the log only.
MODEL_FAILED = "The model could not finish this answer. The details are in the server's log."
EMPTY_STATE = (
    "### 💬 Ask anything\n\n"
    "Everything runs on this machine; nothing leaves it. Pick an example or type below."
)


def browser_secret() -> str:
    """The key the browser's saved chat is encrypted with, kept on disk so saved chats
    survive a server restart (Gradio's default is a new key per process)."""
    path = cache_root() / "browser-state-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


@dataclass
class Page:
    """Builds the page around one backend."""

    backend: ChatBackend
    lock_settings: bool = False
    concurrency_limit: int = 1
    # Each browser session's answer in flight, early Stops, and which chat is on screen.
    sessions: Sessions = field(default_factory=Sessions)
    # Fair use: one answer at a time per session (and per client), a request rate per client.
    gate: Gate = field(default_factory=Gate)
    trust_proxy: bool = False  # the client is the first X-Forwarded-For entry (fairness.client_address)
    # Budget lines being worked out now. They run outside the queue (on every keystroke), so
    # raw HTTP calls could otherwise ask for any number at once.
    _budget_slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(4))
    # What `refresh` fills after every change to the chat, in its output order.
    SHOWN: ClassVar[tuple[str, ...]] = ("dl_json", "dl_md", "budget_md", "inspector")

    # --- helpers -----------------------------------------------------------------------
    @staticmethod
    def settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, system_prompt) -> GenerationSettings:
        return GenerationSettings.from_values(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            repetition_penalty=repetition_penalty, seed=None if seed in (None, "", -1) else seed,
            system_prompt=system_prompt or "",
        )

    def model_info(self) -> str:
        loaded = self.backend.loaded
        if loaded is None:
            return "No model loaded."
        notices = "".join(f"\n\n> ⚠️ {n}" for n in loaded.notices)
        # Visitors of a locked server get no server paths: the model's name, not its folder.
        return f"Loaded: {loaded.describe(folder=not self.lock_settings)}{notices}"

    def public_error(self, exc: BaseException) -> str:
        """An unexpected error as a visitor may read it: its text unlocked (the host is the
        visitor), a plain sentence when locked (the log has the details)."""
        return MODEL_FAILED if self.lock_settings else str(exc)

    def admit(self, request: gr.Request | None) -> Ticket:
        """A fair-use place for one answer for this request's session and client, or
        `LimitReached` saying which limit was hit and when to retry."""
        return self.gate.admit(*self.identify(request))

    def identify(self, request: gr.Request | None) -> tuple[str, str | None]:
        """The request's client address and browser session (fairness.client_address)."""
        client = getattr(request, "client", None)
        headers = getattr(request, "headers", None) or {}
        address = client_address(getattr(client, "host", None), headers.get("x-forwarded-for"), self.trust_proxy)
        return address, getattr(request, "session_hash", None)

    def preview(self, display: list, message: str, settings: GenerationSettings) -> prompts.Fitted:
        """The prompt for the chat plus the box's text. An empty box still shows the
        conversation (with an empty next turn) instead of an 'empty message' error."""
        return self.backend.prepare(chat_messages(display), message if message.strip() else "", settings,
                                    draft=True)

    def budget(self, display: list, message: str, *gen) -> tuple:
        """The live token budget line and the prompt inspector's text; left as they are while
        the server is already working out as many as it allows."""
        if not self._budget_slots.acquire(blocking=False):
            return gr.skip(), gr.skip()
        try:
            fitted = self.preview(display or [], message or "", self.settings(*gen))
        except USER_ERRORS as exc:
            return f"⚠️ {exc}", ""
        finally:
            self._budget_slots.release()
        dropped = (f" · ✂️ the model no longer sees the {fitted.dropped_exchanges} oldest exchange(s) "
                   f"(above the ✂️ mark; it reads from exchange {fitted.dropped_exchanges + 1} on)"
                   if fitted.dropped_exchanges else "")
        line = (f"**Context** {fitted.used_tokens:,} of {fitted.window:,} tokens "
                f"({fitted.prompt_tokens:,} prompt + {fitted.max_new_tokens:,} for the answer){dropped}")
        shown = fitted.prompt.shown().replace("\n", "⏎\n")
        return line, (f"{fitted.prompt_tokens} tokens. The chat template's own text is marked "
                      f"{STRUCTURE_MARK.format('…')}; everything else is read as plain text.\n\n{shown}")

    # --- chat events --------------------------------------------------------------------
    @staticmethod
    def busy(generating: bool) -> tuple[dict, dict, dict]:
        """Message box, Send and Stop while an answer streams (Stop only) and after."""
        return gr.update(interactive=not generating), gr.update(visible=not generating), gr.update(visible=generating)

    def submit(self, message: str, display: list, *gen) -> tuple:
        """Check the message before it leaves the box: on error the text stays there."""
        try:
            self.backend.prepare(chat_messages(display), message, self.settings(*gen))
        except USER_ERRORS as exc:
            kept = " Nothing was sent; your text is still in the box." if str(message or "").strip() else ""
            raise gr.Error(f"{exc}{kept}") from None
        box, send, stop = self.busy(True)
        return {**box, "value": ""}, [*display, {"role": "user", "content": to_display(message)}], send, stop

    def respond(self, request: gr.Request, display: list, *gen) -> Iterator[list]:
        """`_respond`, if the fair-use limits let this session and client start an answer now;
        otherwise a note under the message saying which limit and when to retry."""
        if not display or display[-1]["role"] != "user":
            yield from self._respond(request, display, *gen)  # nothing to answer: no place taken
            return
        try:
            ticket = self.admit(request)
        except LimitReached as exc:
            log.info("refused (%s limit): retry in %s s", exc.limit, exc.retry_after_s)
            yield [*display, note("⚠️ Not sent", str(exc))]
            return
        with ticket:  # released however the answer ends, also when Gradio closes this
            yield from self._respond(request, display, *gen)

    def _respond(self, request: gr.Request, display: list, *gen) -> Iterator[list]:
        """Stream the answer to the last user message into the chat, one update per
        STREAM_INTERVAL_S at most, and end with the stats note. If the page goes away,
        Gradio closes this generator, and closing the answer stops the engine."""
        session = request.session_hash
        chat = self.sessions.begin_turn(session)
        if not display or display[-1]["role"] != "user":
            return
        messages = chat_messages(display)
        try:
            settings = self.settings(*gen)
            fitted = self.backend.prepare(messages[:-1], messages[-1]["content"], settings)
        except USER_ERRORS as exc:
            yield [*display, note("⚠️ Not sent", str(exc))]
            return
        display = window.mark_cut(display, fitted.dropped_exchanges)  # before what the model still sees
        answer = self.backend.start(fitted, settings)
        self.sessions.attach(session, answer)  # a Stop pressed while this waited applies now
        text, last, ended = "", 0.0, "closed by the client"

        def shown() -> list:
            return [{"role": "assistant", "content": to_display(text)}] if text else []

        try:
            with answer:
                for chunk in answer:
                    text += chunk
                    if not self.sessions.is_current(session, chat):
                        return  # the chat was replaced: write nothing into the new one
                    if time.monotonic() - last >= STREAM_INTERVAL_S:
                        last = time.monotonic()
                        yield [*display, *shown()]
        except Exception as exc:  # noqa: BLE001 - shown in the page, not only the log
            ended = f"failed: {exc}"
            log.exception("generation failed")
            yield [*display, *shown(), note("⚠️ The model failed", self.public_error(exc))]
            return
        finally:
            self.sessions.detach(session, answer)
            stats = answer.stats
            log.info("answer ended (%s) after %d characters", ended if stats is None else
                     "stopped" if stats.stopped else "done", len(text))
        if not self.sessions.is_current(session, chat):
            return
        stats = answer.stats
        if stats is not None and stats.stopped and not stats.answer_tokens:
            yield [*display, note(f"{STOPPED} before it started")]
            return
        body = (f"{fitted.dropped_exchanges} oldest exchange(s) were left out of the prompt, to fit the "
                "context window and the server's history limits." if fitted.dropped_exchanges else "")
        yield [*display, *shown(), note(stats_title(stats) if stats else STOPPED, body)]

    def stop(self, request: gr.Request) -> None:
        """End this session's answer within about one token; `respond` then adds the note.
        An answer still waiting in the queue never starts."""
        self.sessions.stop(request.session_hash)

    @staticmethod
    def retry(display: list) -> list:
        """Back to the last user message; `respond` then answers it anew."""
        last_user = max((i for i, m in enumerate(display) if m["role"] == "user"), default=-1)
        return display[: last_user + 1]

    @staticmethod
    def undo(display: list) -> tuple[list, str]:
        """Remove the last exchange and give its message back to the box."""
        last_user = max((i for i, m in enumerate(display) if m["role"] == "user"), default=None)
        if last_user is None:
            return display, ""
        return display[:last_user], from_display(prompts.message_text(display[last_user]["content"]))

    @staticmethod
    def edit(display: list, data: gr.EditData) -> list:
        """Continue from an edited user message: everything after it goes. The box shows
        the escaped text; round-tripping escapes anything typed anew."""
        return [*display[: data.index], {"role": "user", "content": to_display(from_display(str(data.value)))}]

    @staticmethod
    def example(data: gr.SelectData) -> str:
        return data.value["text"]

    # --- files ---------------------------------------------------------------------------
    @staticmethod
    def files(display: list, session: str) -> tuple[str, str]:
        return downloads.write_files(chat_messages(display) if display else [], session)

    @staticmethod
    def load_json(file: str) -> list:
        try:
            return shown_messages(downloads.read_chat(file))
        except prompts.PromptError as exc:
            raise gr.Error(str(exc)) from None

    # --- model ---------------------------------------------------------------------------
    def export_and_load(self, model, weight_format, group_size, ratio, sym, all_layers, device,
                        engine, prompt_lookup) -> Iterator[tuple[str, str]]:
        """Export (if not cached) and load, streaming the exporter's progress."""
        if self.lock_settings:
            raise gr.Error("Model settings are locked on this server.")
        try:
            settings = ExportSettings(weight_format=weight_format, group_size=int(group_size),
                                      ratio=float(ratio), sym=bool(sym), all_layers=bool(all_layers)).validate()
            runtime = RuntimeSettings(engine=engine, device=device, prompt_lookup=bool(prompt_lookup)).validate()
        except (SettingsError, TypeError, ValueError) as exc:
            raise gr.Error(str(exc)) from None
        log_lines: list[str] = []
        try:
            for line in pump(lambda emit: self.backend.load(model.strip(), settings, runtime, progress=emit),
                             name="export-and-load"):
                log_lines.append(line)
                yield "\n".join(log_lines[-40:]), self.model_info()
        except Exception as exc:  # noqa: BLE001 - shown in the page
            log_lines.append(f"❌ {exc}")
            yield "\n".join(log_lines[-40:]), self.model_info()
            raise gr.Error(str(exc)) from None
        yield "\n".join(log_lines[-40:]), self.model_info()

    @staticmethod
    def defaults_for(model: str, preset: str | None = None) -> int:
        """The group size for a newly typed model: its preset's, else its seed default."""
        return (export_preset(preset, model) if preset else default_settings(model.strip())).group_size

    @staticmethod
    def preset_of(settings: ExportSettings, model: str) -> str | None:
        """Which preset these settings are, if any (the radio shows none for custom ones)."""
        return next((p for p in PRESETS if export_preset(p, model) == settings), None)

    @staticmethod
    def apply_preset(preset: str | None, model: str) -> tuple:
        """A preset's export settings, for the fields below the preset radio."""
        if not preset:
            return (gr.skip(),) * 5
        chosen = export_preset(preset, model or "")
        return chosen.weight_format, chosen.group_size, chosen.ratio, chosen.sym, chosen.all_layers

    # --- API -----------------------------------------------------------------------------
    def api_chat(self, message: str, history: list[dict] | None = None, max_new_tokens: int = 1024,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 50,
                 repetition_penalty: float = 1.0, seed: int | None = None,
                 system_prompt: str = "", request: gr.Request | None = None) -> Iterator[str]:
        """Stream the answer to `message` after `history` ({role, content} messages). The
        fair-use limits come first, so a refused call costs no tokenizing; an unexpected
        error reaches a locked server's clients as a plain sentence, its details in the log."""
        try:
            ticket = self.admit(request)
        except LimitReached as exc:
            log.info("refused (%s limit): retry in %s s", exc.limit, exc.retry_after_s)
            raise gr.Error(str(exc)) from None
        with ticket:
            try:
                settings = self.settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                                         seed, system_prompt)
                fitted = self.backend.prepare(history or [], message, settings)
                text = ""
                with self.backend.start(fitted, settings) as answer:
                    for chunk in answer:
                        text += chunk
                        yield text
            except USER_ERRORS as exc:
                raise gr.Error(str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - the client gets a sentence, the log the details
                log.exception("API answer failed")
                raise gr.Error(self.public_error(exc)) from None

    def api_door(self, request: gr.Request, *values: Any) -> tuple:
        """/chat's check before the call is queued: a call a fair-use limit would refuse is
        refused here, at once, instead of waiting its turn in the queue and holding up the
        calls behind it (a flood's refusals would otherwise delay everyone)."""
        try:
            self.gate.check(*self.identify(request))
        except LimitReached as exc:
            log.info("refused at the door (%s limit): retry in %s s", exc.limit, exc.retry_after_s)
            raise gr.Error(str(exc)) from None
        return tuple(gr.validate(True, "") for _ in values)

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

    # --- layout --------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        gen_defaults = GenerationSettings()
        loaded = self.backend.loaded
        export_defaults = (loaded.exported.settings if loaded and loaded.exported.settings else BUNDLED_EXPORT
                           if loaded and loaded.exported.source == "bundled" else ExportSettings())
        # delete_cache: Gradio's copies of download files go after a day, checked hourly.
        with gr.Blocks(title="phi3ui · local Phi-3 chat", delete_cache=(3600, 86400),
                       analytics_enabled=False) as demo:
            with gr.Sidebar(label="Settings", open=True, width=340):
                gr.Markdown("### Model")
                self.model_md = gr.Markdown(self.model_info(), elem_id="model-info")
                with gr.Accordion("Export and load", open=False, visible=not self.lock_settings):
                    self.model_box = gr.Textbox(
                        label="Model id or folder", value=loaded.exported.source if loaded else "",
                        info="Hugging Face id, local folder, OpenVINO folder, or 'bundled'")
                    self.preset = gr.Radio(
                        list(PRESETS), label="Preset", elem_id="export-preset",
                        value=self.preset_of(export_defaults, loaded.exported.source if loaded else ""),
                        info="fills the fields below. The faster presets compress more layers to int4 "
                             "and answer less like the full model: see bench/results/quality.md")
                    self.weight_format = gr.Dropdown(list(WEIGHT_FORMATS), value=export_defaults.weight_format,
                                                     label="Weight format", elem_id="export-format")
                    self.group_size = gr.Number(export_defaults.group_size, precision=0, label="Group size",
                                                elem_id="export-group-size",
                                                info="must divide the layer widths; -1 = per channel")
                    self.ratio = gr.Slider(0, 1, export_defaults.ratio, step=0.05, label="Ratio (share in int4)",
                                           elem_id="export-ratio")
                    self.sym = gr.Checkbox(export_defaults.sym, label="Symmetric", elem_id="export-sym")
                    self.all_layers = gr.Checkbox(export_defaults.all_layers, label="All layers in int4",
                                                  info="the embeddings and the output layer too (int4 only)",
                                                  elem_id="export-all-layers")
                    self.device = gr.Dropdown([*available_devices(), "AUTO"], allow_custom_value=True,
                                              value=loaded.engine.device if loaded else "CPU", label="Device")
                    self.engine = gr.Radio(list(ENGINES), value=loaded.engine.name if loaded else "genai",
                                           label="Engine")
                    self.prompt_lookup = gr.Checkbox(loaded.runtime.prompt_lookup if loaded else False,
                                                     label="Prompt lookup", elem_id="prompt-lookup",
                                                     info="genai only: answers that repeat the conversation "
                                                          "(edits, quotes, code) come out several times faster")
                    self.export_btn = gr.Button("Export and load", variant="secondary", elem_id="export-button")
                    self.export_log = gr.Textbox(label="Progress", lines=6, max_lines=12, interactive=False,
                                                 autoscroll=True)
                gr.Markdown("### Generation")
                self.system_prompt = self.system_prompt_box()
                cap = self.backend.limits.max_new_tokens  # --max-new-tokens-cap: visitors are refused above it
                self.max_new_tokens = gr.Slider(1, cap, min(gen_defaults.max_new_tokens, cap),
                                                step=1, label="Max new tokens", elem_id="max-new-tokens")
                self.temperature = gr.Slider(0, 2, gen_defaults.temperature, step=0.05,
                                             label="Temperature (0 = greedy)", elem_id="temperature")
                self.top_p = gr.Slider(0.05, 1, gen_defaults.top_p, step=0.05, label="Top-p")
                self.top_k = gr.Slider(0, 200, gen_defaults.top_k, step=1, label="Top-k (0 = off)")
                self.repetition_penalty = gr.Slider(0.5, 2, gen_defaults.repetition_penalty, step=0.05,
                                                    label="Repetition penalty")
                self.seed = gr.Number(-1, precision=0, label="Seed (-1 = random)", elem_id="seed")

            gr.Markdown("## phi3ui · chat with Phi-3 on OpenVINO, on your own machine")
            self.chatbot = gr.Chatbot(
                show_label=False, height="62vh", editable="user", elem_id="chat", placeholder=EMPTY_STATE,
                examples=[{"text": e} for e in EXAMPLES], buttons=["copy", "copy_all"],
                allow_tags=False, feedback_options=None,
            )
            with gr.Row(equal_height=True):
                self.message = gr.Textbox(placeholder="Message (Enter sends, Shift+Enter for a new line)",
                                          show_label=False, lines=1, max_lines=8, scale=8, elem_id="message",
                                          autofocus=True)
                self.send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
                self.stop_btn = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="stop",
                                          visible=False)
                self.clear = gr.Button("Clear", scale=1, min_width=80, elem_id="clear")
            self.budget_md = gr.Markdown(elem_id="budget")
            with gr.Accordion("Prompt inspector: what the model will see", open=False, elem_id="inspector-box"):
                self.inspector = gr.Code(label="Prompt", language=None, interactive=False, elem_id="inspector")
            with gr.Row():
                self.dl_json = gr.DownloadButton("Download JSON", size="sm", elem_id="download-json")
                self.dl_md = gr.DownloadButton("Download Markdown", size="sm", elem_id="download-md")
                self.upload = gr.UploadButton("Load JSON", file_types=[".json"], size="sm", elem_id="load-json")
            self.store = gr.BrowserState([], storage_key="phi3ui-chat", secret=browser_secret())
            self._wire(demo)
        return demo

    def _wire(self, demo: gr.Blocks) -> None:
        """Every event of the page. Only `/chat` is an API endpoint. The page's own events are
        private (not in the API page or gradio_client), but raw HTTP can still reach them, so
        each does the server-side checks itself and its work is bounded by `Limits`."""
        gen = [self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.repetition_penalty,
               self.seed, self.system_prompt]
        quick = dict(queue=False, api_visibility="private", show_progress="hidden")
        controls = [self.message, self.send, self.stop_btn]
        sent = [self.message, self.chatbot, self.send, self.stop_btn]
        generate = dict(fn=self.respond, inputs=[self.chatbot, *gen], outputs=self.chatbot,
                        concurrency_limit=self.concurrency_limit, concurrency_id="generate",
                        api_visibility="private", show_progress="hidden")
        shown = [getattr(self, name) for name in self.SHOWN]
        settle = dict(fn=self.settle, inputs=[self.chatbot, self.message, *gen],
                      outputs=[self.store, *shown, *controls], **quick)
        refresh = dict(fn=self.refresh, inputs=[self.chatbot, self.message, *gen], outputs=shown, **quick)
        started = dict(fn=lambda: self.busy(True), inputs=None, outputs=controls, **quick)
        answers = []  # events that stream an answer: Clear cancels them

        def send(event: Any) -> None:
            answer = event.success(**generate)
            answers.append(answer)
            answer.then(**{**settle, "fn": self.settle_answer})

        for trigger in (self.message.submit, self.send.click):
            send(trigger(self.submit, [self.message, self.chatbot, *gen], sent, **quick))
        send(self.chatbot.example_select(self.example, None, self.message, **quick).success(
            self.submit, [self.message, self.chatbot, *gen], sent, **quick))
        send(self.chatbot.retry(self.retry, self.chatbot, self.chatbot, **quick).success(**started))
        send(self.chatbot.edit(self.edit, self.chatbot, self.chatbot, **quick).success(**started))
        self.chatbot.undo(self.undo, self.chatbot, [self.chatbot, self.message], **quick).then(**settle)
        self.stop_btn.click(self.stop, None, None, **quick)
        self.clear.click(self.replace_chat, None, None, cancels=answers, **quick).then(
            lambda: ([], ""), None, [self.chatbot, self.message], **quick).then(**settle)
        self.chatbot.clear(self.replace_chat, None, None, cancels=answers, **quick).then(
            lambda: [], None, self.chatbot, **quick).then(**settle)
        self.upload.upload(self.replace_chat, None, None, cancels=answers, **quick).then(
            self.load_json, self.upload, self.chatbot, **quick).then(**settle)
        self.store.change(self.restore, [self.store, self.chatbot], self.chatbot, **quick).then(**refresh)
        demo.load(self.restore, [self.store, self.chatbot], self.chatbot, **quick).then(**refresh).then(
            self.model_info, None, self.model_md, **quick)
        demo.unload(self.leave)
        for box in (self.message, *gen):
            box.change(self.budget, [self.chatbot, self.message, *gen], [self.budget_md, self.inspector],
                       trigger_mode="always_last", **quick)
        self.model_box.change(self.defaults_for, [self.model_box, self.preset], self.group_size, **quick)
        self.preset.change(self.apply_preset, [self.preset, self.model_box],
                           [self.weight_format, self.group_size, self.ratio, self.sym, self.all_layers], **quick)
        self.export_btn.click(
            self.export_and_load,
            [self.model_box, self.weight_format, self.group_size, self.ratio, self.sym, self.all_layers,
             self.device, self.engine, self.prompt_lookup],
            [self.export_log, self.model_md], concurrency_limit=1, concurrency_id="export",
            api_visibility="private",
        )
        chat = gr.api(self.api_chat, api_name="chat", concurrency_limit=self.concurrency_limit,
                      concurrency_id="generate")
        # gr.api takes no validator; Gradio runs a function's validator before queueing it.
        demo.fns[chat["id"]].validator = self.api_door

    def replace_chat(self, request: gr.Request) -> None:
        """The chat is about to be replaced: a running answer stops and writes nothing more
        (cancelling the event alone cannot interrupt a generator waiting for a token)."""
        self.sessions.replace_chat(request.session_hash)

    def leave(self, request: gr.Request) -> None:
        """The tab closed: stop its answer, in case Gradio has not closed the generator yet."""
        downloads.remove_files(request.session_hash)
        if self.sessions.forget(request.session_hash):
            log.info("page closed mid-answer: stopping it")

    def refresh(self, request: gr.Request, display: list, message: str, *gen) -> tuple:
        """Files, budget and inspector for the chat as it is now."""
        json_file, md_file = self.files(display, request.session_hash)
        return (json_file, md_file, *self.budget(display, message, *gen))

    def settle(self, request: gr.Request, display: list, message: str, *gen) -> tuple:
        """After every change to the chat: save it in the browser, `refresh`, and give
        the controls back. A Stop that came too late to matter is forgotten here."""
        self.sessions.settle(request.session_hash)
        return (display, *self.refresh(request, display, message, *gen), *self.busy(False))

    def settle_answer(self, request: gr.Request, display: list, message: str, *gen) -> tuple:
        """`settle` after an answer, unless the chat was replaced meanwhile: a cancelled
        answer's settle can read the page before Clear has emptied it, and saving that would
        bring the old chat back (the saved chat refills an empty page)."""
        if not self.sessions.turn_is_current(request.session_hash):
            return (gr.skip(),) * (1 + len(self.SHOWN)) + self.busy(False)  # the store and what it shows
        return self.settle(request, display, message, *gen)

    def restore(self, request: gr.Request, stored: Any, display: list) -> Any:
        """Fill an empty page with the chat kept in the browser, never the other way round:
        the page's load event can run before the browser has read its storage, and
        writing that empty value back would erase the saved chat. Only a page whose chat
        was never replaced is filled: after Clear an empty page is what was asked for."""
        chat = stored_chat(stored)
        fresh = not self.sessions.ever_replaced(request.session_hash)
        return chat if chat and not display and fresh else gr.skip()
