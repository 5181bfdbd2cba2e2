"""The page's components, placed: the sidebar (conversations, the model panel, the generation
settings) and the chat. `render` returns them as one `Components`, by name; no event is wired
here (phi3ui/ui/page.py does that, in one place)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from .. import chat_presets, conversations, versions
from ..display import LATEX_DELIMITERS
from ..engines import available_devices
from ..settings import (
    BUNDLED_EXPORT,
    ENGINES,
    GENERATION_TABLE,
    LOCAL_ENGINES,
    PRESETS,
    WEIGHT_FORMATS,
    ExportSettings,
    GenerationSettings,
    RuntimeSettings,
    Setting,
)

if TYPE_CHECKING:
    from .page import Page

STATIC = Path(__file__).parent / "static"
EXAMPLES = [
    "Explain what int4 weight compression does to a language model, in three sentences.",
    "Write a Python function that checks whether a string is a palindrome.",
    "What is the capital of France?",
    "把“早上好”翻译成英语和日语。",
]
EMPTY_STATE = (
    "### 💬 Ask anything\n\n"
    "Everything runs on this machine; nothing leaves it. Pick an example or type below."
)
# The assets element tells the page's sync event when another tab wrote (storage.js, onOtherTab).
ON_OTHER_TAB = "window.phi3ui.onOtherTab(() => trigger('click'));"


def head() -> str:
    """The page's CSS, its browser-storage script and its paste-a-file script (static/), for
    the document's <head>."""
    prefix, presets = json.dumps(conversations.STORAGE_PREFIX), json.dumps(chat_presets.STORAGE_PREFIX)
    return (f"<style>{(STATIC / 'page.css').read_text()}</style>\n"
            f"<script>window.PHI3UI_PREFIX = {prefix}; window.PHI3UI_PRESET_PREFIX = {presets};\n"
            f"{(STATIC / 'storage.js').read_text()}</script>\n"
            f"<script>{(STATIC / 'attach.js').read_text()}</script>")


@dataclass
class Components:
    """Every component the page's events use, by name."""

    sidebar: gr.Sidebar
    assets: gr.HTML  # the CSS and storage script; clicked (by the script) when another tab wrote
    # conversations
    new_chat: gr.Button
    search: gr.Textbox
    conv_list: gr.Radio
    conv_title: gr.Textbox
    delete_btn: gr.Button
    download_all_btn: gr.Button  # every conversation as one JSON file
    import_all: gr.UploadButton
    restore_btn: gr.Button  # brings the last deleted conversation back
    # the model panel
    model_md: gr.Markdown
    model_box: gr.Textbox
    export_preset: gr.Radio
    weight_format: gr.Dropdown
    group_size: gr.Number
    ratio: gr.Slider
    sym: gr.Checkbox
    all_layers: gr.Checkbox
    device: gr.Dropdown
    engine: gr.Radio
    prompt_lookup: gr.Checkbox
    export_btn: gr.Button
    export_log: gr.Textbox
    # chat presets: pick one, save the settings as one, delete one of your own
    chat_preset: gr.Dropdown  # the conversation's preset (its name), among the host's and the visitor's
    preset_name: gr.Textbox
    save_preset: gr.Button
    delete_preset: gr.Button
    preset_note: gr.Markdown
    # generation settings, by settings.GENERATION_TABLE name, in its order
    settings: dict[str, gr.components.Component]
    # the chat
    preparing: gr.Markdown  # how far the model's download, export and load have got, while they run
    poll: gr.Timer  # ticks while they run
    chatbot: gr.Chatbot
    # the row under the chat: the message it acts on with its version, ‹ ›, "Fork from here"
    version_md: gr.Markdown
    previous_version: gr.Button
    next_version: gr.Button
    fork_btn: gr.Button
    message: gr.MultimodalTextbox  # the text and the files attached to it
    send: gr.Button
    stop_btn: gr.Button
    clear: gr.Button
    storage_note: gr.Markdown  # what happened to the kept conversations
    budget_md: gr.Markdown
    inspector: gr.Code
    dl_json: gr.DownloadButton
    dl_md: gr.DownloadButton
    upload: gr.UploadButton
    # hidden state: the conversation on screen ({id, title, renamed, preset}); the other versions of
    # the chat on screen (phi3ui/versions.py); the chat a change left to save; what the browser's
    # storage is to do to save the chat on screen, and to go to another conversation (two, so
    # that a save and a change of conversation at the same moment each do their own;
    # conversation_list.py decides, storage.js does it); the last deleted conversation; the
    # storage's report, which the browser fills in; the file of all conversations; whether an
    # answer is on its way; the window's width; what the browser's storage is to do with the
    # chat presets
    current: gr.JSON
    versions: gr.JSON
    unsaved: gr.JSON
    save_job: gr.JSON
    open_job: gr.JSON
    deleted: gr.JSON
    storage_report: gr.JSON
    download_text: gr.Textbox
    streaming: gr.Checkbox
    viewport_width: gr.Number
    preset_job: gr.JSON

    @property
    def details(self) -> list:
        """What chat.py's `details` fills after every change, in its order."""
        return [self.dl_json, self.dl_md, self.budget_md, self.inspector]

    @property
    def gen(self) -> list:
        """The generation settings' components, in the table's order."""
        return list(self.settings.values())


