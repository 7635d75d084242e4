"""The bad-input battery: each mistake ends in one clear line naming the problem and where it is, raised
before any expensive work, and an earlier run's outputs are left exactly as they were."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lit_kd.cli import main
from lit_kd.data import DollyDataModule
from tests.conftest import DEMO_DATA, ROOT, TINY_TOKENIZER, dolly_rows, write_jsonl


def snapshot(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def workspace(tmp_path):
    """An earlier run's outputs (logs, checkpoint, results), and the arguments of a new tiny run beside them."""
    earlier = tmp_path / "logs" / "tiny" / "version_0"
    (earlier / "checkpoints").mkdir(parents=True)
    (earlier / "config.yaml").write_text("earlier config\n")
    (earlier / "checkpoints" / "last.ckpt").write_bytes(b"earlier checkpoint")
    (earlier / "eval" / "student").mkdir(parents=True)
    (earlier / "eval" / "student" / "results.json").write_text('{"earlier": true}\n')
    args = [
        "--config", str(ROOT / "configs" / "tiny.yaml"),
        "--model.teacher.tokenizer", str(TINY_TOKENIZER), "--data.raw", str(DEMO_DATA),
        "--data.cache_dir", str(tmp_path / "cache"), "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    return tmp_path, args, snapshot(tmp_path / "logs")


def fails_cleanly(capsys, argv, *expected: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1]
    assert "Traceback" not in err and line.startswith("lit_kd: error: "), err[-2000:]
    for text in expected:
        assert text in line, line
    return line


def bad_file(tmp_path, name, lines):
    return str(write_jsonl(tmp_path / name, lines))


GOOD = '{"instruction": "a", "response": "b", "context": ""}'
BAD_DATA = [
    ("malformed JSONL line", ['{"instruction": "a", "response": "b", "context": ""}', '{"instruction": "c",'],
     ["bad.jsonl:2: malformed JSON"]),
    ("row with a missing field", [GOOD, '{"instruction": "c", "context": ""}'],
     ["bad.jsonl:2: field 'response' is missing"]),
    ("row with a non-string field", ['{"instruction": "a", "response": ["b"], "context": ""}'],
     ["bad.jsonl:1: field 'response' must be a string, got list"]),
    ("empty response", [GOOD, '{"instruction": "c", "response": " ", "context": ""}'],
     ["bad.jsonl:2: field 'response' is empty"]),
    ("empty data file", [], ["bad.jsonl: no rows (the data file is empty)"]),
]  # fmt: skip


@pytest.mark.parametrize("label, lines, expected", BAD_DATA, ids=[row[0] for row in BAD_DATA])
def test_bad_data_files(workspace, capsys, label, lines, expected):
    tmp_path, args, before = workspace
    fails_cleanly(capsys, ["fit", *args, "--data.raw", bad_file(tmp_path, "bad.jsonl", lines)], *expected)
    assert snapshot(tmp_path / "logs") == before


BAD_CONFIG = [
    ("unknown objective", ["--model.loss.name", "kld"],
     ["model.loss.name: unknown distillation loss 'kld'; valid names: ab, akl"]),
    ("tau zero", ["--model.loss.tau", "0"], ["model.loss.tau: temperature tau must be finite and > 0, got 0.0"]),
    ("tau negative", ["--model.loss.tau", "-1.5"],
     ["model.loss.tau: temperature tau must be finite and > 0, got -1.5"]),
    ("tau NaN", ["--model.loss.tau", ".nan"], ["model.loss.tau: temperature tau must be finite and > 0, got nan"]),
    ("tau inf", ["--model.loss.tau", ".inf"], ["model.loss.tau: temperature tau must be finite and > 0, got inf"]),
    ("alpha out of range", ["--model.loss.name", "sfkl", "--model.loss.skew_alpha", "1.5"],
     ["model.loss.skew_alpha must be in [0.0, 1.0], got 1.5"]),
    ("JS beta out of range", ["--model.loss.js_beta", "1.0"], ["model.loss.js_beta must be in (0.0, 1.0), got 1.0"]),
    ("missing model path", ["--model.teacher.tokenizer", "/nonexistent/tokenizer"],
     ["model.teacher.tokenizer: tokenizer path not found: /nonexistent/tokenizer"]),
    ("missing GGUF file", ["--model.teacher.config", "null", "--model.teacher.tokenizer", "null",
                           "--model.teacher.gguf_file", "/nonexistent/model.gguf"],
     ["model.teacher.gguf_file: GGUF file not found: /nonexistent/model.gguf"]),
]  # fmt: skip


@pytest.mark.parametrize("label, override, expected", BAD_CONFIG, ids=[row[0] for row in BAD_CONFIG])
def test_bad_configuration(workspace, capsys, label, override, expected):
    tmp_path, args, before = workspace
    fails_cleanly(capsys, ["fit", *args, *override], *expected)
    assert snapshot(tmp_path / "logs") == before


def test_teacher_student_vocabulary_mismatch(workspace, capsys, tiny_tokenizer):
    tmp_path, args, before = workspace
    tiny_tokenizer.add_tokens(["<other>"])
    tiny_tokenizer.save_pretrained(tmp_path / "other-tokenizer")
    student = json.dumps({"model_type": "llama", "vocab_size": 1001, "hidden_size": 16, "intermediate_size": 32,
                          "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2})  # fmt: skip
    line = fails_cleanly(
        capsys,
        [
            "fit",
            *args,
            "--model.student.layers",
            "null",
            "--model.student.config",
            student,
            "--model.student.tokenizer",
            str(tmp_path / "other-tokenizer"),
        ],  # fmt: skip
        "use different tokenizers",
    )
    assert "(1000 tokens)" in line and "(1001 tokens)" in line
    assert snapshot(tmp_path / "logs") == before


def test_prompt_longer_than_max_length_is_dropped_counted_and_reported(tmp_path, tiny_tokenizer, capsys):
    rows = dolly_rows(20)
    rows[3]["context"] = "long context " * 200  # this prompt cannot fit 96 tokens
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data = DollyDataModule(raw=str(path), split_sizes=(18, 1, 1), max_length=128, cache_dir=str(tmp_path / "c"))
    data.connect(tiny_tokenizer)
    with pytest.warns(UserWarning, match=r"dropped: prompt too long"):
        data.setup("fit")
    counts = {name: split.dropped for name, split in data.splits.items()}
    assert sum(counts.values()) == 1 and sum(split.examples for split in data.splits.values()) == 20


def test_a_checkpoint_from_another_student_architecture(workspace, capsys):
    tmp_path, args, _ = workspace
    fit_args = [
        *args,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.logger.init_args.name",
        "other",
    ]
    main(["fit", *fit_args])
    checkpoint = next((tmp_path / "logs" / "other").glob("version_*/checkpoints/last.ckpt"))
    before = snapshot(tmp_path / "logs")
    fails_cleanly(
        capsys,
        ["validate", *args, "--model.student.layers", "[0, 1, 2]", "--ckpt_path", str(checkpoint)],
        "was saved from another student architecture than model.student (layers: [0, 3] vs [0, 1, 2])",
    )
    assert snapshot(tmp_path / "logs") == before


def test_a_missing_benchmark_file(workspace, capsys):
    tmp_path, _, before = workspace
    fails_cleanly(
        capsys,
        ["evaluate", "--ckpt", "configs/tiny.yaml", "--benchmarks", "[dolly]", "--data_dir", str(tmp_path / "none")],
        "benchmark file not found — dolly:",
    )
    assert snapshot(tmp_path / "logs") == before


def test_a_self_bleu_order_outside_1_to_4(workspace, capsys):
    tmp_path, _, before = workspace
    fails_cleanly(capsys, ["evaluate", "--ckpt", "configs/tiny.yaml", "--self_bleu_order", "5"], "--self_bleu_order")
    assert snapshot(tmp_path / "logs") == before


def test_an_output_directory_that_is_not_writable(workspace, capsys):
    tmp_path, args, before = workspace
    (tmp_path / "a-file").write_text("not a folder")
    fails_cleanly(
        capsys,
        ["fit", *args, "--trainer.logger.init_args.save_dir", str(tmp_path / "a-file" / "logs")],
        "trainer.logger save_dir",
        "is not writable",
    )
    bench = tmp_path / "bench" / "dolly"
    write_jsonl(bench / "valid.jsonl", [{"instruction": "q", "output": "a"}])
    fails_cleanly(
        capsys,
        [
            "evaluate",
            "--ckpt",
            str(ROOT / "configs" / "tiny.yaml"),
            "--benchmarks",
            "[dolly]",
            "--data_dir",
            str(tmp_path / "bench"),
            "--out_dir",
            str(tmp_path / "a-file" / "eval"),
        ],  # fmt: skip
        "is not writable",
    )
    assert snapshot(tmp_path / "logs") == before


def test_a_yaml_syntax_error_names_the_config_file_and_line(workspace, capsys):
    tmp_path, args, before = workspace
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_epochs: 1\n bad: [\n")
    line = fails_cleanly(capsys, ["fit", *args, "--config", str(broken)], f"{broken}:3:2: invalid YAML in config file")
    assert "<unicode string>" not in line
    fails_cleanly(capsys, ["sweep", "--base", f"[{broken}]", "--out", str(tmp_path / "sw")], f"{broken}:3:2")
    assert snapshot(tmp_path / "logs") == before and not (tmp_path / "sw").exists()


def test_student_layers_beyond_the_teacher_fail_before_any_data_or_run_directory(workspace, capsys):
    tmp_path, args, before = workspace
    fails_cleanly(
        capsys,
        ["fit", *args, "--model.student.layers", "[0, 99]"],
        "model.student.layers [0, 99] must be strictly increasing indices into the 4 decoder layers of the teacher",
    )
    assert snapshot(tmp_path / "logs") == before  # no version_1
    assert not (tmp_path / "cache").exists()  # nothing tokenized


def test_a_new_save_dir_is_not_created_for_a_config_that_fails(workspace, capsys):
    tmp_path, args, _ = workspace
    fails_cleanly(
        capsys,
        ["fit", *args, "--model.loss.tau", "0", "--trainer.logger.init_args.save_dir", str(tmp_path / "new" / "logs")],
        "temperature tau must be finite and > 0",
    )
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name", ["train.csv", "train.txt", "train"])
def test_an_unsupported_data_format_is_named_as_such(workspace, capsys, name):
    tmp_path, args, before = workspace
    data = tmp_path / name
    data.write_text("instruction,response\na,b\n")
    suffix = data.suffix or "(no extension)"
    fails_cleanly(
        capsys,
        ["fit", *args, "--data.raw", str(data)],
        f"{data}: unsupported data format {suffix} (expected .jsonl, .jsonl.gz, .json, .json.gz, .parquet",
    )
    assert snapshot(tmp_path / "logs") == before


@pytest.fixture(scope="module")
def damaged_checkpoints(tmp_path_factory):
    """A truncated lit_kd checkpoint (the first half of a real one) and a foreign one (a torch file of other data)."""
    import torch

    from lit_kd.training import build

    tmp_path = tmp_path_factory.mktemp("checkpoints")
    run = build(["--config", str(ROOT / "configs" / "tiny.yaml"), "--model.teacher.tokenizer", str(TINY_TOKENIZER),
                 "--data.raw", str(DEMO_DATA), "--data.cache_dir", str(tmp_path / "cache"),
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "made"), "--trainer.max_epochs", "1",
                 "--trainer.limit_train_batches", "1", "--trainer.enable_progress_bar", "false"], subcommand="fit")  # fmt: skip
    real = Path(run.trainer.checkpoint_callback.best_model_path).read_bytes()
    truncated, foreign = tmp_path / "truncated.ckpt", tmp_path / "foreign.ckpt"
    truncated.write_bytes(real[: len(real) // 2])
    torch.save({"weights": torch.zeros(3)}, foreign)
    return {"truncated": (truncated, "not a readable checkpoint: truncated or damaged"),
            "foreign": (foreign, "not a checkpoint of a lit_kd run")}  # fmt: skip


@pytest.mark.parametrize("kind", ["truncated", "foreign"])
@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_a_damaged_or_foreign_checkpoint_is_one_line_for_every_command(workspace, capsys, damaged_checkpoints,
                                                                      command, kind):  # fmt: skip
    tmp_path, args, before = workspace
    path, message = damaged_checkpoints[kind]
    fails_cleanly(capsys, [command, *args, "--ckpt_path", str(path)], str(path), message)
    assert snapshot(tmp_path / "logs") == before  # no run directory, nothing earlier touched


def test_a_truncated_checkpoint_is_one_line_for_evaluate_and_export(workspace, capsys, damaged_checkpoints):
    tmp_path, _, _ = workspace
    path, message = damaged_checkpoints["truncated"]
    fails_cleanly(capsys, ["evaluate", "--ckpt", str(path), "--benchmarks", f"[demo={DEMO_DATA}]"], message)
    fails_cleanly(capsys, ["export", "--ckpt", str(path), "--out", str(tmp_path / "exported")], message)
    assert not (tmp_path / "exported").exists()
