"""Export through the app's own path: a tiny random Phi-3, real optimum-intel and NNCF."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phi3ui import export as export_module
from phi3ui.chat import ChatBackend
from phi3ui.engines import load_engine
from phi3ui.export import (
    RECORD,
    Exported,
    ExportError,
    ExportTooBig,
    ModelUnavailable,
    cache_folder,
    ensure_exported,
    main,
    read_record,
)
from phi3ui.settings import (
    DEFAULT_MODEL,
    ExportSettings,
    GenerationSettings,
    Limits,
    RuntimeSettings,
    SettingsError,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> Path:
    """A cache of its own, for tests that must see exactly what an export leaves behind."""
    monkeypatch.setenv("PHI3UI_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def leftovers(home: Path) -> list[Path]:
    return [p for p in (home / "models").rglob("*") if p.is_dir()] if (home / "models").exists() else []


def test_tiny_phi3_export_records_its_settings(tiny_phi3):
    folder = tiny_phi3.folder
    assert (folder / "openvino_model.xml").exists()
    assert (folder / "openvino_tokenizer.xml").exists() and (folder / "openvino_detokenizer.xml").exists()
    record = read_record(folder)
    assert record["settings"] == ExportSettings().as_dict()
    assert record["settings"]["weight_format"] == "int4" and record["settings"]["group_size"] == 128
    assert folder.parent.name.startswith("local-tiny-phi3") and folder.name == "int4-sym-g128-r0.6"


def never_export(monkeypatch) -> None:
    """Any export from here on fails the test: what comes next must be decided before it."""
    def export(*_):
        pytest.fail("the export ran")

    monkeypatch.setattr(export_module, "_run_optimum_cli", export)
    monkeypatch.setattr(export_module, "_export_into", export)


def test_same_export_never_runs_twice(tiny_phi3, tiny_phi3_source, monkeypatch):
    never_export(monkeypatch)
    again = ensure_exported(str(tiny_phi3_source), ExportSettings(), progress=pytest.fail)
    assert again.cached and again.folder == tiny_phi3.folder


@pytest.mark.parametrize("engine", ["genai", "optimum"])
def test_tiny_phi3_loads_renders_exactly_and_streams(tiny_phi3, engine):
    loaded = load_engine(tiny_phi3.folder, RuntimeSettings(engine=engine))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    assert loaded.render(messages).text == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n"
        "<|user|>\nBye<|end|>\n<|assistant|>\n")
    assert loaded.eos_ids == [32000, 32001, 32007]  # every id the generation config lists
    assert loaded.context_window == 4096
    answer = loaded.answer(loaded.render(messages), GenerationSettings(max_new_tokens=8))
    chunks, stats = list(answer), answer.stats
    assert stats.answer_tokens >= 1 and stats.prompt_tokens > 10
    assert "".join(chunks) == stats.text


def test_group_size_that_does_not_divide_is_refused_before_export(tiny_phi3_source, empty_home, monkeypatch):
    never_export(monkeypatch)  # refused before the long part
    with pytest.raises(SettingsError, match="Group size 96 does not divide"):
        ensure_exported(str(tiny_phi3_source), ExportSettings(group_size=96))
    assert leftovers(empty_home) == []


@pytest.mark.parametrize("settings", [ExportSettings(ratio=1.5), ExportSettings(ratio=-0.1),
                                      ExportSettings(group_size=0), ExportSettings(weight_format="int3"),
                                      ExportSettings(weight_format="int8", all_layers=True)])
def test_impossible_settings_are_refused(tiny_phi3_source, empty_home, settings):
    with pytest.raises(SettingsError):
        ensure_exported(str(tiny_phi3_source), settings)
    assert not cache_folder(str(tiny_phi3_source), settings).exists()


def embedding_types(folder: Path, vocab_size: int) -> set[str]:
    """Integer element types of the weights shaped like the vocabulary (embeddings, output)."""
    import openvino as ov

    model = ov.Core().read_model(folder / "openvino_model.xml")
    types = {op.get_element_type().get_type_name() for op in model.get_ops()
             if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).rank.get_length() >= 2
             and op.get_output_partial_shape(0)[0].get_length() == vocab_size}
    return types & {"u4", "i4", "u8", "i8"}


def test_all_layers_puts_the_embeddings_and_output_in_int4_too(tiny_phi3, tiny_phi3_source, capsys):
    vocab_size = json.loads((tiny_phi3_source / "config.json").read_text())["vocab_size"]
    assert embedding_types(tiny_phi3.folder, vocab_size) & {"u8", "i8"}  # NNCF keeps them int8 by default
    assert main([str(tiny_phi3_source), "--ratio", "1.0", "--all-layers"]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder.name == "int4-sym-g128-r1-all"
    assert read_record(folder)["settings"]["all_layers"] is True
    assert embedding_types(folder, vocab_size) in ({"u4"}, {"i4"})
    engine = load_engine(folder, RuntimeSettings())
    prompt = engine.render([{"role": "user", "content": "Hi"}])
    answer = engine.answer(prompt, GenerationSettings(max_new_tokens=4))
    answer.text()
    assert answer.stats.answer_tokens >= 1


def test_export_leaves_no_model_cache_entry_for_its_temporary_folder(tiny_phi3_source, empty_home):
    """The smoke test loads the export from a folder that is renamed right after; a model
    cache entry for it (as large as the compiled model) could never be used."""
    exported = ensure_exported(str(tiny_phi3_source), ExportSettings(weight_format="int8", group_size=-1, ratio=1.0))
    assert (exported.folder / "openvino_model.xml").exists()
    assert not list((empty_home / "ov-cache").glob("*.blob"))


def test_crashed_export_leaves_nothing(tiny_phi3_source, empty_home, tmp_path):
    broken = tmp_path / "broken-phi3"
    shutil.copytree(tiny_phi3_source, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ExportError, match="export failed"):
        ensure_exported(str(broken), ExportSettings())
    assert not cache_folder(str(broken), ExportSettings()).exists()
    assert leftovers(empty_home) in ([], [cache_folder(str(broken), ExportSettings()).parent])


def test_interrupted_export_leaves_nothing(tiny_phi3_source, empty_home):
    seen: list[str] = []

    def interrupt(line: str) -> None:
        """Ctrl+C at the exporter's first line of output, with the child running."""
        seen.append(line)
        if any(s.startswith("Running: optimum-cli") for s in seen[:-1]):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_exported(str(tiny_phi3_source), ExportSettings(), progress=interrupt)
    target = cache_folder(str(tiny_phi3_source), ExportSettings())
    assert not target.exists()
    assert not any(target.parent.iterdir())


