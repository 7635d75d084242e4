"""DirectoryLock: one owner at a time, the owner named in the refusal, stale locks taken over, clean release."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from lit_kd.errors import LockedError
from lit_kd.utils.lock import DirectoryLock


def test_a_second_owner_is_refused_with_the_owner_named(tmp_path):
    with DirectoryLock(tmp_path / ".lock", "sweep directory") as first:
        assert first.took_over is None
        with pytest.raises(LockedError) as refused:
            DirectoryLock(tmp_path / ".lock", "sweep directory").acquire()
        message = str(refused.value)
        assert f"sweep directory {tmp_path} is in use by pid {os.getpid()} on host {socket.gethostname()}" in message
        assert str(tmp_path / ".lock") in message
    assert not (tmp_path / ".lock").exists()  # released on exit
    DirectoryLock(tmp_path / ".lock", "sweep directory").acquire().release()  # and free again


def test_a_lock_held_by_another_live_process_is_refused(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lit_kd.utils.lock import DirectoryLock; "
         f"DirectoryLock({str(tmp_path / '.lock')!r}, 'x').acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=f"in use by pid {holder.pid} on host"):
            DirectoryLock(tmp_path / ".lock", "x").acquire()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock file is left behind, stale, and the next process takes it over
    stale = json.loads((tmp_path / ".lock").read_text())
    assert stale["pid"] == holder.pid
    with DirectoryLock(tmp_path / ".lock", "x") as lock:
        assert lock.took_over["pid"] == holder.pid
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1234, "host": "node-17", "started": "2026-11-29 10:00:00"}))
    with pytest.raises(LockedError, match=r"locked by pid 1234 on host node-17 .*delete .*\.lock and run again"):
        DirectoryLock(tmp_path / ".lock", "sweep directory").acquire()
    assert json.loads((tmp_path / ".lock").read_text())["host"] == "node-17"  # left as it was
