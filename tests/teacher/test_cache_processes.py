"""``cache-teacher`` on several processes (``--trainer.devices 2``, CPU, gloo): each process writes its share of one
cache, tensor-equal to the one-process cache; a kill of either process leaves no cache that a run accepts, and
the next build removes what it left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_kd.cli import main
from lit_kd.errors import CacheError
from lit_kd.teacher import TeacherCache
from lit_kd.teacher.build import share_of_batches
from tests.conftest import DEMO_DATA, ROOT, TINY_TOKENIZER


def cache_args(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    return [
        "cache-teacher", "--config", str(ROOT / "configs" / "tiny.yaml"), "--model.teacher.tokenizer",
        str(TINY_TOKENIZER), "--data.raw", str(DEMO_DATA), "--data.cache_dir", str(tmp_path / "tokenized"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--splits", "[train,val,test]",
        "--out", str(out), *extra,
    ]  # fmt: skip


def two_processes(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    """The command line of a build on 2 CPU processes (Lightning's launcher starts the second)."""
    return [sys.executable, "-m", "lit_kd", *cache_args(tmp_path, out, "--trainer.devices", "2",
                                                         "--trainer.accelerator", "cpu", *extra)]  # fmt: skip


@pytest.fixture(scope="module")
def one_process_cache(tmp_path_factory) -> tuple[Path, TeacherCache]:
    tmp_path = tmp_path_factory.mktemp("one_process")
    main(cache_args(tmp_path, tmp_path / "cache"))
    return tmp_path, TeacherCache.open(tmp_path / "cache")


def assert_same_cache(cache: TeacherCache, reference: TeacherCache) -> None:
    assert cache.key == reference.key and cache.dtype == reference.dtype
    assert torch.equal(cache.head.weight, reference.head.weight)
    assert set(cache.shards) == set(reference.shards) == {"train", "val", "test"}
    for split in reference.shards:
        examples = reference.split_examples(split)
        assert cache.split_examples(split) == examples
        everything = list(range(examples))
        assert torch.equal(cache.rows(split, everything), reference.rows(split, everything))


def test_shares_are_whole_batches_covering_every_example_once():
    for examples, batch, processes in [(200, 4, 2), (21, 4, 2), (7, 4, 3), (3, 8, 4), (0, 4, 2), (1000, 7, 8)]:
        shares = [share_of_batches(examples, batch, rank, processes) for rank in range(processes)]
        assert [i for share in shares for i in share] == list(range(examples))
        assert all(share.start % batch == 0 for share in shares if len(share))
        sizes = [-(-len(share) // batch) for share in shares]  # batches per process
        assert max(sizes) - min(sizes) <= 1


def test_two_processes_write_one_cache_equal_to_the_one_process_cache(one_process_cache, tmp_path):
    reference_dir, reference = one_process_cache
    out = tmp_path / "cache"
    result = subprocess.run(two_processes(tmp_path, out), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "teacher cache (rank 0's share of 2): train" in result.stdout
    assert_same_cache(TeacherCache.open(out), reference)  # opening it verifies every file's digest
    manifest = json.loads((out / "manifest.json").read_text())
    second_share = share_of_batches(reference.split_examples("train"), 4, 1, 2).start  # tiny.yaml: batches of 4
    assert second_share > 0 and second_share in [shard["first_example"] for shard in manifest["splits"]["train"]]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cache.")]  # no temporary folder, no lock left
    again = subprocess.run(two_processes(tmp_path, out), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "is up to date" in again.stdout


def child_processes(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the second process in /proc")
@pytest.mark.parametrize("victim", [0, pytest.param(1, marks=pytest.mark.slow)])  # rank 1: -m slow
def test_a_kill_of_either_process_leaves_no_cache_and_the_next_build_completes(one_process_cache, tmp_path, victim):
    """One shard file per example (batches of 1, ``--shard_bytes 1``): the kill comes once the second process has
    written its first shard, long before the build can end."""
    _, reference = one_process_cache
    out = tmp_path / "cache"
    build = subprocess.Popen(
        two_processes(tmp_path, out, "--batch_size", "1", "--shard_bytes", "1"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    second_share = share_of_batches(reference.split_examples("train"), 1, 1, 2).start
    deadline = time.monotonic() + 240
    while not [
        shard for folder in tmp_path.glob(".cache.*.tmp") for shard in folder.glob("train-*.safetensors")
        if int(shard.stem.split("-")[1]) >= second_share
    ]:  # fmt: skip
        assert build.poll() is None, build.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (second,) = child_processes(build.pid)
    os.kill(build.pid if victim == 0 else second, signal.SIGKILL)
    build.wait(timeout=120)
    deadline = time.monotonic() + 120
    while running(second):  # the survivor stops on its own: its next collective finds the other gone
        assert time.monotonic() < deadline, "a process of the killed build is still running"
        time.sleep(0.05)
    output = build.stdout.read()
    assert build.returncode != 0
    stopped = "a process of the build stopped before every share was written" in output
    left = list(tmp_path.glob(".cache.*.tmp"))
    if victim == 0:  # rank 1 survives it and ends with one clear error; rank 0 could not remove its folder
        assert stopped and left
    # rank 0 survives the kill of rank 1 until Lightning's launcher stops it (it checks its children every 5 s):
    # if it saw the failure first, it said so and removed its temporary folder
    elif stopped:
        assert not left
    assert not out.exists()
    with pytest.raises(CacheError, match="teacher cache not found"):
        TeacherCache.open(out)

    rebuilt = subprocess.run(two_processes(tmp_path, out), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert ("the temporary folder of a teacher-cache build that was interrupted" in rebuilt.stdout) == bool(left)
    assert not list(tmp_path.glob(".cache.*.tmp"))
    assert_same_cache(TeacherCache.open(out), reference)


BAD_OPTIONS = [
    (["--trainer.devices", "2", "--device", "cpu"], "--device cpu is for one process; with 2 processes"),
    (["--config", str(ROOT / "configs" / "strategies" / "fsdp.yaml"), "--trainer.devices", "2",
      "--model.teacher_sharding", "shard"], "model.teacher_sharding shard is for training"),
    (["--trainer.devices", "auto"], "--trainer.devices must be a number of devices or a list of them, got 'auto'"),
    (["--shard_bytes", "0"], "--shard_bytes must be positive, got 0"),
]


@pytest.mark.parametrize("extra, expected", BAD_OPTIONS, ids=["device", "sharded teacher", "auto", "shard bytes"])
def test_options_a_build_cannot_honour_are_one_error_before_any_process_starts(tmp_path, capsys, extra, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(cache_args(tmp_path, tmp_path / "cache", *extra))
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("lit_kd: error: ") and expected in line
    assert not list(tmp_path.glob("*cache*"))