def render(page: Page) -> tuple[gr.Blocks, Components]:
    """The page's Blocks and its components."""
    # delete_cache: Gradio's copies of download files go after a day, checked hourly.
    with gr.Blocks(title="phi3ui · local Phi-3 chat", delete_cache=(3600, 86400), analytics_enabled=False) as demo:
        with gr.Sidebar(label="Conversations and settings", open=True, width=340, elem_id="sidebar") as sidebar:
            assets = gr.HTML("", head=head(), elem_id="phi3ui-assets", container=False, padding=False,
                             js_on_load=ON_OTHER_TAB)
            parts = {"sidebar": sidebar, "assets": assets, **_render_conversations(),
                     **_render_model_panel(page), **_render_generation(page)}
        parts.update(_render_chat())
        parts.update(_render_state())
    return demo, Components(**parts)


def _render_conversations() -> dict:
    gr.Markdown("### Conversations")
    parts = {
        "new_chat": gr.Button("+ New chat", size="sm", elem_id="new-chat"),
        "search": gr.Textbox(placeholder="Search conversations", show_label=False, lines=1, max_lines=1,
                             container=False, elem_id="conv-search"),
        "conv_list": gr.Radio([], show_label=False, container=False, interactive=True, elem_id="conv-list"),
        "conv_title": gr.Textbox(label="Title (Enter renames it)", max_lines=1, placeholder=conversations.NEW_TITLE,
                                 elem_id="conv-title"),
    }
    with gr.Row():
        parts["delete_btn"] = gr.Button("Delete", size="sm", variant="stop", min_width=60, elem_id="conv-delete")
        parts["download_all_btn"] = gr.Button("Download all", size="sm", min_width=60, elem_id="download-all")
        parts["import_all"] = gr.UploadButton("Import", file_types=[".json"], size="sm", min_width=60,
                                              elem_id="import-all")
    parts["restore_btn"] = gr.Button("Restore", size="sm", visible=False, elem_id="conv-restore")
    return parts