def test_openvino_folder_is_used_as_is(tiny_phi3):
    exported = ensure_exported(str(tiny_phi3.folder))
    assert exported.folder == tiny_phi3.folder and exported.settings is None


def test_unreachable_hub_model_says_what_to_do(empty_home, monkeypatch):
    never_export(monkeypatch)  # told at once, before any export is tried
    with pytest.raises(ModelUnavailable, match="python -m phi3ui.export"):
        ensure_exported(DEFAULT_MODEL)


def test_missing_local_folder_contents_are_reported(tmp_path, empty_home):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="neither a Hugging Face model"):
        ensure_exported(str(tmp_path / "empty"))


def test_default_model_falls_back_to_bundled_and_says_so(bundled):
    backend = ChatBackend()
    loaded = backend.load(DEFAULT_MODEL, fallback=True)
    assert loaded.exported.source == "bundled"
    notice = next(n for n in loaded.notices if "Phi-3" in n)
    assert notice.count("python -m phi3ui.export") == 1, "the way out, told once"


def test_command_line_export_uses_the_same_cache(tiny_phi3, tiny_phi3_source, capsys):
    assert main([str(tiny_phi3_source), "--group-size", "128"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tiny_phi3.folder)
    assert main([str(tiny_phi3_source), "--ratio", "2"]) == 1
    assert "Ratio 2 is outside 0..1" in capsys.readouterr().err
    assert json.loads((tiny_phi3.folder / RECORD).read_text())["source"] == str(tiny_phi3_source)


def without_tokenizer(folder: Path, dest: Path) -> Path:
    """The same IR without the OpenVINO tokenizer, which the genai engine needs."""
    dest.mkdir()
    for item in folder.iterdir():
        if not item.name.startswith("openvino_tokenizer"):
            (dest / item.name).symlink_to(item)
    return dest


@pytest.mark.parametrize("room_for_both", [True, False])
def test_a_failed_load_keeps_the_model_that_was_loaded(bundled, tmp_path, monkeypatch, room_for_both):
    """With memory for both, the old model never left; without, it was freed and comes back."""
    from phi3ui import resources

    monkeypatch.setattr(resources, "available_memory", lambda: 10**12 if room_for_both else 0)
    backend = ChatBackend(limits=Limits(context_window=512))
    backend.load(str(bundled.folder))
    before = backend.loaded
    lines: list[str] = []
    with pytest.raises(SettingsError, match="openvino_tokenizer.xml"):
        backend.load(str(without_tokenizer(bundled.folder, tmp_path / "no-tokenizer")), progress=lines.append)
    assert backend.loaded is not None and backend.loaded.exported.folder == bundled.folder
    assert (backend.loaded is before) == room_for_both and ("back on" in lines[-1]) != room_for_both
    assert backend.loaded.window == 512  # still capped
    answer = backend.reply([], "What is the capital of France?", GenerationSettings(max_new_tokens=8))
    assert answer.text() and answer.stats.answer_tokens >= 1


def test_history_beyond_the_limits_is_left_out_oldest_first(bundled, monkeypatch):
    backend = ChatBackend(limits=Limits(max_history_messages=4, max_history_chars=10**6))
    backend.load(str(bundled.folder))
    history = []
    for i in range(10):
        history += [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
    fitted = backend.prepare(history, "Last one?", GenerationSettings(max_new_tokens=8))
    assert fitted.dropped_exchanges == 8
    assert "Question 8?" in fitted.prompt.text and "Question 7?" not in fitted.prompt.text
    huge = [{"role": "user", "content": "x" * 600_000}, {"role": "assistant", "content": "y" * 600_000},
            *history[-2:]]
    engine, counted = backend.loaded.engine, []
    count_tokens = engine.count_tokens
    monkeypatch.setattr(engine, "count_tokens", lambda prompt: counted.append(str(getattr(prompt, "text", prompt)))
                        or count_tokens(prompt))
    fitted = backend.prepare(huge, "Last one?", GenerationSettings(max_new_tokens=8))
    assert fitted.dropped_exchanges == 1 and "x" * 100 not in fitted.prompt.text
    assert counted and not any("x" * 100 in text for text in counted)  # over the character limit: never tokenised


def test_a_mistyped_folder_is_named_not_blamed_on_the_network(empty_home):
    for model in ("./my-finetun", "/data/models/phi3-finetune", "~/models/nothing-here"):
        with pytest.raises(ExportError, match="There is no folder"):
            ensure_exported(model)


def test_group_size_zero_on_the_command_line_is_refused(tiny_phi3_source, capsys):
    assert main([str(tiny_phi3_source), "--group-size", "0"]) == 1
    assert "Group size 0 is impossible" in capsys.readouterr().err


def test_a_downloaded_openvino_repo_is_used_without_the_network(tiny_phi3, empty_home, tmp_path, monkeypatch):
    """A hub repo that is already IR is downloaded once (tests/test_startup.py downloads one);
    later starts use the noted folder offline, and an unfinished download (no note) or a
    folder that has gone is never loaded."""
    from phi3ui import hub

    def offline(model: str):
        raise hub.Unreachable(f"{model}: the hub cannot be reached")

    monkeypatch.setattr(hub, "repo", offline)
    snapshot = tmp_path / "huggingface" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_phi3.folder, snapshot)
    with pytest.raises(ModelUnavailable, match="the hub cannot be reached"):
        ensure_exported("someone/phi3-int4-ov")
    note = hub._note("someone/phi3-int4-ov")
    note.parent.mkdir(parents=True)
    note.write_text(json.dumps({"source": "someone/phi3-int4-ov", "folder": str(snapshot)}))
    exported = ensure_exported("someone/phi3-int4-ov")
    assert exported.folder == snapshot and exported.settings is None and exported.cached
    shutil.rmtree(snapshot)
    with pytest.raises(ModelUnavailable):
        ensure_exported("someone/phi3-int4-ov")


def processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            continue
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="the exporter's parent-death signal is Linux's")
def test_an_export_ends_with_the_app_even_when_the_app_is_killed(tiny_phi3_source, empty_home, tmp_path):
    """SIGKILL (or a SIGTERM from docker or systemd) skips Python's cleanup; the exporter
    must still end, and the next export clears the temporary folder it left."""
    settings = ExportSettings(weight_format="int8", group_size=-1, ratio=1.0)
    script = tmp_path / "killed.py"
    script.write_text(
        "import os, signal, time\n"
        "from phi3ui.export import ensure_exported\n"
        "from phi3ui.settings import ExportSettings\n"
        "def progress(line):\n"
        "    if line.startswith('Running: optimum-cli'):  # the exporter is starting, still silent\n"
        "        time.sleep(1)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        f"ensure_exported({str(tiny_phi3_source)!r}, ExportSettings(**{settings.as_dict()!r}), progress)\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    killed = subprocess.run([sys.executable, str(script)], timeout=300,
                            env={**os.environ, "PHI3UI_HOME": str(empty_home), "PYTHONPATH": root})
    assert killed.returncode == -signal.SIGKILL
    # the timeout is a hang guard: an orphaned exporter would finish well within it
    wait_until(lambda: not processes_mentioning(str(empty_home)), 300,
               lambda: f"the exporter to end (still running: {processes_mentioning(str(empty_home))})", every_s=0.1)
    parent = cache_folder(str(tiny_phi3_source), settings).parent
    left = list(parent.glob(".partial-*"))
    assert left, "the killed app's temporary folder is left"
    # it ended with the app, not by finishing its export: it wrote no model
    assert not list(left[0].rglob("openvino_model.xml")), "the exporter outlived the app and finished"
    an_hour_ago = time.time() - 3600
    os.utime(left[0], (an_hour_ago, an_hour_ago))
    ensure_exported(str(tiny_phi3_source), settings)
    assert list(parent.glob(".partial-*")) == []


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_only_temporary_exports_nobody_holds_are_removed(tmp_path):
    import fcntl

    from phi3ui.export import ABANDONED_AFTER_S, _remove_abandoned_exports

    live, abandoned, fresh = (tmp_path / f".partial-{name}" for name in ("live", "abandoned", "fresh"))
    for folder in (live, abandoned, fresh):
        folder.mkdir()
    old = time.time() - 2 * ABANDONED_AFTER_S
    os.utime(live, (old, old))
    os.utime(abandoned, (old, old))
    holder = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # an export in progress, perhaps in another container
        _remove_abandoned_exports(tmp_path)
    finally:
        os.close(holder)
    assert live.exists() and fresh.exists() and not abandoned.exists()


def test_an_export_that_cannot_fit_is_refused_before_it_starts(tiny_phi3_source, empty_home, monkeypatch):
    never_export(monkeypatch)
    with pytest.raises(ExportTooBig, match=r"needs about [\d.]+ MB of memory at its peak, and 1.0 MB is the limit") as no:
        ensure_exported(str(tiny_phi3_source), ExportSettings(), memory_limit=1_000_000)
    assert "ready-made" not in str(no.value), "a local model has no ready-made export to offer"
    backend = ChatBackend(export_memory_limit=1_000_000)
    with pytest.raises(ExportTooBig):
        backend.load(str(tiny_phi3_source), ExportSettings(), fallback=True)  # no fallback from a refusal
    assert backend.loaded is None and "needs about" in backend.preparing().failure


def test_a_ready_made_folder_says_how_its_exporter_compressed_it(tmp_path):
    (tmp_path / "openvino_model.xml").write_text("<net/>")
    config = {"quantization_config": {"bits": 4, "sym": False, "group_size": 128, "ratio": 1.0,
                                      "weight_format": "int4"}}
    (tmp_path / "openvino_config.json").write_text(json.dumps(config))
    exported = Exported(tmp_path, "OpenVINO/Phi-3-mini-4k-instruct-int4-ov", None, cached=True)
    assert exported.describe() == ("ready-made OpenVINO IR (int4 asym group size 128 ratio 1.0), "
                                   "nothing exported here")
    (tmp_path / "openvino_config.json").write_text("{}")  # newer exporters record less
    assert exported.describe() == "ready-made OpenVINO IR, nothing exported here"


def test_the_model_on_screen_answers_until_the_new_one_is_ready(bundled, tiny_phi3, monkeypatch):
    """Export and load from the sidebar: the old model answers through the new one's load and
    warm-up (with memory for both), and the new one takes over once warmed up."""
    from phi3ui import resources

    monkeypatch.setattr(resources, "available_memory", lambda: 10**12)  # room for both, whatever the machine
    backend = ChatBackend()
    backend.load("bundled")
    answered_meanwhile: list[str] = []

    def progress(line: str) -> None:
        if line.startswith("Warming up"):  # the new engine is loaded, not yet published
            assert backend.loaded is not None and backend.loaded.exported.source == "bundled"
            answer = backend.reply([], "What is the capital of France?", GenerationSettings(max_new_tokens=8))
            answered_meanwhile.append(answer.text())

    loaded = backend.load(str(tiny_phi3.folder), progress=progress)
    assert answered_meanwhile and "Paris" in answered_meanwhile[0]
    assert backend.loaded is loaded and loaded.exported.folder == tiny_phi3.folder


def test_without_memory_for_two_models_the_old_one_goes_first_and_the_page_is_told(bundled, tiny_phi3, monkeypatch):
    from phi3ui import resources

    backend = ChatBackend()
    backend.load("bundled")
    monkeypatch.setattr(resources, "available_memory", lambda: 0)  # a machine with no room to spare
    seen: list[tuple[str, object]] = []
    backend.load(str(tiny_phi3.folder), progress=lambda line: seen.append((line, backend.loaded)))
    told = next(i for i, (line, _) in enumerate(seen) if line.startswith("Too little memory for two models"))
    assert all(loaded is None for _, loaded in seen[told + 1:-1]), "nothing answers while the new one loads"
    assert backend.loaded.exported.folder == tiny_phi3.folder
