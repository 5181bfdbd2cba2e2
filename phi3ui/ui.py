"""The Gradio page: chat in the middle, export and generation settings in the sidebar.

Components are declared first and every event is wired in `_wire`, in one place. The page
only calls `ChatBackend`; all model work happens there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gradio as gr

from . import prompt as prompts
from .chat import ChatBackend
from .engines import ENGINES, Stats, available_devices
from .export import ExportError, default_settings
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

log = logging.getLogger(__name__)

STREAM_INTERVAL_S = 0.05  # batch tokens: one page update per 50 ms at most
STOPPED = "⏹ Stopped"  # title prefix of the note under an answer the user stopped
EXAMPLES = [
    "Explain what int4 weight compression does to a language model, in three sentences.",
    "Write a Python function that checks whether a string is a palindrome.",
    "What is the capital of France?",
    "把“早上好”翻译成英语和日语。",
]
USER_ERRORS = (SettingsError, prompts.PromptError, ExportError)
EMPTY_STATE = (
    "### 💬 Ask anything\n\n"
    "Everything runs on this machine; nothing leaves it. Pick an example or type below."
)

# Split text into code (fenced blocks and inline spans, left alone) and prose (escaped).
_CODE = re.compile(r"(```.*?(?:```|$)|`[^`\n]*`)", re.S)
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_INVERSE = {v: k for k, v in _ESCAPES.items()}
_UNESCAPES = re.compile("|".join(map(re.escape, _ESCAPES.values())))


def to_display(text: str) -> str:
    """Escape HTML outside code, so nothing a user or the model writes runs as markup.

    The mapping is one-to-one (every `&` is escaped too), so `from_display` gives back
    exactly what was typed. Code is left alone: Markdown already shows it literally.
    """
    parts = _CODE.split(text)
    return "".join(p if i % 2 else re.sub("[&<>]", lambda m: _ESCAPES[m[0]], p) for i, p in enumerate(parts))


def from_display(text: str) -> str:
    """The inverse of `to_display`: escaping only touches prose, never backticks, so the
    split into code and prose is the same on both sides."""
    parts = _CODE.split(text)
    return "".join(p if i % 2 else _UNESCAPES.sub(lambda m: _INVERSE[m[0]], p) for i, p in enumerate(parts))


def chat_messages(display: list) -> list[dict]:
    """The chat as the model sees it: page notes dropped, escaping undone."""
    return [{"role": m["role"], "content": from_display(prompts.message_text(m["content"]))}
            for m in prompts.normalize(display)]


def note(title: str, body: str = "") -> dict:
    """A line the page shows under an answer; metadata marks it as not part of the chat."""
    return {"role": "assistant", "content": body, "metadata": {"title": title, "status": "done"}}


def stats_title(stats: Stats) -> str:
    """TTFT, speed and token counts; stopped answers say so first."""
    if stats.stopped:
        return f"{STOPPED} · {stats.summary()}"
    return stats.summary()


def to_markdown(messages: list[dict]) -> str:
    names = {"user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"**{names[m['role']]}:**\n\n{m['content']}" for m in messages) + "\n"


def stored_chat(stored: Any) -> list:
    """A chat kept in the browser, or an empty one if what is there is not a chat."""
    try:
        prompts.normalize(stored)
    except prompts.PromptError:
        return []
    return stored or []


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
    # Sessions that pressed Stop while their answer still waited in the queue.
    _early_stops: set[str] = field(default_factory=set)
    # Bumped when a session's chat is replaced (Clear, Load JSON): an answer still running
    # for the old chat must not write into the new one.
    _chat_ids: dict[str, int] = field(default_factory=dict)
    # The chat id each session's latest answer started under, so the settle step after a
    # cancelled answer can tell that its chat is gone and save nothing.
    _answer_chat_ids: dict[str, int] = field(default_factory=dict)
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
        return f"Loaded: {loaded.describe()}{notices}"

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
        dropped = (f" · ✂️ {fitted.dropped_exchanges} oldest exchange(s) left out"
                   if fitted.dropped_exchanges else "")
        line = (f"**Context** {fitted.used_tokens:,} of {fitted.window:,} tokens "
                f"({fitted.prompt_tokens:,} prompt + {fitted.max_new_tokens:,} for the answer){dropped}")
        shown = fitted.prompt.replace("\n", "⏎\n")
        return line, f"{fitted.prompt_tokens} tokens\n\n{shown}"

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
        """Stream the answer to the last user message into the chat, one update per
        STREAM_INTERVAL_S at most, and end with the stats note. If the page goes away,
        Gradio closes this generator and closing the stream stops the engine."""
        chat_id = self._answer_chat_ids[request.session_hash] = self._chat_ids.get(request.session_hash, 0)
        if not display or display[-1]["role"] != "user":
            return
        messages = chat_messages(display)
        try:
            settings = self.settings(*gen)
            fitted = self.backend.prepare(messages[:-1], messages[-1]["content"], settings)
        except USER_ERRORS as exc:
            yield [*display, note("⚠️ Not sent", str(exc))]
            return
        if self._take_early_stop(request.session_hash):  # pressed while queued or while the prompt was fitted
            yield [*display, note(f"{STOPPED} before it started")]
            return
        text, last, stats, ended = "", 0.0, None, "closed by the client"

        def replaced() -> bool:
            return self._chat_ids.get(request.session_hash, 0) != chat_id

        def answer() -> list:
            return [{"role": "assistant", "content": to_display(text)}] if text else []

        stream = self.backend.stream(fitted, settings, session=request.session_hash)
        try:
            with contextlib.closing(stream):
                for chunk in stream:
                    if isinstance(chunk, Stats):
                        stats = chunk
                        break
                    text += chunk
                    if replaced():
                        return
                    if self._take_early_stop(request.session_hash):  # pressed just before the stream began
                        self.backend.stop(request.session_hash)
                    if time.monotonic() - last >= STREAM_INTERVAL_S:
                        last = time.monotonic()
                        yield [*display, *answer()]
        except Exception as exc:  # noqa: BLE001 - shown in the page, not only the log
            ended = f"failed: {exc}"
            log.exception("generation failed")
            yield [*display, *answer(), note("⚠️ The model failed", str(exc))]
            return
        finally:
            log.info("answer ended (%s) after %d characters", ended if stats is None else
                     "stopped" if stats.stopped else "done", len(text))
        if replaced():
            return
        body = (f"{fitted.dropped_exchanges} oldest exchange(s) were left out of the prompt, to fit the "
                "context window and the server's history limits." if fitted.dropped_exchanges else "")
        yield [*display, *answer(), note(stats_title(stats) if stats else STOPPED, body)]

    def _take_early_stop(self, session: str) -> bool:
        """Whether this session pressed Stop before its answer's stream could take it; forgets it."""
        if session not in self._early_stops:
            return False
        self._early_stops.discard(session)
        return True

    def stop(self, request: gr.Request) -> None:
        """End this session's answer within about one token; `respond` then adds the note.
        An answer still waiting in the queue is remembered and never starts."""
        if not self.backend.stop(request.session_hash):
            self._early_stops.add(request.session_hash)

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
    def download_folder(session: str) -> Path:
        """One folder per browser session, rewritten on each change and removed when the
        tab closes, so a long-running server does not pile up files."""
        return Path(tempfile.gettempdir()) / "phi3ui-downloads" / re.sub(r"\W", "", session)

    def files(self, display: list, session: str) -> tuple[str, str]:
        messages = chat_messages(display) if display else []
        folder = self.download_folder(session)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "chat.json").write_text(json.dumps(messages, ensure_ascii=False, indent=2))
        (folder / "chat.md").write_text(to_markdown(messages))
        return str(folder / "chat.json"), str(folder / "chat.md")

    @staticmethod
    def load_json(file: str) -> list:
        try:
            data = json.loads(Path(file).read_text())
            messages = prompts.normalize(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise gr.Error(f"That file is not a chat saved by phi3ui: {exc}") from None
        return [{"role": m["role"], "content": to_display(m["content"])} for m in messages]

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
        lines: queue.Queue[str] = queue.Queue()
        outcome: dict = {}

        def work() -> None:
            try:
                self.backend.load(model.strip(), settings, runtime, progress=lines.put)
            except Exception as exc:  # noqa: BLE001 - shown in the page
                outcome["error"] = exc

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        log_lines: list[str] = []
        while thread.is_alive() or not lines.empty():
            with contextlib.suppress(queue.Empty):
                log_lines.append(lines.get(timeout=0.2))
                yield "\n".join(log_lines[-40:]), self.model_info()
        if "error" in outcome:
            log_lines.append(f"❌ {outcome['error']}")
            yield "\n".join(log_lines[-40:]), self.model_info()
            raise gr.Error(str(outcome["error"]))
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
                 system_prompt: str = "") -> Iterator[str]:
        """Stream the answer to `message` after `history` ({role, content} messages)."""
        try:
            settings = self.settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                                     seed, system_prompt)
            fitted = self.backend.prepare(history or [], message, settings)
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from None
        text = ""
        stream = self.backend.stream(fitted, settings)
        with contextlib.closing(stream):
            for chunk in stream:
                if isinstance(chunk, str):
                    text += chunk
                    yield text

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
                self.system_prompt = gr.Textbox(label="System prompt", lines=3, value=gen_defaults.system_prompt)
                self.max_new_tokens = gr.Slider(1, self.backend.limits.max_new_tokens, gen_defaults.max_new_tokens,
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
        gr.api(self.api_chat, api_name="chat", concurrency_limit=self.concurrency_limit,
               concurrency_id="generate")

    def replace_chat(self, request: gr.Request) -> None:
        """The chat is about to be replaced: a running answer stops and writes nothing more
        (cancelling the event alone cannot interrupt a generator waiting for a token)."""
        self._chat_ids[request.session_hash] = self._chat_ids.get(request.session_hash, 0) + 1
        self.backend.stop(request.session_hash)

    def leave(self, request: gr.Request) -> None:
        """The tab closed: stop its answer, in case Gradio has not closed the generator yet."""
        self._early_stops.discard(request.session_hash)
        self._chat_ids.pop(request.session_hash, None)
        self._answer_chat_ids.pop(request.session_hash, None)
        shutil.rmtree(self.download_folder(request.session_hash), ignore_errors=True)
        if self.backend.stop(request.session_hash):
            log.info("page closed mid-answer: stopping it")

    def refresh(self, request: gr.Request, display: list, message: str, *gen) -> tuple:
        """Files, budget and inspector for the chat as it is now."""
        json_file, md_file = self.files(display, request.session_hash)
        return (json_file, md_file, *self.budget(display, message, *gen))

    def settle(self, request: gr.Request, display: list, message: str, *gen) -> tuple:
        """After every change to the chat: save it in the browser, `refresh`, and give
        the controls back. A Stop that came too late to matter is forgotten here."""
        self._early_stops.discard(request.session_hash)
        return (display, *self.refresh(request, display, message, *gen), *self.busy(False))

    def settle_answer(self, request: gr.Request, display: list, message: str, *gen) -> tuple:
        """`settle` after an answer, unless the chat was replaced meanwhile: a cancelled
        answer's settle can read the page before Clear has emptied it, and saving that would
        bring the old chat back (the saved chat refills an empty page)."""
        session = request.session_hash
        if self._answer_chat_ids.get(session) != self._chat_ids.get(session, 0):
            return (gr.skip(),) * (1 + len(self.SHOWN)) + self.busy(False)  # the store and what it shows
        return self.settle(request, display, message, *gen)

    def restore(self, request: gr.Request, stored: Any, display: list) -> Any:
        """Fill an empty page with the chat kept in the browser, never the other way round:
        the page's load event can run before the browser has read its storage, and
        writing that empty value back would erase the saved chat. Only a page whose chat
        was never replaced is filled: after Clear an empty page is what was asked for."""
        chat = stored_chat(stored)
        fresh = request.session_hash not in self._chat_ids
        return chat if chat and not display and fresh else gr.skip()