def _render_model_panel(page: Page) -> dict:
    loaded, startup = page.backend.loaded, page.startup
    if loaded:
        source, runtime, chosen = loaded.exported.source, loaded.runtime, loaded.exported.settings
    else:  # still being prepared: what it will be
        source, runtime, chosen = (startup.model, startup.runtime, startup.export) if startup else ("", None, None)
    defaults = chosen or (BUNDLED_EXPORT if source == "bundled" else ExportSettings())
    runtime = runtime or RuntimeSettings()
    gr.Markdown("### Model")
    parts = {"model_md": gr.Markdown(page.model_info(), elem_id="model-info", latex_delimiters=[])}
    # A remote engine (--engine openai) has nothing here to export, load or place on a device.
    remote = runtime.is_remote
    with gr.Accordion("Export and load", open=False, visible=not (page.lock_settings or remote)):
        parts["model_box"] = gr.Textbox(label="Model id or folder", value=source,
                                        info="Hugging Face id, local folder, OpenVINO folder, or 'bundled'")
        parts["export_preset"] = gr.Radio(
            list(PRESETS), label="Export preset", elem_id="export-preset", value=page.preset_of(defaults, source),
            info="fills the fields below. The faster presets compress more layers to int4 "
                 "and answer less like the full model: see bench/results/quality.md")
        parts["weight_format"] = gr.Dropdown(list(WEIGHT_FORMATS), value=defaults.weight_format,
                                             label="Weight format", elem_id="export-format")
        parts["group_size"] = gr.Number(defaults.group_size, precision=0, label="Group size",
                                        elem_id="export-group-size",
                                        info="must divide the layer widths; -1 = per channel")
        parts["ratio"] = gr.Slider(0, 1, defaults.ratio, step=0.05, label="Ratio (share in int4)",
                                   elem_id="export-ratio")
        parts["sym"] = gr.Checkbox(defaults.sym, label="Symmetric", elem_id="export-sym")
        parts["all_layers"] = gr.Checkbox(defaults.all_layers, label="All layers in int4",
                                          info="the embeddings and the output layer too (int4 only)",
                                          elem_id="export-all-layers")
        parts["device"] = gr.Dropdown([*available_devices(), "AUTO"], allow_custom_value=True,
                                      value=loaded.engine.device if loaded else runtime.device, label="Device")
        parts["engine"] = gr.Radio(list(LOCAL_ENGINES), value=runtime.engine if not remote else "genai",
                                   label="Engine",
                                   info=" · ".join(f"{name}: {ENGINES[name].summary}" for name in LOCAL_ENGINES))
        parts["prompt_lookup"] = gr.Checkbox(runtime.prompt_lookup,
                                             label="Prompt lookup", elem_id="prompt-lookup",
                                             info="genai only: answers that repeat the conversation "
                                                  "(edits, quotes, code) come out several times faster")
        parts["export_btn"] = gr.Button("Export and load", variant="secondary", elem_id="export-button")
        parts["export_log"] = gr.Textbox(label="Progress", lines=6, max_lines=12, interactive=False, autoscroll=True)
    return parts


def _render_generation(page: Page) -> dict:
    """One component per row of settings.GENERATION_TABLE, with its label, bounds and step."""
    gr.Markdown("### Generation")
    parts = _render_chat_presets(page)
    limits = page.backend.limits
    components = {}
    for setting in GENERATION_TABLE:
        components[setting.name] = (page.system_prompt_box() if setting.name == "system_prompt"
                                    else _setting_component(setting, limits))
    return {**parts, "settings": components}


def _render_chat_presets(page: Page) -> dict:
    """Pick a chat preset (it fills the settings below), save them as one, delete one."""
    parts = {"chat_preset": gr.Dropdown(page.preset_choices([]), value=None, label="Chat preset",
                                        info="fills the system prompt and the settings below; the chat keeps it",
                                        interactive=True, elem_id="chat-preset")}
    parts["preset_name"] = gr.Textbox(placeholder="Preset name", show_label=False, max_lines=1, container=False,
                                      elem_id="preset-name")
    with gr.Row():
        parts["save_preset"] = gr.Button("Save as preset", size="sm", min_width=60, elem_id="preset-save")
        parts["delete_preset"] = gr.Button("Delete preset", size="sm", variant="stop", min_width=60,
                                           elem_id="preset-delete")
    parts["preset_note"] = gr.Markdown(elem_id="preset-note", latex_delimiters=[])
    return parts


def _setting_component(setting: Setting, limits) -> gr.components.Component:
    if setting.name == "seed":
        return gr.Number(-1, precision=0, label=setting.label, elem_id=setting.elem_id)
    if setting.type is bool:
        return gr.Checkbox(setting.default, label=setting.label, info=setting.help, elem_id=setting.elem_id)
    if setting.name == "json_schema":
        return gr.Code(setting.default, language="json", label=setting.label, interactive=True, lines=4,
                       elem_id=setting.elem_id)
    low, high = setting.slider_bounds(limits)  # max new tokens: --max-new-tokens-cap
    default = getattr(GenerationSettings(), setting.name)
    return gr.Slider(low, high, min(max(default, low), high), step=setting.step, label=setting.label,
                     info=setting.help, elem_id=setting.elem_id)


