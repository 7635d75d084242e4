"""``python -m lit_kd evaluate``: ROUGE-L (with diversity and calibration) of a model on benchmarks × seeds, written
under the run's directory.

    python -m lit_kd evaluate --ckpt logs/demo/version_0/checkpoints/best-1-50.ckpt \\
        --benchmarks '[dolly,self_inst,vicuna,sinst]' --seeds '[10,20,30,40,50]' --data_dir ../shared/data/minillm
    python -m lit_kd evaluate --ckpt configs/demo.yaml --model teacher      # the teacher, as a reference row
    python -m lit_kd evaluate --ckpt configs/demo.yaml --model student      # the student before distillation
    python -m lit_kd evaluate --ckpt path/to/hf_dir                         # an exported / hub model
    python -m lit_kd evaluate --ckpt ... --benchmarks '[vicuna=question.jsonl]' --references '{vicuna: answers.jsonl}'
    python -m lit_kd evaluate --ckpt path/to/hf_dir --prompt_format chat_template  # prompts through its chat template
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Literal, Optional

from lit_kd.errors import ConfigError
from lit_kd.eval.benchmarks import PAPER_BENCHMARKS, load_benchmarks
from lit_kd.eval.diversity import check_self_bleu_order
from lit_kd.eval.evaluate import evaluate_model, new_progress, results_markdown, write_results
from lit_kd.eval.generate import SamplingConfig
from lit_kd.modules.loading import model_from_source, source_label
from lit_kd.utils.devices import resolve_device
from lit_kd.utils.io import ensure_writable_dir, fresh_directory

PAPER_SEEDS = (10, 20, 30, 40, 50)


def default_out_dir(source: str, label: str) -> Path:
    """``<run>/eval/<label>`` for a checkpoint in a run's ``checkpoints/`` folder, else ``logs/eval/<label>``."""
    slug = label.replace(" ", "_").replace("(", "").replace(")", "")
    path = Path(source)
    if path.suffix == ".ckpt" and path.parent.name == "checkpoints":
        return path.parent.parent / "eval" / slug
    return Path("logs") / "eval" / slug


def evaluate(
    ckpt: str,
    model: str = "student",
    benchmarks: list[str] = list(PAPER_BENCHMARKS),
    seeds: list[int] = list(PAPER_SEEDS),
    data_dir: str = "../shared/data/minillm",
    max_examples: Optional[int] = None,
    generation: SamplingConfig = SamplingConfig(),
    out_dir: Optional[str] = None,
    device: str = "auto",
    references: Optional[dict[str, str]] = None,
    calibration: bool = True,
    self_bleu_order: int = 4,
    prompt_format: Optional[Literal["dolly", "chat_template"]] = None,
) -> Path:
    """Evaluate a model: ROUGE-L on benchmarks × seeds, as mean ± std over seeds.

    Args:
        ckpt: A lit_kd checkpoint (.ckpt), a fit config (.yaml: its untrained student or its teacher),
            or a Hugging Face model directory / hub id.
        model: With a .ckpt or .yaml: evaluate the ``student`` or the ``teacher``.
        benchmarks: Names under ``data_dir`` (dolly, self_inst, vicuna, sinst, uinst) or ``name=FILE_OR_HUB``.
        seeds: Sampling seeds; one full pass over every benchmark per seed.
        data_dir: Folder in MiniLLM's layout (``<name>/valid.jsonl``).
        max_examples: Use only the first N examples of each benchmark (quick runs).
        generation: Sampling settings (temperature 1, no top-k/top-p by default, as in the paper).
        out_dir: Output folder (default ``<run>/eval/<model>``); an existing one is never overwritten.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        references: A references file per benchmark whose rows have none (FastChat's ``question.jsonl``), e.g.
            ``{vicuna: answers.jsonl}``: rows matched by ``question_id`` or by the instruction, with ``output`` (a
            string or a list) or FastChat's ``choices``.
        calibration: Also score the model's mean token entropy and expected calibration error on the reference
            responses (one teacher-forced pass per benchmark); Distinct-n and Self-BLEU always come with ROUGE-L.
        self_bleu_order: The n-gram order of Self-BLEU (4, as Texygen; 2 still ranks students whose samples share
            no 4-gram, where Self-BLEU-4 is 0 for all).
        prompt_format: How each benchmark prompt is rendered: ``dolly`` (MiniLLM's template) or ``chat_template``
            (the model's own chat template, an instruction and its input as one user turn); default: the one the
            checkpoint, config or lit_kd export was trained with (``dolly`` for any other model).
    """
    import torch

    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    if not benchmarks:
        raise ConfigError("--benchmarks needs at least one benchmark (a name under --data_dir, or name=FILE_OR_HUB)")
    check_self_bleu_order(self_bleu_order, "--self_bleu_order")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but no CUDA device is available")
    loaded = load_benchmarks(benchmarks, data_dir, max_examples, references=references)  # before any model loads
    target_dir = Path(out_dir) if out_dir else default_out_dir(ckpt, source_label(ckpt, model))
    ensure_writable_dir(target_dir.parent, "output folder")
    lm, rendering, label = model_from_source(ckpt, model, prompt_format)
    lm.to(resolve_device(device))
    directory = fresh_directory(target_dir)
    generations: list[dict] = []
    with new_progress() as progress:
        result = evaluate_model(
            lm, rendering, loaded, seeds, generation, label, progress, generations, calibration, self_bleu_order
        )
    settings = {
        "source": ckpt,
        "model": model,
        "benchmarks": {b.name: b.source for b in loaded},
        "examples": {b.name: len(b.records) for b in loaded},
        "seeds": list(seeds),
        "generation": asdict(generation),
        "references": dict(references or {}),
        "calibration": calibration,
        "self_bleu_order": self_bleu_order,
        "prompt_format": rendering.name,
    }
    paths = write_results(directory, [result], generations, settings)
    print(results_markdown([result]))
    print(f"results: {paths['markdown']} (+ results.csv, results.json, generations.jsonl, tensorboard/)")
    return directory
