"""Reading Dolly/MiniLLM files: layouts, formats, and errors that name the file and line."""

from __future__ import annotations

import gzip
import json

import pytest

from lit_kd.data import DataFormatError, format_prompt, load_records
from tests.conftest import SHARED_DATA, dolly_rows, write_jsonl


def test_raw_dolly_rows_are_normalised(tmp_path):
    path = write_jsonl(tmp_path / "raw.jsonl", dolly_rows(3))
    records = load_records(str(path))
    assert records[0] == {
        "instruction": "Question number 0: what is 0 plus 0?",
        "input": "Numbers 0 and 0 are given.",
        "output": "The sum is 0.",
        "category": "closed_qa",
    }
    assert records[1]["input"] == ""


def test_all_local_formats_read_the_same(tmp_path):
    rows = [
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"instruction": "Add", "input": "1+1", "output": "2"},
    ]
    write_jsonl(tmp_path / "a.jsonl", rows)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as handle:
        handle.write("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "a.json").write_text(json.dumps(rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    expected = load_records(str(tmp_path / "a.jsonl"))
    for name in ("a.jsonl.gz", "a.json", "a.parquet"):
        assert load_records(str(tmp_path / name)) == expected, name


def test_a_local_dataset_folder_goes_through_datasets(tmp_path):
    """The hub code path (``datasets.load_dataset``) on a local dataset folder: no network needed."""
    write_jsonl(tmp_path / "ds" / "train.jsonl", dolly_rows(4))
    records = load_records(str(tmp_path / "ds"), split="train")
    assert len(records) == 4 and records[2]["output"] == "The sum is 4."


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"instruction": "a", "output": "b"}', '{"instruction": "c", "output": '], r"bad\.jsonl:2: malformed JSON"),
        (['{"instruction": "a", "output": "b"}', '{"output": "d"}'], r"bad\.jsonl:2: field 'instruction' is missing"),
        (
            ['{"instruction": "a", "response": "b", "context": ""}', '{"instruction": "a", "response": "b"}'],
            r"bad\.jsonl:2: field 'context' is missing",
        ),
        (['{"instruction": "a", "output": 3}'], r"bad\.jsonl:1: field 'output' must be a string, got int"),
        (['{"instruction": "a", "output": "  "}'], r"bad\.jsonl:1: field 'output' is empty"),
        (
            ['{"instruction": "a", "output": "b"}', "", '["not", "an", "object"]'],
            r"bad\.jsonl:3: a row must be a JSON object",
        ),
        (['{"instruction": "a", "answer": "b"}'], r"bad\.jsonl:1: no known row layout"),
        ([], r"bad\.jsonl: no rows \(the data file is empty\)"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataFormatError, match=message):
        load_records(str(path))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataFormatError, match="data file not found: .*nope.jsonl"):
        load_records(str(tmp_path / "nope.jsonl"))


def test_prompt_template_matches_minillm_byte_for_byte():
    path = SHARED_DATA / "minillm" / "dolly" / "dev.jsonl"
    if not path.is_file():
        pytest.skip("../shared/data not present")
    with open(path) as handle:
        rows = [json.loads(next(handle)) for _ in range(200)]
    assert any(r["input"] for r in rows) and any(not r["input"] for r in rows)
    for row in rows:
        assert format_prompt(row["instruction"], row["input"]) == row["prompt"]


def test_shared_minillm_splits_load_as_given():
    root = SHARED_DATA / "minillm" / "dolly"
    if not root.is_dir():
        pytest.skip("../shared/data not present")
    assert len(load_records(str(root / "train.jsonl.gz"))) == 11435
    assert len(load_records(str(root / "dev.jsonl"))) == 1000
    test = load_records(str(root / "valid.jsonl"))
    assert len(test) == 500 and test[0]["category"]