def _render_chat() -> dict:
    gr.Markdown("## phi3ui · chat with Phi-3 on OpenVINO, on your own machine", elem_id="page-title")
    parts = {"preparing": gr.Markdown(visible=False, elem_id="preparing", latex_delimiters=[]),
             "poll": gr.Timer(active=False)}
    parts["chatbot"] = gr.Chatbot(
        show_label=False, height="62vh", editable="user", elem_id="chat", placeholder=EMPTY_STATE,
        examples=[{"text": e} for e in EXAMPLES], buttons=["copy", "copy_all"], allow_tags=False,
        feedback_options=None,
        # Math: only the delimiters display.to_display puts around the math it finds, which
        # no other text holds (Gradio cuts left…right out of the raw text before Markdown).
        latex_delimiters=LATEX_DELIMITERS,
    )
    with gr.Row(equal_height=True, elem_id="version-row"):
        parts["previous_version"] = gr.Button("‹", size="sm", scale=0, min_width=40, interactive=False,
                                              elem_id="previous-version")
        parts["next_version"] = gr.Button("›", size="sm", scale=0, min_width=40, interactive=False,
                                          elem_id="next-version")
        parts["version_md"] = gr.Markdown(visible=False, elem_id="version-info", latex_delimiters=[])
        parts["fork_btn"] = gr.Button("Fork from here", size="sm", scale=0, min_width=120, interactive=False,
                                      elem_id="fork")
    with gr.Row(equal_height=True):
        # 📎, dropping a file on the box or pasting one attaches it (phi3ui/attachments.py reads
        # it: any type may be picked, so a wrong one gets that module's message, naming it).
        # Pasted text stays text however long (Gradio would make a long paste a file).
        parts["message"] = gr.MultimodalTextbox(
            placeholder="Message (Enter sends, Shift+Enter for a new line; 📎, drop or paste to attach "
                        "text, code, CSV, JSON or PDF files)",
            show_label=False, lines=1, max_lines=8, scale=8, elem_id="message", autofocus=True,
            sources=["upload"], file_count="multiple", submit_btn=False, max_plain_text_length=10**9)
        parts["send"] = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
        parts["stop_btn"] = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="stop", visible=False)
        parts["clear"] = gr.Button("New chat", scale=1, min_width=80, elem_id="clear")
    # No LaTeX where text from a file, a conversation or the model is shown: Gradio would cut
    # $$…$$ out before Markdown, across code spans whose text display.py leaves unescaped.
    parts["storage_note"] = gr.Markdown(elem_id="conv-note", latex_delimiters=[])
    parts["budget_md"] = gr.Markdown(elem_id="budget", latex_delimiters=[])
    with gr.Accordion("Prompt inspector: what the model will see", open=False, elem_id="inspector-box"):
        parts["inspector"] = gr.Code(label="Prompt", language=None, interactive=False, elem_id="inspector")
    with gr.Row():
        parts["dl_json"] = gr.DownloadButton("Download JSON", size="sm", elem_id="download-json")
        parts["dl_md"] = gr.DownloadButton("Download Markdown", size="sm", elem_id="download-md")
        parts["upload"] = gr.UploadButton("Load JSON", file_types=[".json"], size="sm", elem_id="load-json")
    return parts


def _render_state() -> dict:
    return {"current": gr.JSON(None, visible=False), "versions": gr.JSON(versions.empty(), visible=False),
            "unsaved": gr.JSON(None, visible=False),
            "save_job": gr.JSON(None, visible=False), "open_job": gr.JSON(None, visible=False),
            "deleted": gr.JSON(None, visible=False),
            "storage_report": gr.JSON(None, visible=False), "download_text": gr.Textbox(visible=False),
            "streaming": gr.Checkbox(False, visible=False), "viewport_width": gr.Number(None, visible=False),
            "preset_job": gr.JSON(None, visible=False)}
