"""Atomic output files: written whole or not at all, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from inseq_ext.files import atomic_output


def test_written_whole_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_output(target) as temporary:
        temporary.write_text("done", encoding="utf-8")
        assert not target.exists()  # readers never see a partial file
    assert target.read_text(encoding="utf-8") == "done"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert os.listdir(target.parent) == ["out.txt"]


def test_failure_leaves_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_output(target) as temporary:
        temporary.write_text("half", encoding="utf-8")
        raise RuntimeError("disk full")
    assert target.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
