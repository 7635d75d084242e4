"""Nothing already written is lost: atomic results and checkpoints, fresh run directories, no overwrites."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from lit_kd.cli import main
from lit_kd.training import build
from lit_kd.training.checkpoint_io import AtomicCheckpointIO
from lit_kd.utils.io import atomic_write_text, fresh_directory, numbered_paths


def test_a_crash_mid_write_keeps_the_previous_result(tmp_path, monkeypatch):
    target = atomic_write_text(tmp_path / "results.json", '{"old": 1}\n')

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, '{"new": 2}\n')
    assert target.read_text() == '{"old": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left behind


def test_a_crash_mid_checkpoint_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def crash_after_partial_write(self, checkpoint, target, storage_options=None):
        with open(target, "wb") as handle:
            handle.write(b"truncated")
        raise KeyboardInterrupt  # killed mid-save

    monkeypatch.setattr("lightning.pytorch.plugins.io.TorchCheckpointIO.save_checkpoint", crash_after_partial_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the partial file was removed


def test_fresh_directories_are_never_reused(tmp_path):
    first, second = fresh_directory(tmp_path / "eval"), fresh_directory(tmp_path / "eval")
    assert (first.name, second.name) == ("eval", "eval-2")
    names = [path.name for path, _ in zip(numbered_paths(tmp_path / "eval"), range(4))]
    assert names == ["eval", "eval-2", "eval-3", "eval-4"]


def test_a_second_run_gets_its_own_version(tmp_path, tiny_args):
    short = [*tiny_args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"]
    first = build(subcommand="fit", args=[*short])
    config = (tmp_path / "logs" / "tiny" / "version_0" / "config.yaml").read_text()
    second = build(subcommand="fit", args=[*short])
    assert first.trainer.log_dir != second.trainer.log_dir
    assert (tmp_path / "logs" / "tiny" / "version_0" / "config.yaml").read_text() == config
    assert (tmp_path / "logs" / "tiny" / "version_1" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "logs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def _disk_full_while_writing_checkpoints(monkeypatch):
    """Every checkpoint write fills the disk half-way through (what ENOSPC looks like to the writer)."""

    def full_disk(self, checkpoint, path, storage_options=None):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("lightning.pytorch.plugins.io.TorchCheckpointIO.save_checkpoint", full_disk)


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_full_disk_is_one_error_and_earlier_files_stay_byte_identical(tmp_path, tiny_args, monkeypatch, capsys):
    short = [*tiny_args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
             "--trainer.enable_progress_bar", "false"]  # fmt: skip
    main(["fit", *short])  # an earlier run: its files must survive what follows
    earlier = _files(tmp_path / "logs")
    _disk_full_while_writing_checkpoints(monkeypatch)
    for attempt in (["fit", *short], ["fit", *short, "--trainer.max_epochs", "2", "--ckpt_path", "last"]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(attempt)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        line = err.strip().splitlines()[-1]
        assert "Traceback" not in err and line.startswith("lit_kd: error: no space left on the device writing ")
        assert "/checkpoints/" in line and ".ckpt (it needs about " in line and " free in " in line
        now = _files(tmp_path / "logs")
        assert {name: now.get(name) for name in earlier} == earlier  # nothing earlier lost or changed
        assert not [name for name in now if ".tmp" in name]  # no temporary left
