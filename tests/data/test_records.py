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


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a prime."},
    {"role": "assistant", "content": "Seven."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Eleven."},
]
SHAREGPT = [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
            for m in CHAT]  # fmt: skip


def test_chat_messages_and_sharegpt_conversations_are_the_same_conversation(tmp_path):
    messages = load_records(str(write_jsonl(tmp_path / "m.jsonl", [{"messages": CHAT, "category": "math"}])))
    sharegpt = load_records(str(write_jsonl(tmp_path / "s.jsonl", [{"id": "x", "conversations": SHAREGPT}])))
    assert messages == [{"messages": CHAT, "output": "Eleven.", "category": "math"}]
    assert sharegpt == [{"messages": CHAT, "output": "Eleven."}]
    # a hub-style dataset folder of chat rows goes through `datasets` the same way
    write_jsonl(tmp_path / "ds" / "train.jsonl", [{"messages": CHAT}] * 2)
    assert load_records(str(tmp_path / "ds"), split="train") == [{"messages": CHAT, "output": "Eleven."}] * 2


@pytest.mark.parametrize(
    "turns, message",
    [
        ([{"role": "tool", "content": "x"}], r"c\.jsonl:2: messages\[0\]: unknown role 'tool' \(accepted: system"),
        ([{"role": "user", "content": "hi"}], r"c\.jsonl:2: the conversation has no assistant turn"),
        (CHAT[:4], r"c\.jsonl:2: the conversation ends with a turn after its last assistant turn"),
        ([CHAT[1], {"role": "assistant", "content": "  "}], r"c\.jsonl:2: assistant turn 1 is empty"),
        ([CHAT[2], CHAT[1], CHAT[2]], r"c\.jsonl:2: the conversation must open with a user turn"),
        ([*CHAT[1:3], CHAT[0], *CHAT[3:]], r"c\.jsonl:2: turn 2 is a system turn; only the first may be"),
        ([CHAT[1], {"role": "assistant", "content": ["parts"]}], r"messages\[1\]: 'content' must be a string, got"),
        ([], r"c\.jsonl:2: field 'messages' must be a non-empty list of turns"),
    ],
)
def test_a_conversation_that_breaks_a_rule_is_refused_with_its_line(tmp_path, turns, message):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}, {"messages": turns}])
    with pytest.raises(DataFormatError, match=message):
        load_records(str(path))


def test_an_unknown_sharegpt_speaker_and_a_row_of_another_layout_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"conversations": [{"from": "bing", "value": "x"}]}])
    with pytest.raises(DataFormatError, match=r"unknown role 'bing' \(accepted: system, human, user, gpt, assistant"):
        load_records(str(path))
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"messages": CHAT}, {"instruction": "a", "output": "b"}])
    with pytest.raises(DataFormatError, match=r"mixed\.jsonl:2: field 'messages' is missing"):
        load_records(str(path))
    path = write_jsonl(tmp_path / "other.jsonl", [{"text": "x"}])
    with pytest.raises(DataFormatError, match=r"accepted: .*chat messages .*ShareGPT"):
        load_records(str(path))


def test_a_teacher_generated_conversation_may_end_with_an_empty_reply(tmp_path):
    rows = [{"messages": [CHAT[1], {"role": "assistant", "content": ""}], "generated_by": {"seed": 1}}]
    assert load_records(str(write_jsonl(tmp_path / "g.jsonl", rows)))[0]["output"] == ""


def test_the_dolly_template_refuses_a_multi_turn_conversation_with_its_line(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT[1:3]}, {"messages": CHAT}])
    assert len(load_records(str(path), single_exchange=False)) == 2
    with pytest.raises(DataFormatError, match=r"c\.jsonl:2: a conversation of 5 turns .*data.prompt_format chat_templ"):
        load_records(str(path), single_exchange=True)
