"""Folders and files written whole or not at all (no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phi3ui.files import staged


def test_staged_publishes_whole_or_not_at_all(tmp_path: Path):
    with staged(tmp_path / "folder") as staging:
        staging.mkdir()
        (staging / "a.txt").write_text("a")
    assert (tmp_path / "folder" / "a.txt").read_text() == "a"
    with staged(tmp_path / "file.bin") as staging:
        staging.write_bytes(b"x")
    assert (tmp_path / "file.bin").read_bytes() == b"x"

    with pytest.raises(RuntimeError), staged(tmp_path / "broken") as staging:
        staging.mkdir()
        (staging / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin", "folder"]


def test_staged_files_join_a_folder_that_already_has_files_marker_last(tmp_path: Path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "weights.bin").write_text("w")
    with staged(dest, last="config.json") as staging:
        staging.mkdir()
        for name in ("config.json", "tokenizer.json", "a.txt"):
            (staging / name).write_text(name)
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt", "config.json", "tokenizer.json", "weights.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "no staging folder is left behind"
