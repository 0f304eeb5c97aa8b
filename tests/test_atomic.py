"""Atomic writes (steepest.atomic): the one helper behind checkpoints, stores, reports, figures."""

from __future__ import annotations

import os

import pytest

from steepest.atomic import atomic_write, atomic_write_text, temp_path
from steepest.checkpoints import remove_stale_temps


def test_a_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "report.md"  # the folder is created
    atomic_write_text(path, "old")
    atomic_write_text(path, "new ünïcode")
    assert path.read_text(encoding="utf-8") == "new ünïcode"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.md"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_text(path, "kept")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_temp_files_carry_the_writer_pid_so_stale_ones_can_be_told_apart(tmp_path):
    """remove_stale_temps deletes ``.NAME.PID.tmp`` of other (dead) processes only."""
    mine = temp_path(tmp_path / "latest.pt")
    assert mine.name == f".latest.pt.{os.getpid()}.tmp"
    theirs = tmp_path / ".latest.pt.1.tmp"
    mine.write_bytes(b"x")
    theirs.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [theirs]
    assert mine.exists() and not theirs.exists()
