"""``python -m lit_kd train-tokenizer``: a student tokenizer from instruction data, written once and never over
another directory."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from lit_kd.cli.main import main
from lit_kd.cli.train_tokenizer import PROVENANCE
from tests.conftest import DEMO_DATA, write_jsonl


def test_it_writes_a_loadable_tokenizer_once_and_keeps_it(tmp_path, capsys):
    out = tmp_path / "tok"
    main(["train-tokenizer", "--data", str(DEMO_DATA), "--out", str(out), "--vocab_size", "500"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 500 and tokenizer.is_fast and tokenizer.eos_token == "</s>"
    text = "Write a poem about the sea 🌊 in 3 lines."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert json.loads((out / PROVENANCE).read_text())["vocab_size"] == 500
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    main(["train-tokenizer", "--data", str(DEMO_DATA), "--out", str(out), "--vocab_size", "500"])
    assert "already trained" in capsys.readouterr().out
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--vocab_size", "100"], "--vocab_size must be at least 260"),
        (["--vocab_size", "600"], "already exists and is not this tokenizer"),
        (["--data", "missing/dolly.jsonl"], "missing/dolly.jsonl"),
    ],
)
def test_bad_input_is_one_error_and_writes_nothing(tmp_path, capsys, arguments, message):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "mine.txt").write_text("a user's file")
    if "--data" in arguments:
        arguments = [*arguments, "--out", str(tmp_path / "new")]
    elif "600" in arguments:
        arguments = ["--data", str(DEMO_DATA), "--out", str(out), *arguments]
    else:
        arguments = ["--data", str(DEMO_DATA), "--out", str(tmp_path / "new"), *arguments]
    with pytest.raises(SystemExit) as exit_info:
        main(["train-tokenizer", *arguments])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lit_kd: error:") and message in err, err
    assert [path.name for path in out.iterdir()] == ["mine.txt"] and not (tmp_path / "new").exists()


def test_a_malformed_data_line_is_named(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"instruction": "x", "output": "y"}', "{not json"])
    with pytest.raises(SystemExit):
        main(["train-tokenizer", "--data", str(bad), "--out", str(tmp_path / "tok")])
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and ":2" in err, err
    assert not (tmp_path / "tok").exists()


def test_it_trains_on_conversations_too(tmp_path):
    out = tmp_path / "tok"
    conversations = DEMO_DATA.parent / "conversations.jsonl"
    main(["train-tokenizer", "--data", str(conversations), "--out", str(out), "--vocab_size", "400"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 400 and json.loads((out / PROVENANCE).read_text())["records"] == 120
