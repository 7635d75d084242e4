"""The evaluation sets as their releases ship them: Self-Instruct's user_oriented_instructions.jsonl, FastChat's
question.jsonl (with a references file beside it, else one error), and a Super-NaturalInstructions task JSON;
the layout is detected, and a file of no known layout is one error naming the accepted ones."""

from __future__ import annotations

import json

import pytest

from lit_kd.data.records import load_records
from lit_kd.errors import DataFormatError
from lit_kd.eval.benchmarks import load_benchmarks
from tests.conftest import SHARED_DATA, write_jsonl

RAW = SHARED_DATA / "raw"
MINILLM = SHARED_DATA / "minillm"
needs_shared = pytest.mark.skipif(not RAW.is_dir(), reason="../shared/data not present")


def questions(tmp_path):
    return write_jsonl(tmp_path / "question.jsonl", [
        {"question_id": 1, "category": "generic", "turns": ["How do I plan a week?"]},
        {"question_id": 2, "category": "math", "turns": ["What is 2 + 2?", "And 3 + 3?"]},
    ])  # fmt: skip


def test_fastchat_questions_without_references_are_one_error_saying_rouge_needs_them(tmp_path):
    with pytest.raises(DataFormatError) as error:
        load_benchmarks([f"vicuna={questions(tmp_path)}"], str(tmp_path))
    message = str(error.value)
    assert "benchmark vicuna" in message and "ROUGE-L needs references" in message and "--references" in message


def test_fastchat_references_match_by_question_id_with_several_choices(tmp_path):
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": 2, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["4", "6"]},
                                                            {"index": 1, "turns": ["Four"]}]},
        {"question_id": 1, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["Make a list."]}]},
    ])  # fmt: skip
    (benchmark,) = load_benchmarks([f"vicuna={questions(tmp_path)}"], str(tmp_path), references={"vicuna": str(answers)})
    assert [r["instruction"] for r in benchmark.records] == ["How do I plan a week?", "What is 2 + 2?"]
    assert [r["output"] for r in benchmark.records] == [["Make a list."], ["4", "Four"]]
    assert benchmark.records[1]["category"] == "math"


def test_a_question_without_a_reference_and_a_stray_references_key_are_errors(tmp_path):
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": 1, "output": "Make a list."}])
    with pytest.raises(DataFormatError, match=r"benchmark vicuna: 1 of 2 questions have no reference .*first: 2"):
        load_benchmarks([f"vicuna={questions(tmp_path)}"], str(tmp_path), references={"vicuna": str(answers)})
    with pytest.raises(DataFormatError, match="--references names sinst, which is not among the benchmarks"):
        load_benchmarks([f"vicuna={questions(tmp_path)}"], str(tmp_path), references={"sinst": str(answers)})
    with pytest.raises(DataFormatError, match="benchmark file not found — vicuna: .*missing.jsonl"):
        load_benchmarks([f"vicuna={questions(tmp_path)}"], str(tmp_path),
                        references={"vicuna": str(tmp_path / "missing.jsonl")})  # fmt: skip


def test_training_data_in_fastchat_layout_is_refused(tmp_path):
    with pytest.raises(DataFormatError, match="FastChat questions carry no responses to train on"):
        load_records(str(questions(tmp_path)))


def super_ni_task(tmp_path, **overrides):
    task = {
        "Contributors": ["someone"], "Source": ["a dataset"], "Categories": ["Question Answering"],
        "Definition": ["Answer the question with one word."],
        "Positive Examples": [{"input": "Sky colour?", "output": "blue", "explanation": "..."}],
        "Instances": [{"id": "task1-1", "input": "Grass colour?", "output": ["green", "Green"]},
                      {"id": "task1-2", "input": "Snow colour?", "output": ["white"]}],
    }  # fmt: skip
    path = tmp_path / "task001_colours.json"
    path.write_text(json.dumps({**task, **overrides}, indent=2))
    return path


def test_a_super_natural_instructions_task_file_gives_one_record_per_instance_with_every_reference(tmp_path):
    (benchmark,) = load_benchmarks([f"sni={super_ni_task(tmp_path)}"], str(tmp_path))
    assert benchmark.records == [
        {"instruction": "Answer the question with one word.", "input": "Grass colour?", "output": ["green", "Green"],
         "category": "Question Answering"},
        {"instruction": "Answer the question with one word.", "input": "Snow colour?", "output": ["white"],
         "category": "Question Answering"},
    ]  # fmt: skip
    with pytest.raises(DataFormatError, match=r"field 'Instances' must be a non-empty list"):
        load_benchmarks([f"sni={super_ni_task(tmp_path, Instances=[])}"], str(tmp_path))
    with pytest.raises(DataFormatError, match=r"\[instance 0\]: field 'output' must be a string or a non-empty list"):
        load_benchmarks([f"sni={super_ni_task(tmp_path, Instances=[{'input': 'x', 'output': []}])}"], str(tmp_path))


def test_a_file_of_no_known_layout_names_the_accepted_ones(tmp_path):
    rows = write_jsonl(tmp_path / "odd.jsonl", [{"question": "hi", "answer": "there"}])
    with pytest.raises(DataFormatError) as error:
        load_benchmarks([f"odd={rows}"], str(tmp_path))
    message = str(error.value)
    assert f"{rows}:1: no known row layout (found fields ['answer', 'question'])" in message
    for layout in ("raw Dolly", "MiniLLM", "Self-Instruct", "FastChat", "Super-NaturalInstructions"):
        assert layout in message
    odd_object = tmp_path / "odd.json"
    odd_object.write_text(json.dumps({"questions": ["hi"]}))
    with pytest.raises(DataFormatError, match="a JSON object that is not a Super-NaturalInstructions task file"):
        load_benchmarks([f"odd={odd_object}"], str(tmp_path))


@needs_shared
def test_self_instruct_as_released_holds_minillms_rows():
    (released,) = load_benchmarks([f"si={RAW / 'self-instruct' / 'user_oriented_instructions.jsonl'}"], ".")
    (minillm,) = load_benchmarks([f"si={MINILLM / 'self-inst' / 'valid.jsonl'}"], ".")
    assert len(released.records) == 252 and len(minillm.records) == 242
    key = [(r["instruction"], r["input"], tuple(r["output"])) for r in released.records]
    assert all((r["instruction"], r["input"], tuple(r["output"])) in key for r in minillm.records)
    assert released.records[0]["category"] == "Grammarly"


@needs_shared
def test_vicunas_released_questions_with_minillms_references_beside_them():
    (vicuna,) = load_benchmarks([f"vicuna={RAW / 'vicuna_bench' / 'question.jsonl'}"], ".",
                                references={"vicuna": str(MINILLM / "vicuna" / "valid.jsonl")})  # fmt: skip
    (minillm,) = load_benchmarks(["vicuna"], str(MINILLM))
    assert len(vicuna.records) == 80
    assert {r["instruction"]: r["output"] for r in vicuna.records} == {
        r["instruction"]: r["output"] for r in minillm.records
    }  # MiniLLM's file has the same 80 questions in another order
