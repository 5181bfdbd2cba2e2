"""What keeps a loaded model's memory down (issue 29): the export's mapped pages handed back
once the plugin has its own copy of the weights, the prompt read in pieces, a 4-bit KV cache
on request, and the batching engine's cache sized from the window. How much each saves is
measured by bench/memory.py, not here."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

from phi3ui import mapped_files
from phi3ui.engines import load_engine
from phi3ui.genai_engine import PROMPT_CHUNK_TOKENS, kv_cache_blocks
from phi3ui.settings import GenerationSettings, RuntimeSettings, SettingsError
from tests.app_process import ROOT

PAGES = 1024  # of 4 KiB: 4 MiB


def test_released_pages_of_a_read_only_mapping_are_read_back_from_the_file(tmp_path: Path) -> None:
    data = os.urandom(PAGES * 4096)
    (tmp_path / "weights.bin").write_bytes(data)
    with open(tmp_path / "weights.bin", "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert mapped[:] == data  # every page read, so resident
        assert mapped_files.resident_bytes(tmp_path) >= len(data)
        assert mapped_files.release(tmp_path) >= len(data)
        assert mapped_files.resident_bytes(tmp_path) == 0
        assert mapped[:] == data  # read back from the file
        assert mapped_files.resident_bytes(tmp_path) >= len(data)


def test_a_writable_mapping_keeps_what_was_written(tmp_path: Path) -> None:
    (tmp_path / "scratch.bin").write_bytes(bytes(PAGES * 4096))
    with open(tmp_path / "scratch.bin", "r+b") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
        mapped[:5] = b"hello"  # a private copy of the page, in memory only
        assert mapped_files.mappings_under(tmp_path) == []
        assert mapped_files.release(tmp_path) == 0
        assert mapped[:5] == b"hello"


def test_only_mappings_inside_the_folder_count(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model-other").mkdir()
    (tmp_path / "model-other" / "w.bin").write_bytes(os.urandom(4096))
    with open(tmp_path / "model-other" / "w.bin", "rb") as file, \
            mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert mapped[:1]
        assert mapped_files.mappings_under(tmp_path / "model") == []
        assert [m.path.name for m in mapped_files.mappings_under(tmp_path / "model-other")] == ["w.bin"]


@pytest.mark.slow
def test_a_warmed_up_model_hands_back_its_exports_pages_and_still_answers(bundled_engine) -> None:
    """After warm-up the export's weights file is not resident in the process, and answers
    stay right: whatever the plugin reads of the file again comes back from the disk. (On
    the Phi-3 shape it reads none of it again, bench/results/memory-breakdown.md; on the
    bundled model it reads some layers from the file as it answers.)"""
    bundled_engine.warm_up()
    folder = bundled_engine.folder
    assert mapped_files.mappings_under(folder), "the export's weights are mapped from its folder"
    assert mapped_files.resident_bytes(folder) == 0
    answer = bundled_engine.answer(bundled_engine.render([{"role": "user", "content": "What is the capital of France?"}]),
                                   GenerationSettings(max_new_tokens=24))
    assert "Paris" in answer.text()


@pytest.mark.slow
def test_the_genai_engine_reads_the_prompt_in_pieces_into_a_fixed_cache(bundled) -> None:
    engine = load_engine(bundled.folder, RuntimeSettings(engine="genai"))
    try:
        scheduler = engine.scheduler_config()
        assert scheduler.max_num_batched_tokens == PROMPT_CHUNK_TOKENS and scheduler.enable_prefix_caching
        # A cache of one window, fixed: genai's growing one is re-allocated for longer prompts.
        assert scheduler.num_kv_blocks == kv_cache_blocks(engine.context_window, 1, "CPU") and not scheduler.cache_size
        assert "KEY_CACHE_PRECISION" not in engine.pipeline_properties()  # OpenVINO's own choice by default
    finally:
        engine.close()


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_4_bit_kv_cache_answers(bundled, concurrency: int) -> None:
    engine = load_engine(bundled.folder, RuntimeSettings(engine="genai", kv_cache_precision="u4"), concurrency)
    try:
        properties = engine.pipeline_properties()
        assert properties["KEY_CACHE_PRECISION"] == properties["VALUE_CACHE_PRECISION"] == "u4"
        answer = engine.answer(engine.render([{"role": "user", "content": "What is the capital of France?"}]),
                               GenerationSettings(max_new_tokens=24))
        assert "Paris" in answer.text()
    finally:
        engine.close()


@pytest.mark.parametrize("runtime, refused", [
    (RuntimeSettings(kv_cache_precision="u2"), "not one of u8, u4"),
    (RuntimeSettings(engine="optimum", kv_cache_precision="u4"), "needs the genai engine"),
])
def test_a_kv_cache_precision_that_cannot_apply_is_refused(runtime: RuntimeSettings, refused: str) -> None:
    with pytest.raises(SettingsError, match=refused):
        runtime.validate()


def test_the_app_refuses_a_kv_cache_precision_on_another_engine_before_serving() -> None:
    done = subprocess.run([sys.executable, "app.py", "--engine", "optimum", "--kv-cache-precision", "u4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "--kv-cache-precision needs the genai engine" in done.stderr + done.stdout


def test_the_batching_cache_holds_a_full_window_per_answer_at_once() -> None:
    assert kv_cache_blocks(4096, 4, "CPU") == 4 * 128
    assert kv_cache_blocks(4097, 1, "CPU") == 129  # a window's last tokens need a block of their own
    assert kv_cache_blocks(4096, 1, "GPU.0") == 256  # a GPU's blocks hold 16 tokens
