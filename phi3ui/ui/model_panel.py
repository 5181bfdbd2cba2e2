"""The model panel in the sidebar: what is loaded, the export presets, and Export and load
(model → OpenVINO IR, cached, then loaded). "Export" on this page means only that."""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr

from ..export import default_settings
from ..pump import pump
from ..settings import (
    PRESETS,
    ExportSettings,
    RuntimeSettings,
    SettingsError,
    export_preset,
)

PROGRESS_LINES = 40  # the last lines of the exporter's progress the panel shows
POLL_S = 1.0  # how often a page asks how far the model's preparation has got, while it runs


class ModelPanel:
    """The model panel's events; mixed into `Page`."""

    def model_info(self) -> str:
        loaded = self.backend.loaded
        if loaded is None:
            return "No model loaded yet: see the note above the chat."
        notices = "".join(f"\n\n> ⚠️ {n}" for n in loaded.notices)
        # Visitors of a locked server get no server paths: the model's name, not its folder.
        return f"Loaded: {loaded.describe(folder=not self.lock_settings)}{notices}"

    def preparation(self) -> tuple[dict, str, gr.Timer]:
        """The banner over the chat, the model panel's text, and the poll timer, as the
        model's preparation stands: the banner shows while it runs (and after a start that
        failed), and the page stops polling once it has ended."""
        snapshot, loaded = self.backend.preparing(), self.backend.loaded
        # Until a model is loaded, also before the start's preparation has begun.
        waiting = loaded is None and not (snapshot and snapshot.failure)
        polling = gr.Timer(POLL_S, active=bool(waiting or (snapshot and snapshot.active)))
        if snapshot is None or (snapshot.failure and loaded is not None):  # a sidebar failure is in its log
            return gr.update(visible=False, value=""), self.model_info(), polling
        if snapshot.failure:
            text = f"❌ **{self.backend.not_ready()}**"
        else:
            meanwhile = (f"Answers come from {loaded.model_name()} until it is loaded." if loaded else
                         "The chat answers once it is ready; what you type stays in the box.")
            detail = f"  \n`{snapshot.line[-200:]}`" if snapshot.line else ""
            text = f"⏳ **{snapshot.describe()}.** {meanwhile}{detail}"
        if snapshot.notice:
            text += f"\n\n> ⚠️ {snapshot.notice}"
        return gr.update(visible=True, value=text), self.model_info(), polling

    def export_and_load(self, model, weight_format, group_size, ratio, sym, all_layers, device,
                        engine, prompt_lookup) -> Iterator[tuple[str, str]]:
        """Export (if not cached) and load, streaming the exporter's progress."""
        if self.lock_settings:
            raise gr.Error("Model settings are locked on this server.")
        try:
            settings = ExportSettings(weight_format=weight_format, group_size=int(group_size),
                                      ratio=float(ratio), sym=bool(sym), all_layers=bool(all_layers)).validate()
            runtime = RuntimeSettings(engine=engine, device=device, prompt_lookup=bool(prompt_lookup),
                                      kv_cache_precision=self.host_kv_cache_precision(engine)).validate()
        except (SettingsError, TypeError, ValueError) as exc:
            raise gr.Error(str(exc)) from None
        progress: list[str] = []
        try:
            for step in pump(lambda emit: self.backend.load(model.strip(), settings, runtime, progress=emit),
                             name="export-and-load"):
                progress.append(step)
                yield "\n".join(progress[-PROGRESS_LINES:]), self.model_info()
        except Exception as exc:  # noqa: BLE001 - shown in the page
            progress.append(f"❌ {exc}")
            yield "\n".join(progress[-PROGRESS_LINES:]), self.model_info()
            raise gr.Error(str(exc)) from None
        yield "\n".join(progress[-PROGRESS_LINES:]), self.model_info()

    def host_kv_cache_precision(self, engine: str) -> str:
        """The KV cache precision the host started with (`--kv-cache-precision`), kept across
        loads from the page on the engine that has one."""
        loaded = self.backend.loaded
        return loaded.runtime.kv_cache_precision if loaded and engine == "genai" else ""

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
