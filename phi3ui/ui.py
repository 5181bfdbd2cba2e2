"""The Gradio page: chat in the middle, export and generation settings in the sidebar.

Components are declared first and every event is wired in `_wire`, in one place. The page
only calls `ChatBackend`; all model work happens there.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from . import prompt as prompts
from .chat import ChatBackend
from .engines import ENGINES, Stats, available_devices
from .export import ExportError, default_settings
from .settings import (
    BUNDLED_EXPORT,
    WEIGHT_FORMATS,
    ExportSettings,
    GenerationSettings,
    RuntimeSettings,
    SettingsError,
)

STREAM_INTERVAL_S = 0.05  # batch tokens: one page update per 50 ms at most
EXAMPLES = [
    "Explain what int4 weight compression does to a language model, in three sentences.",
    "Write a Python function that checks whether a string is a palindrome.",
    "What is the capital of France?",
    "把“早上好”翻译成英语和日语。",
]
USER_ERRORS = (SettingsError, prompts.PromptError, ExportError)

# Split text into code (fenced blocks and inline spans, left alone) and prose (escaped).
_CODE = re.compile(r"(```.*?(?:```|$)|`[^`\n]*`)", re.S)
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_UNESCAPES = re.compile("|".join(map(re.escape, _ESCAPES.values())))


def to_display(text: str) -> str:
    """Escape HTML outside code, so nothing a user or the model writes runs as markup.

    The mapping is one-to-one (every `&` is escaped too), so `from_display` gives back
    exactly what was typed.
    """
    parts = _CODE.split(text)
    return "".join(p if i % 2 else re.sub("[&<>]", lambda m: _ESCAPES[m[0]], p) for i, p in enumerate(parts))


def from_display(text: str) -> str:
    inverse = {v: k for k, v in _ESCAPES.items()}
    parts = _CODE.split(text)
    return "".join(p if i % 2 else _UNESCAPES.sub(lambda m: inverse[m[0]], p) for i, p in enumerate(parts))


def chat_messages(display: list) -> list[dict]:
    """The chat as the model sees it: page notes dropped, escaping undone."""
    return [{"role": m["role"], "content": from_display(prompts.message_text(m["content"]))}
            for m in prompts.normalize(display)]


def note(title: str, body: str = "") -> dict:
    """A line the page shows under an answer; metadata marks it as not part of the chat."""
    return {"role": "assistant", "content": body, "metadata": {"title": title, "status": "done"}}


def to_markdown(messages: list[dict]) -> str:
    names = {"user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"**{names[m['role']]}:**\n\n{m['content']}" for m in messages) + "\n"


@dataclass
class Page:
    """Builds the page around one backend."""

    backend: ChatBackend
    lock_settings: bool = False
    concurrency_limit: int = 1

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

    def budget(self, display: list, message: str, *gen) -> tuple[str, str]:
        """The live token budget line and the prompt inspector's text."""
        try:
            settings = self.settings(*gen)
            fitted = self.backend.prepare(chat_messages(display), message or " ", settings)
        except USER_ERRORS as exc:
            return f"⚠️ {exc}", ""
        dropped = (f" · {fitted.dropped_exchanges} oldest exchange(s) left out to fit"
                   if fitted.dropped_exchanges else "")
        line = (f"Context: {fitted.prompt_tokens} prompt + {fitted.max_new_tokens} answer tokens = "
                f"{fitted.used_tokens} of {fitted.window}{dropped}")
        shown = fitted.prompt.replace("\n", "⏎\n")
        return line, f"{fitted.prompt_tokens} tokens\n\n{shown}"

    # --- chat events --------------------------------------------------------------------
    def submit(self, message: str, display: list, *gen) -> tuple[str, list]:
        """Check the message before it leaves the box: on error the text stays there."""
        try:
            self.backend.prepare(chat_messages(display), message, self.settings(*gen))
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from None
        return "", [*display, {"role": "user", "content": to_display(message)}]

    def respond(self, display: list, *gen, request: gr.Request) -> Iterator[list]:
        """Stream the answer to the last user message into the chat."""
        if not display or display[-1]["role"] != "user":
            return
        messages = chat_messages(display)
        try:
            settings = self.settings(*gen)
            fitted = self.backend.prepare(messages[:-1], messages[-1]["content"], settings)
        except USER_ERRORS as exc:
            yield [*display, note("⚠️ Not sent", str(exc))]
            return
        text, last = "", 0.0
        stream = self.backend.stream(fitted, settings, session=request.session_hash)
        with contextlib.closing(stream):
            for chunk in stream:
                if isinstance(chunk, Stats):
                    stats = chunk
                    break
                text += chunk
                if time.monotonic() - last >= STREAM_INTERVAL_S:
                    last = time.monotonic()
                    yield [*display, {"role": "assistant", "content": to_display(text)}]
        body = (f"{fitted.dropped_exchanges} oldest exchange(s) were left out of the prompt "
                "to fit the context window." if fitted.dropped_exchanges else "")
        title = ("⏹ Stopped · " if stats.stopped else "") + stats.summary()
        yield [*display, {"role": "assistant", "content": to_display(text)}, note(title, body)]

    def stop(self, request: gr.Request) -> None:
        self.backend.stop(request.session_hash)

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
        """Continue from an edited user message: everything after it goes."""
        return [*display[: data.index], {"role": "user", "content": data.value}]

    # --- files ---------------------------------------------------------------------------
    @staticmethod
    def files(display: list) -> tuple[str, str]:
        messages = chat_messages(display) if display else []
        folder = Path(tempfile.mkdtemp(prefix="phi3ui-chat-"))
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
    def export_and_load(self, model, weight_format, group_size, ratio, sym, device, engine) -> Iterator[tuple[str, str]]:
        """Export (if not cached) and load, streaming the exporter's progress."""
        if self.lock_settings:
            raise gr.Error("Model settings are locked on this server.")
        try:
            settings = ExportSettings(weight_format=weight_format, group_size=int(group_size),
                                      ratio=float(ratio), sym=bool(sym)).validate()
        except (SettingsError, TypeError, ValueError) as exc:
            raise gr.Error(str(exc)) from None
        lines: queue.Queue[str] = queue.Queue()
        outcome: dict = {}

        def work() -> None:
            try:
                self.backend.load(model.strip(), settings, RuntimeSettings(engine=engine, device=device),
                                  progress=lines.put)
            except Exception as exc:  # noqa: BLE001 - shown in the page
                outcome["error"] = exc

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        log: list[str] = []
        while thread.is_alive() or not lines.empty():
            with contextlib.suppress(queue.Empty):
                log.append(lines.get(timeout=0.2))
                yield "\n".join(log[-40:]), self.model_info()
        if "error" in outcome:
            log.append(f"❌ {outcome['error']}")
            yield "\n".join(log[-40:]), self.model_info()
            raise gr.Error(str(outcome["error"]))
        yield "\n".join(log[-40:]), self.model_info()

    @staticmethod
    def defaults_for(model: str) -> int:
        return default_settings(model.strip()).group_size

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
        with gr.Blocks(title="phi3ui · local Phi-3 chat") as demo:
            with gr.Sidebar(label="Settings", open=True, width=340):
                gr.Markdown("### Model")
                self.model_md = gr.Markdown(self.model_info(), elem_id="model-info")
                with gr.Accordion("Export and load", open=False, visible=not self.lock_settings):
                    self.model_box = gr.Textbox(
                        label="Model id or folder", value=loaded.exported.source if loaded else "",
                        info="Hugging Face id, local folder, OpenVINO folder, or 'bundled'")
                    self.weight_format = gr.Dropdown(list(WEIGHT_FORMATS), value=export_defaults.weight_format,
                                                     label="Weight format")
                    self.group_size = gr.Number(export_defaults.group_size, precision=0, label="Group size",
                                                info="must divide the layer widths; -1 = per channel")
                    self.ratio = gr.Slider(0, 1, export_defaults.ratio, step=0.05, label="Ratio (share in int4)")
                    self.sym = gr.Checkbox(export_defaults.sym, label="Symmetric")
                    self.device = gr.Dropdown([*available_devices(), "AUTO"], allow_custom_value=True,
                                              value=loaded.engine.device if loaded else "CPU", label="Device")
                    self.engine = gr.Radio(list(ENGINES), value=loaded.engine.name if loaded else "genai",
                                           label="Engine")
                    self.export_btn = gr.Button("Export and load", variant="secondary")
                    self.export_log = gr.Textbox(label="Progress", lines=6, max_lines=12, interactive=False,
                                                 autoscroll=True)
                gr.Markdown("### Generation")
                self.system_prompt = gr.Textbox(label="System prompt", lines=3, value=gen_defaults.system_prompt)
                self.max_new_tokens = gr.Slider(1, self.backend.limits.max_new_tokens, gen_defaults.max_new_tokens,
                                                step=1, label="Max new tokens", elem_id="max-new-tokens")
                self.temperature = gr.Slider(0, 2, gen_defaults.temperature, step=0.05,
                                             label="Temperature (0 = greedy)")
                self.top_p = gr.Slider(0.05, 1, gen_defaults.top_p, step=0.05, label="Top-p")
                self.top_k = gr.Slider(0, 200, gen_defaults.top_k, step=1, label="Top-k (0 = off)")
                self.repetition_penalty = gr.Slider(0.5, 2, gen_defaults.repetition_penalty, step=0.05,
                                                    label="Repetition penalty")
                self.seed = gr.Number(None, precision=0, label="Seed (empty = random)")

            gr.Markdown("## phi3ui · chat with Phi-3 on OpenVINO, on your own machine")
            self.chatbot = gr.Chatbot(
                label="Chat", height="65vh", editable="user", elem_id="chat",
                placeholder="**Ask anything.** Everything runs on this machine; nothing leaves it.",
                examples=[{"text": e} for e in EXAMPLES], buttons=["copy", "copy_all"],
            )
            with gr.Row(equal_height=True):
                self.message = gr.Textbox(placeholder="Message (Enter sends, Shift+Enter for a new line)",
                                          show_label=False, lines=1, max_lines=8, scale=8, elem_id="message",
                                          autofocus=True)
                self.send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
                self.stop_btn = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="stop")
                self.clear = gr.Button("Clear", scale=1, min_width=80, elem_id="clear")
            self.budget_md = gr.Markdown(elem_id="budget")
            with gr.Accordion("Prompt inspector: what the model will see", open=False):
                self.inspector = gr.Code(label="Prompt", language=None, interactive=False, elem_id="inspector")
            with gr.Row():
                self.dl_json = gr.DownloadButton("Download JSON", size="sm")
                self.dl_md = gr.DownloadButton("Download Markdown", size="sm")
                self.upload = gr.UploadButton("Load JSON", file_types=[".json"], size="sm")
            self.store = gr.BrowserState([], storage_key="phi3ui-chat")
            self._wire(demo)
        return demo

    def _wire(self, demo: gr.Blocks) -> None:
        """Every event of the page. Only `/chat` is an API endpoint; the page's own events
        are private, so clients cannot call them around the checks."""
        gen = [self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.repetition_penalty,
               self.seed, self.system_prompt]
        quick = dict(queue=False, api_visibility="private", show_progress="hidden")
        generate = dict(fn=self.respond, inputs=[self.chatbot, *gen], outputs=self.chatbot,
                        concurrency_limit=self.concurrency_limit, concurrency_id="generate",
                        api_visibility="private", show_progress="hidden")
        settle = dict(fn=self.settle, inputs=[self.chatbot, self.message, *gen],
                      outputs=[self.store, self.dl_json, self.dl_md, self.budget_md, self.inspector], **quick)

        for trigger in (self.message.submit, self.send.click):
            trigger(self.submit, [self.message, self.chatbot, *gen], [self.message, self.chatbot],
                    **quick).success(**generate).then(**settle)
        self.chatbot.example_select(lambda d: d.value["text"], None, self.message, **quick)
        self.chatbot.retry(self.retry, self.chatbot, self.chatbot, **quick).then(**generate).then(**settle)
        self.chatbot.edit(self.edit, self.chatbot, self.chatbot, **quick).then(**generate).then(**settle)
        self.chatbot.undo(self.undo, self.chatbot, [self.chatbot, self.message], **quick).then(**settle)
        self.stop_btn.click(self.stop, None, None, **quick)
        self.clear.click(self.stop, None, None, **quick).then(
            lambda: ([], ""), None, [self.chatbot, self.message], **quick).then(**settle)
        self.chatbot.clear(self.stop, None, None, **quick).then(**settle)
        self.upload.upload(self.load_json, self.upload, self.chatbot, **quick).then(**settle)
        demo.load(lambda stored: stored or [], self.store, self.chatbot, **quick).then(**settle).then(
            self.model_info, None, self.model_md, **quick)
        for box in (self.message, *gen):
            box.change(self.budget, [self.chatbot, self.message, *gen], [self.budget_md, self.inspector],
                       trigger_mode="always_last", **quick)
        self.model_box.change(self.defaults_for, self.model_box, self.group_size, **quick)
        self.export_btn.click(
            self.export_and_load,
            [self.model_box, self.weight_format, self.group_size, self.ratio, self.sym, self.device, self.engine],
            [self.export_log, self.model_md], concurrency_limit=1, concurrency_id="export",
            api_visibility="private",
        )
        gr.api(self.api_chat, api_name="chat", concurrency_limit=self.concurrency_limit,
               concurrency_id="generate")

    def settle(self, display: list, message: str, *gen):
        """After every change to the chat: save it in the browser, refresh files and budget."""
        json_file, md_file = self.files(display)
        line, inspector = self.budget(display, message, *gen)
        return display, json_file, md_file, line, inspector
