"""``evaluate``: five benchmarks × five seeds end to end on a tiny model; files, tables, determinism, errors."""

from __future__ import annotations

import csv
import json

import pytest

from lit_kd.cli import main
from lit_kd.cli.evaluate import evaluate
from lit_kd.data import DataFormatError
from lit_kd.eval import BENCHMARK_FILES, PAPER_BENCHMARKS, SamplingConfig, load_benchmarks
from lit_kd.models import ModelConfig, load_model
from tests.conftest import ROOT, SHARED_DATA, tiny_llama_config, write_jsonl

SEEDS = [10, 20, 30, 40, 50]


@pytest.fixture
def benchmark_dir(tmp_path):
    """The five benchmarks in MiniLLM's layout, three examples each; sinst carries reference lists."""
    root = tmp_path / "minillm"
    for name, relative in BENCHMARK_FILES.items():
        rows = []
        for i in range(3):
            row = {"instruction": f"{name} question {i}?", "output": f"answer {i} for {name}"}
            if name != "vicuna":  # vicuna rows have no input field
                row["input"] = "" if i % 2 else f"context {i}"
            if name == "sinst":
                row["output"] = [f"answer {i}", f"another answer {i}"]
            rows.append(row)
        write_jsonl(root / relative, rows)
    return root


@pytest.fixture
def tiny_hf_dir(tmp_path, tiny_tokenizer):
    path = tmp_path / "tiny-model"
    load_model(ModelConfig(config=tiny_llama_config(2, initializer_range=0.5))).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_five_benchmarks_by_five_seeds_end_to_end(tmp_path, benchmark_dir, tiny_hf_dir):
    out = evaluate(
        ckpt=str(tiny_hf_dir),
        benchmarks=list(PAPER_BENCHMARKS),
        seeds=SEEDS,
        data_dir=str(benchmark_dir),
        generation=SamplingConfig(max_new_tokens=8, batch_size=2),
        out_dir=str(tmp_path / "eval"),
    )
    results = json.loads((out / "results.json").read_text())
    (result,) = results["results"]
    assert set(result["per_seed"]) == set(PAPER_BENCHMARKS)
    assert all(set(per_seed) == {str(s) for s in SEEDS} for per_seed in result["per_seed"].values())
    assert set(result["mean_std"]) == set(PAPER_BENCHMARKS) | {"avg"}
    table = (out / "results.md").read_text()
    assert "| model | dolly | self_inst | vicuna | sinst | uinst | avg |" in table and " ± " in table
    # diversity and calibration, beside ROUGE-L, from the same generations
    assert "| model | benchmark | ROUGE-L | Distinct-1 | Distinct-2 | Distinct-3 | Distinct-4 | Self-BLEU-4 |" in table
    assert set(result["distinct"]) == set(PAPER_BENCHMARKS) and set(result["self_bleu"]) == set(PAPER_BENCHMARKS)
    assert all(set(per_seed) == {str(s) for s in SEEDS} for per_seed in result["distinct"].values())
    for name, scores in result["confidence"].items():
        assert scores["entropy"] > 0 and 0 <= scores["ece"] <= 1, name
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 25
    generations = [json.loads(line) for line in open(out / "generations.jsonl")]
    assert len(generations) == 5 * 5 * 3
    assert {"benchmark", "seed", "instruction", "reference", "output"} <= set(generations[0])
    sinst = next(g for g in generations if g["benchmark"] == "sinst")
    assert isinstance(sinst["reference"], list)
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))

    # the same seeds give identical generations and scores; a run never overwrites an earlier one
    again = evaluate(
        ckpt=str(tiny_hf_dir),
        benchmarks=["dolly", "sinst"],
        seeds=[10, 20],
        data_dir=str(benchmark_dir),
        generation=SamplingConfig(max_new_tokens=8, batch_size=2),
        out_dir=str(tmp_path / "eval"),
    )
    assert again != out and again.name == "eval-2"
    repeated = json.loads((again / "results.json").read_text())["results"][0]["per_seed"]
    assert repeated["dolly"] == {k: v for k, v in result["per_seed"]["dolly"].items() if k in ("10", "20")}
    first = {(g["benchmark"], g["seed"], g["index"]): g["output"] for g in generations}
    for g in map(json.loads, open(again / "generations.jsonl")):
        assert first[(g["benchmark"], g["seed"], g["index"])] == g["output"]
    by_seed = {}
    for g in generations:
        by_seed.setdefault(g["seed"], []).append(g["output"])
    assert by_seed[10] != by_seed[20]  # different seeds sample differently


