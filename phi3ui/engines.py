"""The engines by name, and loading one.

`genai` (openvino-genai) is the default; with a concurrency above one it batches answers
(`phi3ui.batching`). `optimum` is optimum-intel's OVModelForCausalLM. The third engine name,
`openai` (`phi3ui.remote_engine`), has no model here: `ChatBackend` connects it to a remote
server instead of loading anything, so it is not in this registry.
"""

from __future__ import annotations

from pathlib import Path

from .batching import BatchingEngine
from .engine import Engine, available_devices, resolve_device
from .genai_engine import GenAIEngine
from .optimum_engine import OptimumEngine
from .settings import RuntimeSettings

ENGINES: dict[str, type[Engine]] = {engine.name: engine for engine in (GenAIEngine, OptimumEngine)}

__all__ = ["ENGINES", "Engine", "available_devices", "load_engine", "resolve_device"]


def load_engine(folder: Path, runtime: RuntimeSettings, concurrency: int = 1) -> Engine:
    """The engine for `runtime`; genai with `concurrency` > 1 batches that many answers at once.
    The others answer one at a time, the rest waiting for their turn."""
    runtime.validate()
    if runtime.engine == GenAIEngine.name and concurrency > 1:
        return BatchingEngine(folder, runtime, concurrency)
    return ENGINES[runtime.engine](folder, runtime, concurrency=1)
