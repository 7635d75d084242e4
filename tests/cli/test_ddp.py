"""DDP with gloo on 2 CPU processes: data sharded, teacher frozen on every rank, validation metrics synced."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.conftest import DEMO_DATA, ROOT, TINY_TOKENIZER


def test_ddp_on_two_cpu_processes(tmp_path):
    probe = {
        "trainer": {
            "callbacks": [{"class_path": "tests.probes.DDPProbe", "init_args": {"out_dir": str(tmp_path / "probe")}}]
        }
    }
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(probe))
    command = [
        sys.executable, "-m", "lit_kd", "fit",
        "--config", str(ROOT / "configs" / "tiny.yaml"),
        "--config", str(tmp_path / "probe.yaml"),
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.enable_progress_bar", "false",
        "--model.teacher.tokenizer", str(TINY_TOKENIZER), "--data.raw", str(DEMO_DATA),
        "--data.cache_dir", str(tmp_path / "cache"), "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = check_two_data_parallel_ranks(tmp_path / "probe")
    assert all(r["wrapper"] == "DistributedDataParallel" for r in ranks)


def check_two_data_parallel_ranks(probe_dir) -> list[dict]:
    """What ``DDPProbe`` recorded on 2 ranks: each trained on its own shard of the data, the teacher stayed frozen,
    unchanged and outside the wrapped model, and the validation metrics were synced (identical on both)."""
    ranks = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen = [set(r["rows"]) for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 16 and not seen[0] & seen[1]
    for record in ranks:
        assert record["teacher_frozen"] and record["teacher_eval_mode"] and record["teacher_unchanged"]
        assert not record["teacher_in_wrapped_model"]
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and {"val/loss", "val/rougeL"} <= set(ranks[0]["metrics"])
    return ranks
