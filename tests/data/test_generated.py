"""generate-data: the teacher's responses as a Dolly-format file fit reads; killed mid-way and re-run, the same
file as an uninterrupted run; the other splits copied with their references."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from lit_kd.data import load_records
from tests.conftest import DEMO_DATA, ROOT, TINY_TOKENIZER


def command(out) -> list[str]:
    return [
        sys.executable, "-m", "lit_kd", "generate-data", "--config", str(ROOT / "configs" / "tiny.yaml"),
        "--model.teacher.tokenizer", str(TINY_TOKENIZER), "--data.raw", str(DEMO_DATA),
        "--data.split_sizes", "[60, 8, 8]", "--data.cache_dir", str(out.parent / "cache"),
        "--out", str(out), "--sampling.max_new_tokens", "12", "--sampling.batch_size", "2", "--seed", "5",
    ]  # fmt: skip


def test_generate_data_resumes_after_a_kill_into_the_same_file(tmp_path):
    whole = subprocess.run(command(tmp_path / "whole"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "--data.train" in whole.stdout

    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}  # an undrained pipe could stall it
    process = subprocess.Popen(command(tmp_path / "cut"), cwd=ROOT, **quiet)
    partial = tmp_path / "cut" / ".train.jsonl.partial"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if partial.is_file() and len(partial.read_text().splitlines()) >= 10:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "generate-data ended before it could be killed"
    assert not (tmp_path / "cut" / "train.jsonl").exists()  # complete or absent
    again = subprocess.run(command(tmp_path / "cut"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "cut" / "train.jsonl").read_bytes() == (tmp_path / "whole" / "train.jsonl").read_bytes()
    assert not partial.exists()

    rows = [json.loads(line) for line in (tmp_path / "whole" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and all(set(r) >= {"instruction", "context", "response", "generated_by"} for r in rows)
    assert rows[0]["generated_by"]["seed"] == 5 and rows[0]["generated_by"]["sampling"]["max_new_tokens"] == 12
    records = load_records(str(tmp_path / "whole" / "train.jsonl"))  # fit reads it like any other Dolly file
    assert len(records) == 60
    originals = load_records(str(tmp_path / "whole" / "val.jsonl"))
    assert len(originals) == 8 and "generated_by" not in (tmp_path / "whole" / "val.jsonl").read_text()


def test_restart_removes_an_interrupted_runs_lines_and_starts_the_split_over(tmp_path, capsys):
    """A partial file left by a run with other settings is refused (naming --restart); with ``restart`` it is
    removed, with a line saying so, and the split is written whole by this run."""
    import pytest

    from lit_kd.data.generated import write_generated_split
    from lit_kd.errors import DataFormatError

    records = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(5)]
    target = tmp_path / "train.jsonl"
    partial = tmp_path / ".train.jsonl.partial"
    old = {"instruction": "q0", "context": "", "response": "old", "generated_by": {"seed": 1}}
    partial.write_text(json.dumps(old) + "\n")

    def generate(batch, seed):
        return [f"new {r['instruction']} {seed}" for r in batch]

    with pytest.raises(DataFormatError, match="written for other data or settings; run again with --restart true"):
        write_generated_split(target, records, generate, {"seed": 2}, batch_size=2, seed=2)
    assert partial.read_text() == json.dumps(old) + "\n" and not target.exists()  # nothing lost
    write_generated_split(target, records, generate, {"seed": 2}, batch_size=2, seed=2, restart=True)
    assert f"removed {partial}, the lines an interrupted run left" in capsys.readouterr().out
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["response"] for r in rows] == ["new q0 2", "new q1 2", "new q2 3", "new q3 3", "new q4 4"]
    assert not partial.exists()