def test_a_missing_benchmark_file_fails_before_any_model_loads(tmp_path, benchmark_dir, capsys):
    (benchmark_dir / "uinst" / "11_" / "valid.jsonl").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--ckpt", "/no/such/model.ckpt", "--data_dir", str(benchmark_dir), "--seeds", "[10]"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "benchmark file not found — uinst: " in err and "uinst/11_/valid.jsonl" in err


def test_benchmark_errors(tmp_path, benchmark_dir):
    with pytest.raises(DataFormatError, match="unknown benchmark 'mmlu'"):
        load_benchmarks(["mmlu"], str(benchmark_dir))
    write_jsonl(tmp_path / "bad.jsonl", ['{"instruction": "q", "output": ["a"]}', '{"instruction": "q", "input": ""}'])
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: field 'output' is missing"):
        load_benchmarks([f"custom={tmp_path / 'bad.jsonl'}"], str(benchmark_dir))
    (custom,) = load_benchmarks([f"custom={benchmark_dir / 'dolly' / 'valid.jsonl'}"], "unused", max_examples=2)
    assert custom.name == "custom" and len(custom.records) == 2


def test_teacher_and_untrained_student_of_a_fit_config(tmp_path, benchmark_dir, monkeypatch):
    monkeypatch.chdir(ROOT)  # tiny.yaml's paths are relative to the repository root
    settings = SamplingConfig(max_new_tokens=4, batch_size=4)
    kwargs = dict(benchmarks=["dolly"], seeds=[10], data_dir=str(benchmark_dir), generation=settings)
    teacher = evaluate(ckpt="configs/tiny.yaml", model="teacher", out_dir=str(tmp_path / "t"), **kwargs)
    student = evaluate(ckpt="configs/tiny.yaml", model="student", out_dir=str(tmp_path / "s"), **kwargs)
    assert json.loads((teacher / "results.json").read_text())["results"][0]["label"] == "teacher"
    assert json.loads((student / "results.json").read_text())["results"][0]["label"] == "student (untrained)"


def test_shared_benchmarks_load():
    root = SHARED_DATA / "minillm"
    if not root.is_dir():
        pytest.skip("../shared/data not present")
    loaded = {b.name: b for b in load_benchmarks(["dolly", "self_inst", "vicuna", "sinst"], str(root))}
    assert {k: len(v.records) for k, v in loaded.items()} == {
        "dolly": 500,
        "self_inst": 242,
        "vicuna": 80,
        "sinst": 1694,
    }
    assert any(len(r["output"]) > 1 for r in loaded["sinst"].records)


def test_evaluating_a_student_with_its_own_weights_does_not_load_the_teacher(tmp_path, tiny_hf_dir, monkeypatch):
    import lit_kd.models.pair as pair
    from lit_kd.modules.loading import model_from_source

    checkpoint = {
        "lit_kd_hyper_parameters": {
            "student": {"path": str(tiny_hf_dir)},
            "teacher": {"config": tiny_llama_config(4), "tokenizer": str(tiny_hf_dir)},
            "kd_ratio": 1.0,
        },
    }
    loaded = []
    real = pair.load_model
    monkeypatch.setattr(pair, "load_model", lambda config, role="model": loaded.append(role) or real(config, role))
    import torch

    from lit_kd.models import ModelConfig

    student = real(ModelConfig(path=str(tiny_hf_dir)), "student")
    checkpoint["state_dict"] = {f"student.{k}": v for k, v in student.state_dict().items()}
    torch.save(checkpoint, tmp_path / "student.ckpt")
    model, _, label = model_from_source(str(tmp_path / "student.ckpt"), "student")
    assert loaded == ["student"] and label == "student (distilled)"
    model_from_source(str(tmp_path / "student.ckpt"), "teacher")
    assert loaded[1:] == ["teacher", "student"]
