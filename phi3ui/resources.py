"""Will it fit: memory and disk, checked before a download or an export starts, so a machine
that is too small hears why in words instead of being killed by the kernel mid-way.

The export's peak is estimated from the size of the source's weights as they lie on disk
(optimum-intel loads them in the dtype they are stored in): `EXPORT_BASE + EXPORT_FACTOR x
weights`, fitted to two exports measured here (bench/NOTES.md, "Export memory").
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .progress import size_text

EXPORT_BASE = 0.85e9  # bytes of Python, torch, optimum and NNCF before any weight
EXPORT_FACTOR = 1.35  # peak bytes per byte of weights on disk
# An int4 export's output is about a third of a bf16 source; the check wants room for an
# int8 or fp16 one (up to the size of a 16-bit source).
EXPORT_OUTPUT_FACTOR = 1.0



class DoesNotFit(Exception):
    """Not enough memory or disk for what was asked; the message says both numbers and the
    ways out."""


class NotEnoughMemory(DoesNotFit):
    pass


class NotEnoughDisk(DoesNotFit):
    pass


@dataclass(frozen=True)
class Weights:
    """A source model's weights: their size on disk and the dtype its config names."""

    size: int
    dtype: str = ""

    def describe(self) -> str:
        return f"{size_text(self.size)} of {self.dtype + ' ' if self.dtype else ''}weights"


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weight_files(names: list[str]) -> list[str]:
    """The files transformers loads weights from: safetensors when there are any."""
    safetensors = [n for n in names if n.endswith(".safetensors")]
    return safetensors or [n for n in names if n.endswith(WEIGHT_SUFFIXES) and "/" not in n.strip("./")]


def folder_weights(folder: Path, config: dict) -> Weights:
    files = weight_files([p.name for p in folder.iterdir() if p.is_file()])
    return Weights(sum((folder / name).stat().st_size for name in files), config_dtype(config))


def config_dtype(config: dict) -> str:
    return str(config.get("torch_dtype") or config.get("dtype") or "")


def export_peak(weights: Weights) -> int:
    return int(EXPORT_BASE + EXPORT_FACTOR * weights.size)


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int:
    """Memory a new process may use now: the system's own figure (MemAvailable on Linux),
    within a container's own limit (cgroup v2 or v1) where one is set, as on Hugging Face Spaces."""
    import psutil

    available = int(psutil.virtual_memory().available)
    for folder, limit_file, usage_file, cache_field in (
            ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")):
        limit, usage = _read_int(f"{folder}/{limit_file}"), _read_int(f"{folder}/{usage_file}")
        if limit is None or usage is None or limit >= 1 << 60:  # v1 says "no limit" with a huge number
            continue
        # The usage counts file pages the kernel can drop (weights just read), as MemAvailable does not.
        usage -= _cgroup_stat(f"{folder}/memory.stat").get(cache_field, 0)
        available = min(available, max(0, limit - usage))
    return available


def _cgroup_stat(path: str) -> dict[str, int]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    return {name: int(value) for name, value in (line.split() for line in lines if len(line.split()) == 2)
            if value.isdigit()}


# A model's resident memory per byte of its IR weights file at the end of its warm-up, the
# load's peak: the mapped weights (handed back just after) plus the CPU plugin's own copy and
# working memory (bench/NOTES.md, "Export memory").
LOAD_FACTOR = 2.2


def fits_beside(folder: Path) -> bool:
    """Whether the model in `folder` can be loaded while the current one stays in memory."""
    weights = sum(p.stat().st_size for p in folder.glob("*.bin"))
    return LOAD_FACTOR * weights < available_memory()


def check_export_memory(model: str, weights: Weights, limit: int | None = None, ready_made: str | None = None) -> int:
    """The export's estimated peak; `NotEnoughMemory` when it is above the memory available
    (`limit` when the host set one, else what the system reports). `ready_made`: the hub's
    ready-made OpenVINO export of this model, if there is one, as the first way out."""
    need = export_peak(weights)
    available = available_memory() if limit is None else limit
    if need > available:
        told = "the limit set with --export-memory-limit" if limit is not None else "available now"
        instead = (f"use the ready-made OpenVINO export {ready_made} instead (--ready-made, or that id as the "
                   f"model), which needs no export here; " if ready_made else "")
        raise NotEnoughMemory(
            f"Exporting {model} ({weights.describe()}) needs about {size_text(need)} of memory at its peak, and "
            f"{size_text(available)} is {told}. Ways out: {instead}close other programs; export on a machine "
            f"with more memory and pass the exported folder as the model. If you know the estimate is too "
            f"high, raise --export-memory-limit (PHI3UI_EXPORT_MEMORY_LIMIT).")
    return need


def check_disk(folder: Path, need: int, what: str) -> None:
    """`DoesNotFit` when the disk holding `folder` has less than `need` bytes free."""
    existing = _existing(folder)
    free = shutil.disk_usage(existing).free
    if need > free:
        raise NotEnoughDisk(f"The disk is too full for {what}: it needs about {size_text(need)} and "
                         f"{size_text(free)} is free at {existing}. Free some space, or set PHI3UI_HOME "
                         f"(and HF_HOME) to a bigger disk.")


def is_disk_full(error: BaseException | str) -> bool:
    text = str(error)
    return "No space left on device" in text or getattr(error, "errno", None) == 28


def _existing(folder: Path) -> Path:
    """The folder, or the nearest parent that exists yet."""
    return next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))


def disk_full_text(folder: Path) -> str:
    existing = _existing(folder)
    return (f"The disk is full ({size_text(shutil.disk_usage(existing).free)} free at {existing}). "
            f"Free some space, or set PHI3UI_HOME (and HF_HOME) to a bigger disk.")


def export_disk_need(weights: Weights, weight_format: str) -> int:
    """Room for the export's output: fp16's rotary repair writes its weights file twice."""
    return int(EXPORT_OUTPUT_FACTOR * weights.size * (2 if weight_format == "fp16" else 1))
