"""megatron_ixt.fileio.atomic_write: the new file whole, or the old one untouched, never a part."""
import os

import pytest

from megatron_ixt.fileio import atomic_write


def test_replaces_the_file_in_one_step(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("old")
    inode = path.stat().st_ino
    with atomic_write(str(path), fsync=True) as f:
        f.write("new é")
        assert path.read_text() == "old"  # readers still see the old file while it is written
    assert path.read_text(encoding="utf-8") == "new é" and path.stat().st_ino != inode
    with atomic_write(str(path), "wb") as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(tmp_path) == ["run.json"]


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "tracker.txt"
    path.write_text("6")
    with pytest.raises(RuntimeError):
        with atomic_write(str(path)) as f:
            f.write("8")
            raise RuntimeError("the writer died")
    assert path.read_text() == "6" and os.listdir(tmp_path) == ["tracker.txt"]
