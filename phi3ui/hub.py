"""Models on the Hugging Face hub: what a repo holds before anything is fetched, its download
into the Hugging Face cache (`HF_HOME`) with progress, and the note that a download of
OpenVINO IR finished, so later starts load it with no network.

Failures are `Unreachable` (the hub, the repo or the connection) and resources'
`NotEnoughDisk`; export.py tells them as export errors.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from . import resources
from .progress import Progress
from .resources import Weights
from .settings import cache_root

# What a download skips: other formats of the same weights, and originals kept beside them.
NOT_DOWNLOADED = ("*.gguf", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack", "*.ot", "original/*")


class Unreachable(Exception):
    """The model cannot be had from the hub now; the message says so in the user's terms."""


def is_openvino_folder(path: Path) -> bool:
    return (path / "openvino_model.xml").exists()


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class HubRepo:
    """A hub model as its file list tells it, before anything is downloaded."""

    model: str
    revision: str  # the commit the sizes and config were read from: the download takes the same
    files: dict[str, int]  # name -> bytes
    config: dict

    @property
    def is_openvino(self) -> bool:
        return "openvino_model.xml" in self.files

    def weights(self) -> Weights:
        return Weights(sum(self.files[n] for n in resources.weight_files(list(self.files))),
                       resources.config_dtype(self.config))

    def not_needed(self) -> tuple[str, ...]:
        """What a download for an export skips: besides NOT_DOWNLOADED, weights in a second
        format (pytorch_model.bin beside safetensors)."""
        weights = resources.weight_files(list(self.files))
        others = [n for n in self.files if n.endswith(resources.WEIGHT_SUFFIXES) and n not in weights]
        return (*NOT_DOWNLOADED, *others)

    def download_size(self, ignore: tuple[str, ...]) -> int:
        return sum(size for name, size in self.files.items() if not any(fnmatch(name, p) for p in ignore))


def repo(model: str) -> HubRepo:
    """A hub model's files with their sizes, and its config."""
    from huggingface_hub import HfApi, hf_hub_download

    try:
        info = HfApi().model_info(model, files_metadata=True)
        config = json.loads(Path(hf_hub_download(model, "config.json", revision=info.sha)).read_text())
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated: all mean "not here"
        raise Unreachable(
            f"{model} is not cached here and the Hugging Face hub cannot be reached "
            f"({type(exc).__name__}). Connect to the internet once and export it with "
            f"`python -m phi3ui.export {model}`, or pass a local folder with --model."
        ) from exc
    return HubRepo(model, info.sha, {s.rfilename: s.size or 0 for s in info.siblings or []}, config)


def _progress_bar(progress: Progress) -> type:
    """A tqdm class for huggingface_hub's download bars that reports the bytes bar to
    `progress` and draws nothing."""
    from tqdm.std import tqdm

    class Bar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            super().__init__(*args, **{**kwargs, "disable": False, "file": open(os.devnull, "w")})  # noqa: SIM115

        def update(self, n=1):
            shown = super().update(n)
            if self.unit == "B":
                progress.transfer(int(self.n), int(self.total or 0))
            return shown

        def close(self):
            super().close()
            self.fp.close()

    return Bar


def download(hub_repo: HubRepo, ignore: tuple[str, ...], progress: Progress) -> Path:
    """The repo's files (but `ignore`) in the Hugging Face cache, with progress; files already
    there are not fetched again, and a download that broke off goes on from where it stopped."""
    from huggingface_hub import constants, snapshot_download

    hub_cache = Path(constants.HF_HUB_CACHE)
    resources.check_disk(hub_cache, hub_repo.download_size(ignore), f"downloading {hub_repo.model}")
    progress.stage("Downloading")
    try:
        return Path(snapshot_download(hub_repo.model, revision=hub_repo.revision, ignore_patterns=list(ignore),
                                      tqdm_class=_progress_bar(progress)))
    except Exception as exc:  # noqa: BLE001 - a dropped connection, a timeout, a refused file: not here
        if resources.is_disk_full(exc):
            raise resources.NotEnoughDisk(resources.disk_full_text(hub_cache)) from exc
        raise Unreachable(f"Downloading {hub_repo.model} failed ({type(exc).__name__}); it goes on from where it "
                          "stopped at the next start.") from exc


def _note(model: str) -> Path:
    return cache_root() / "downloads" / (model.replace("/", "--") + ".json")


def downloaded(model: str) -> Path | None:
    """The folder of a finished download of `model`'s OpenVINO IR, if there is one still."""
    try:
        folder = Path(json.loads(_note(model).read_text())["folder"])
    except (OSError, ValueError, KeyError):
        return None
    return folder if is_openvino_folder(folder) else None


def download_openvino(hub_repo: HubRepo, progress: Progress) -> Path:
    """A repo of OpenVINO IR, downloaded and noted as finished (the note is written last, so an
    interrupted download is never loaded)."""
    folder = download(hub_repo, NOT_DOWNLOADED, progress)
    note = _note(hub_repo.model)
    note.parent.mkdir(parents=True, exist_ok=True)
    note.write_text(json.dumps({"source": hub_repo.model, "folder": str(folder), "downloaded_at": utc_now()},
                               indent=2))
    return folder
