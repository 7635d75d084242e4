"""DollyDataModule: seeded splits, label masks, truncation rule, dynamic padding, the Arrow cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_kd.data import (
    IGNORE_INDEX,
    DataFormatError,
    DollyDataModule,
    encode_example,
    format_prompt,
    load_records,
    split_records,
)
from tests.conftest import DEMO_DATA, dolly_rows, write_jsonl


def test_split_sizes_on_a_full_size_dolly_file(tmp_path):
    path = write_jsonl(tmp_path / "databricks-dolly-15k.jsonl", dolly_rows(15011))
    data = DollyDataModule(raw=str(path))
    splits = data.load_split_records()
    assert {k: len(v) for k, v in splits.items()} == {"train": 14000, "val": 500, "test": 500}
    seen = [r["instruction"] for split in splits.values() for r in split]
    assert len(set(seen)) == 15000  # disjoint; 11 rows left out
    again = DollyDataModule(raw=str(path)).load_split_records()
    assert again == splits  # deterministic
    other = DollyDataModule(raw=str(path), split_seed=7).load_split_records()
    assert other["val"] != splits["val"]


def test_too_few_rows_for_the_split(tmp_path):
    path = write_jsonl(tmp_path / "small.jsonl", dolly_rows(10))
    with pytest.raises(DataFormatError, match=r"10 rows, but split_sizes \[14000, 500, 500\] need 15000"):
        split_records(
            load_records(str(path)),
            (14000, 500, 500),
            0,
            str(path),
        )


def test_label_mask_supervises_only_response_and_eos(tiny_tokenizer):
    row = {"instruction": "Name a color.", "input": "Pick a warm one.", "output": "Red is warm."}
    encoded = encode_example(tiny_tokenizer, row["instruction"], row["input"], row["output"], max_length=512)
    prompt_ids = tiny_tokenizer(format_prompt(row["instruction"], row["input"]))["input_ids"]
    n = len(prompt_ids)
    assert encoded["input_ids"][:n] == prompt_ids
    assert encoded["labels"][:n] == [IGNORE_INDEX] * n
    supervised = encoded["labels"][n:]
    assert supervised[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(supervised[:-1]) == "Red is warm."
    assert encoded["labels"][n:] == encoded["input_ids"][n:]


def test_truncation_rule(tiny_tokenizer):
    prompt_len = len(tiny_tokenizer(format_prompt("Say it."))["input_ids"])
    cut = encode_example(tiny_tokenizer, "Say it.", "", "word " * 100, max_length=prompt_len + 5)
    assert cut["truncated"] and len(cut["input_ids"]) == prompt_len + 5
    assert cut["labels"][prompt_len:] == cut["input_ids"][prompt_len:]  # no EOS: the response was cut
    dropped = encode_example(tiny_tokenizer, "Say it.", "", "ok", max_length=prompt_len)
    assert dropped["dropped"] and dropped["input_ids"] == []


def test_a_huge_response_is_cut_before_it_is_tokenized_in_full(tiny_tokenizer, monkeypatch):
    from lit_kd.data.tokenize import head_tokens

    text = " ".join(f"word{i % 97}, and then {i}." for i in range(3000))
    full = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    for count in (0, 1, 17, 200, 1000, len(full) + 5):  # the same tokens as tokenizing the whole text
        assert head_tokens(tiny_tokenizer, text, count) == full[: count + 1]
    prompt_len = len(tiny_tokenizer(format_prompt("Say it."))["input_ids"])
    lengths = []
    real_call = type(tiny_tokenizer).__call__
    monkeypatch.setattr(
        type(tiny_tokenizer),
        "__call__",
        lambda self, text, **kw: lengths.append(len(text)) or real_call(self, text, **kw),
    )
    huge = "word " * 10_000_000  # 50 MB
    cut = encode_example(tiny_tokenizer, "Say it.", "", huge, max_length=prompt_len + 64)
    assert cut["truncated"] and len(cut["input_ids"]) == prompt_len + 64
    assert max(lengths) < 10_000  # bounded by max_length, not by the 50 MB
    assert cut["input_ids"][prompt_len:] == tiny_tokenizer("word " * 100, add_special_tokens=False)["input_ids"][:64]


def _module(tmp_path: Path, tokenizer, **kwargs) -> DollyDataModule:
    path = write_jsonl(tmp_path / "rows.jsonl", dolly_rows(40))
    data = DollyDataModule(
        raw=str(path), split_sizes=(30, 5, 5), batch_size=4, cache_dir=str(tmp_path / "cache"), **kwargs
    )
    data.connect(tokenizer)
    return data


def test_batches_are_dynamically_padded_and_masked(tmp_path, tiny_tokenizer):
    data = _module(tmp_path, tiny_tokenizer)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == lengths.max()  # padded to the batch's longest only
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == IGNORE_INDEX).all()
    assert (batch["input_ids"][pad] == tiny_tokenizer.pad_token_id).all()
    for row in range(batch["input_ids"].shape[0]):
        supervised = batch["labels"][row] != IGNORE_INDEX
        text = tiny_tokenizer.decode(batch["input_ids"][row][supervised])
        assert text.startswith("The sum is") and text.endswith(tiny_tokenizer.eos_token)
        assert "### Response:" not in text


def test_tokenized_splits_are_cached_as_arrow_files(tmp_path, tiny_tokenizer):
    data = _module(tmp_path, tiny_tokenizer)
    data.setup("fit")
    files = sorted((tmp_path / "cache").glob("*.arrow"))
    assert len(files) == 3  # train, val, test
    stamps = [f.stat().st_mtime_ns for f in files]
    again = _module(tmp_path, tiny_tokenizer)
    again.setup("fit")
    assert [f.stat().st_mtime_ns for f in sorted((tmp_path / "cache").glob("*.arrow"))] == stamps
    assert again.splits["train"].dataset[0] == data.splits["train"].dataset[0]
    _module(tmp_path, tiny_tokenizer, max_length=100).setup("fit")  # a setting change is a new cache entry
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 6


def test_processed_split_files_are_used_as_given(tmp_path, tiny_tokenizer):
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(6)]
    data = DollyDataModule(
        train=str(write_jsonl(tmp_path / "train.jsonl", rows)),
        val=str(write_jsonl(tmp_path / "dev.jsonl", rows[:2])),
        cache_dir=str(tmp_path / "cache"),
    )
    data.connect(tiny_tokenizer)
    data.setup("fit")
    assert len(data.splits["train"].dataset) == 6 and len(data.splits["val"].dataset) == 2
    with pytest.raises(ValueError, match="stage 'test' needs a 'test' split; set `data.test`"):
        data.setup("test")


def test_configuration_errors(tmp_path, tiny_tokenizer):
    with pytest.raises(ValueError, match="not both"):
        DollyDataModule(raw="x.jsonl", train="y.jsonl")
    with pytest.raises(ValueError, match="no source"):
        DollyDataModule()
    with pytest.raises(RuntimeError, match="connect"):
        DollyDataModule(raw="x.jsonl").setup("fit")
    data = _module(tmp_path, tiny_tokenizer, max_length=8)
    with pytest.raises(DataFormatError, match="every example was dropped"):
        data.setup("fit")


def test_the_demo_data_is_a_valid_dolly_format_file():

    records = load_records(str(DEMO_DATA))
    assert len(records) >= 200
    assert len({r["instruction"] for r in records}) == len(records)
    assert torch.tensor([bool(r["input"]) for r in records]).any()


def test_max_examples_keeps_the_first_examples_of_a_split(tmp_path, tiny_tokenizer):
    data = _module(tmp_path, tiny_tokenizer, max_examples={"train": 7, "test": 2})
    full = _module(tmp_path, tiny_tokenizer).load_split_records()
    records = data.load_split_records()
    assert records["train"] == full["train"][:7] and records["test"] == full["test"][:2]
    assert records["val"] == full["val"]
    with pytest.raises(Exception, match=r"data.max_examples: expected \{train\|val\|test: a positive count\}"):
        _module(tmp_path, tiny_tokenizer, max_examples={"dev": 3})


def test_the_demo_heldout_file_is_the_demos_test_split():
    """data/demo/heldout.jsonl (a benchmark file: `--benchmarks '[demo=data/demo/heldout.jsonl]'`) holds exactly
    the 20 prompts the demo holds out (configs/demo.yaml: split_sizes [200, 20, 20], split_seed 1234)."""
    held_out = DollyDataModule(raw=str(DEMO_DATA), split_sizes=(200, 20, 20)).load_split_records()["test"]
    shipped = load_records(str(DEMO_DATA.parent / "heldout.jsonl"))
    assert [(r["instruction"], r["input"], r["output"]) for r in shipped] == [
        (r["instruction"], r["input"], r["output"]) for r in held_out
    ]
