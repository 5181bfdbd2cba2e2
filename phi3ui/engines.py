"""The local engines by kind name (`phi3ui.settings.ENGINES`), and loading one.

`genai` (openvino-genai) is the default; with a concurrency above one it batches answers
(`phi3ui.batching`). `optimum` is optimum-intel's OVModelForCausalLM. The remote kind,
`openai` (`phi3ui.remote_engine`), has no model here: `ChatBackend` connects it to a remote
server instead of loading anything, so it has no class here.
"""

from __future__ import annotations

from pathlib import Path

from .batching import BatchingEngine
from .engine import Engine, available_devices, resolve_device
from .genai_engine import GenAIEngine
from .optimum_engine import OptimumEngine
from .settings import LOCAL_ENGINES, RuntimeSettings, SettingsError

CLASSES: dict[str, type[Engine]] = {engine.kind.name: engine for engine in (GenAIEngine, OptimumEngine)}
BATCHING: dict[str, type[Engine]] = {BatchingEngine.kind.name: BatchingEngine}  # for kinds that batch
if set(CLASSES) != set(LOCAL_ENGINES):
    raise ImportError(f"Engine kinds without a class: {set(LOCAL_ENGINES) ^ set(CLASSES)}")

__all__ = ["CLASSES", "Engine", "available_devices", "load_engine", "resolve_device"]


def load_engine(folder: Path, runtime: RuntimeSettings, concurrency: int = 1) -> Engine:
    """The engine for `runtime`; a kind that batches answers `concurrency` at once. The
    others answer one at a time, the rest waiting for their turn."""
    runtime.validate()
    kind = runtime.kind
    if kind.remote:
        raise SettingsError(f"The {kind.name} engine has no model to load here: ChatBackend connects it.")
    if kind.batches and concurrency > 1:
        return BATCHING[kind.name](folder, runtime, concurrency)
    return CLASSES[kind.name](folder, runtime, concurrency=1)
