"""Output files: the umask decides their modes; a full disk is one clear error and loses nothing."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from lit_kd.errors import OutOfSpaceError
from lit_kd.utils.io import (
    atomic_directory,
    atomic_path,
    atomic_write_text,
    remove_stale_temporaries,
    replace_path,
    restore_interrupted_replacements,
)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    def set_umask(value: int) -> None:
        os.umask(value)

    previous = os.umask(0o022)
    yield set_umask
    os.umask(previous)


@pytest.mark.parametrize(
    "mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)]
)
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert mode(atomic_write_text(tmp_path / "results.json", "{}\n")) == file_mode
    with atomic_path(tmp_path / "model.ckpt") as tmp:
        tmp.write_bytes(b"x")
    assert mode(tmp_path / "model.ckpt") == file_mode
    with atomic_directory(tmp_path / "export") as tmp:
        (tmp / "model.safetensors").write_bytes(b"x")
    assert mode(tmp_path / "export") == dir_mode and mode(tmp_path / "export" / "model.safetensors") == file_mode


def test_out_of_space_is_one_error_naming_the_path_and_keeps_the_previous_file(tmp_path, monkeypatch):
    target = atomic_write_text(tmp_path / "results.json", '{"old": 1}\n')

    def full_disk(fd):  # the data does not reach the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OutOfSpaceError, match=rf"no space left on the device writing {target} \(it needs about 12 B;"):
        atomic_write_text(target, '{"new": 22}\n')
    assert target.read_text() == '{"old": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left behind


def test_a_write_that_cannot_fit_is_refused_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.setattr("lit_kd.utils.io.free_space", lambda folder: 1000)
    with pytest.raises(OutOfSpaceError, match=r"it needs about 9\.8 KB; 1000 B free in"):
        with atomic_path(tmp_path / "big.ckpt", size_hint=10_000):
            raise AssertionError("the body must not run")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_are_recognised_and_only_they_are_removed(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "last.ckpt") as tmp:
            tmp.write_bytes(b"partial")
            os.link(tmp, tmp_path / (tmp.name + ".keep"))  # what a SIGKILL would leave: the temporary itself
            raise KeyboardInterrupt
    leftover = tmp_path / (tmp.name + ".keep")
    os.rename(leftover, tmp)  # the killed writer's temporary, as it would remain
    (tmp_path / "best-0-4.ckpt").write_bytes(b"kept")
    (tmp_path / ".hidden").write_text("kept")
    assert remove_stale_temporaries(tmp_path) == [tmp]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "best-0-4.ckpt"]


def folder_with(path, text: str):
    path.mkdir()
    (path / "shard.distcp").write_text(text)
    return path


def test_replace_path_puts_a_written_file_or_folder_in_place(tmp_path):
    (tmp_path / ".last.ckpt.0000000000000001.tmp.ckpt").write_text("new")
    (tmp_path / "last.ckpt").write_text("old")
    replace_path(tmp_path / ".last.ckpt.0000000000000001.tmp.ckpt", tmp_path / "last.ckpt")
    assert (tmp_path / "last.ckpt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    folder_with(sharded / "last.ckpt", "old")
    folder_with(sharded / ".last.ckpt.0000000000000002.tmp.ckpt", "new")
    replace_path(sharded / ".last.ckpt.0000000000000002.tmp.ckpt", sharded / "last.ckpt")
    assert (sharded / "last.ckpt" / "shard.distcp").read_text() == "new"
    assert [p.name for p in sharded.iterdir()] == ["last.ckpt"]  # the old folder set aside is gone


def test_a_folder_replacement_killed_between_its_renames_is_undone(tmp_path, monkeypatch):
    import lit_kd.utils.io as io

    folder_with(tmp_path / "last.ckpt", "old")
    written = folder_with(tmp_path / ".last.ckpt.0000000000000002.tmp.ckpt", "new")
    renames = []

    def killed_after_the_first_rename(source, target):
        if renames:
            raise KeyboardInterrupt  # the process dies here
        renames.append(target)
        os.rename(source, target)

    monkeypatch.setattr(io.os, "replace", killed_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        replace_path(written, tmp_path / "last.ckpt")
    monkeypatch.undo()
    assert not (tmp_path / "last.ckpt").exists() and renames[0].name.endswith(".tmp.previous")

    # the next start: the old state is put back, then the unfinished write is removed
    assert restore_interrupted_replacements(tmp_path) == [tmp_path / "last.ckpt"]
    assert remove_stale_temporaries(tmp_path) == [written]
    assert (tmp_path / "last.ckpt" / "shard.distcp").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert restore_interrupted_replacements(tmp_path) == []  # nothing else to restore
