"""Hypothesis fuzzing of the data loader: every row either loads correctly (and tokenizes) or raises
lit_kd's own DataFormatError — never a bare traceback from inside a library."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_kd.data import DataFormatError, encode_example, load_records

FIELDS = ["instruction", "input", "output", "response", "context", "category", "topic", "prompt", "extra"]
texts = st.one_of(
    st.text(max_size=40),  # any unicode, lone surrogates included
    st.text(alphabet=st.characters(codec="utf-8"), min_size=500, max_size=3000),  # very long fields
    st.just(""),
    st.just("   "),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
rows = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), st.one_of(texts, json_values), max_size=6),
    json_values,  # not an object at all
)


def _check(tmp_path, lines: list[str], tokenizer) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(line.encode("utf-8", "surrogatepass") for line in lines) + b"\n")
    try:
        records = load_records(str(path))
    except DataFormatError as err:
        assert str(path) in str(err)
        return
    for record in records:
        assert isinstance(record["instruction"], str) and record["instruction"].strip()
        assert isinstance(record["input"], str) and isinstance(record["output"], str) and record["output"].strip()
        encoded = encode_example(tokenizer, record["instruction"], record["input"], record["output"], max_length=256)
        assert encoded["dropped"] or encoded["labels"][-1] != -100


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(rows, min_size=1, max_size=4))
def test_random_rows_load_or_raise_our_error(tmp_path, tiny_tokenizer, generated):
    _check(tmp_path, [json.dumps(row) for row in generated], tiny_tokenizer)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(st.text(max_size=60), st.binary(max_size=30).map(lambda b: b.decode("latin-1"))),
        min_size=1,
        max_size=3,
    )
)
def test_random_lines_load_or_raise_our_error(tmp_path, tiny_tokenizer, lines):
    _check(tmp_path, lines, tiny_tokenizer)


def test_invalid_utf8_bytes_name_the_file(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "\xff\xfe"}\n')
    try:
        load_records(str(path))
    except DataFormatError as err:
        assert "cannot be read as UTF-8" in str(err) and str(path) in str(err)
    else:
        raise AssertionError("invalid UTF-8 was accepted")
