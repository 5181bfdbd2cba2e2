"""Will it fit: the export's memory estimate against the exports measured on this machine,
and the memory and disk checks that refuse before anything starts (phi3ui/resources.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from phi3ui import resources
from phi3ui.resources import NotEnoughDisk, NotEnoughMemory, Weights

# Peak resident memory of `python -m phi3ui.export` (with its optimum-cli child), measured here
# with /usr/bin/time -v: bytes of weights on disk -> peak bytes (bench/NOTES.md, "Export memory").
MEASURED = {7_646_373_869: 10_912_724 * 1024,  # the Phi-3-mini-shaped model, bf16
            541_618_843: 1_510_140 * 1024}  # SmolLM2-135M-Instruct, fp32


@pytest.mark.parametrize("weights, peak", MEASURED.items())
def test_the_estimate_is_within_a_twentieth_of_what_was_measured(weights: int, peak: int) -> None:
    assert abs(resources.export_peak(Weights(weights)) - peak) <= 0.05 * peak


def test_an_export_that_does_not_fit_is_refused_with_both_numbers_and_the_ways_out() -> None:
    phi3 = Weights(7_646_373_869, "bfloat16")
    with pytest.raises(NotEnoughMemory) as refused:
        resources.check_export_memory("microsoft/Phi-3-mini-4k-instruct", phi3, limit=8_000_000_000,
                                      ready_made="OpenVINO/Phi-3-mini-4k-instruct-int4-ov")
    text = str(refused.value)
    assert "(7.6 GB of bfloat16 weights) needs about 11.2 GB of memory at its peak, and 8.0 GB" in text
    assert "ready-made OpenVINO export OpenVINO/Phi-3-mini-4k-instruct-int4-ov instead" in text
    assert "close other programs" in text and "more memory" in text and "--export-memory-limit" in text
    with pytest.raises(NotEnoughMemory) as refused:  # a model with no ready-made export
        resources.check_export_memory("./my-finetune", phi3, limit=8_000_000_000)
    assert "ready-made" not in str(refused.value)
    assert resources.check_export_memory("m", phi3, limit=16_000_000_000) == resources.export_peak(phi3)


def test_available_memory_is_what_the_system_reports() -> None:
    total = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024
    assert 0 < resources.available_memory() <= total


def test_a_disk_without_room_is_refused_with_what_is_free(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(NotEnoughDisk, match=r"needs about .* free at"):
        resources.check_disk(tmp_path / "not" / "made" / "yet", free + 10**12, "exporting m")
    resources.check_disk(tmp_path, 1, "exporting m")
    assert resources.is_disk_full("OSError: [Errno 28] No space left on device")
    assert resources.is_disk_full(OSError(28, "No space left on device"))
    assert not resources.is_disk_full("ValueError: ratio")


def test_weights_are_the_files_transformers_loads(tiny_phi3_source: Path) -> None:
    assert resources.weight_files(["model-1.safetensors", "pytorch_model.bin", "config.json"]) == [
        "model-1.safetensors"]
    assert resources.weight_files(["pytorch_model.bin", "original/consolidated.pth"]) == ["pytorch_model.bin"]
    weights = resources.folder_weights(tiny_phi3_source, {"torch_dtype": "float32"})
    assert weights == Weights((tiny_phi3_source / "model.safetensors").stat().st_size, "float32")


def test_a_containers_limit_counts_without_the_pages_it_may_drop(tmp_path: Path, monkeypatch) -> None:
    """cgroup v2: limit - (usage - inactive file pages), being below what the host has free."""
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text("400000000\n")
    (cgroup / "memory.current").write_text("300000000\n")
    (cgroup / "memory.stat").write_text("anon 100000000\ninactive_file 150000000\nactive_file 50000000\n")
    for reader in ("_read_int", "_cgroup_stat"):
        real = getattr(resources, reader)
        monkeypatch.setattr(resources, reader, lambda path, real=real: real(path.replace("/sys/fs/cgroup", str(cgroup))))
    assert resources.available_memory() == 400_000_000 - (300_000_000 - 150_000_000)
