"""``python -m lit_kd generate-data``: the teacher's sampled responses to a fit config's prompts, as Dolly-format
files for sequence-level KD (``configs/regimes/seqkd.yaml`` trains on them).

    python -m lit_kd generate-data --config configs/demo.yaml --out logs/seqkd/demo
    python -m lit_kd fit --config configs/demo.yaml --config configs/regimes/seqkd.yaml \\
        --data.train logs/seqkd/demo/train.jsonl --data.val logs/seqkd/demo/val.jsonl \\
        --data.test logs/seqkd/demo/test.jsonl

Writes ``<out>/train.jsonl`` with the teacher's responses (``--splits`` adds ``val`` or ``test``), and the other
splits as they are (``val.jsonl``, ``test.jsonl``: validation and test keep their human references, so ROUGE-L
is comparable across regimes). Batched with the KV cache, the training prompt format (``data.prompt_format``:
under ``chat_template`` the turns before a conversation's last reply with the generation prompt, the reply
sampled until the end-of-turn token), seeded; resumable after a kill (``lit_kd.data.generated``); a progress bar
in a terminal, plain lines in a log.

"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser

from lit_kd.data.generated import generated_split_paths, write_generated_split, write_records
from lit_kd.errors import ConfigError
from lit_kd.eval.generate import SamplingConfig, generate_responses
from lit_kd.models import load_model
from lit_kd.teacher.cache import teacher_identity
from lit_kd.training import build
from lit_kd.utils.devices import check_device, resolve_device
from lit_kd.utils.progress import split_progress


def generation_options(parser: LightningArgumentParser) -> None:
    """The generation's own options (``python -m lit_kd generate-data --help``)."""
    parser.add_argument("--out", type=str, required=True, help="The folder of the generated splits.")
    parser.add_argument(
        "--splits",
        type=list[str],
        default=["train"],
        help="The splits whose responses the teacher writes (the others are copied as they are).",
    )
    parser.add_argument("--seed", type=int, default=10, help="Sampling seed (batch b is sampled with seed + b).")
    parser.add_argument("--device", type=str, default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    parser.add_argument(
        "--restart",
        type=bool,
        default=False,
        help="Start the chosen splits over: remove the lines an interrupted run left (default: continue after them).",
    )
    parser.add_class_arguments(SamplingConfig, "sampling")


def main(args: list[str]) -> Path:
    """Sample the teacher's response to every prompt of the chosen splits; write Dolly-format files."""
    run = build(args, options=generation_options, open_teacher_cache=False)
    module, data, options = run.module, run.datamodule, run.config
    if module.teacher_config is None:
        raise ConfigError("generate-data: the config has no model.teacher")
    records = data.load_split_records()
    unknown = [name for name in options.splits if name not in records]
    if unknown:
        raise ConfigError(
            f"--splits: the config's data has no {', '.join(unknown)} split (it has {', '.join(records)})"
        )
    settings = SamplingConfig(**vars(options.sampling))
    check_device(options.device)
    out = Path(options.out)
    teacher = load_model(module.teacher_config, "teacher").to(resolve_device(options.device)).eval()
    rendering = module.teacher_rendering or module.rendering  # a cross-tokenizer teacher renders with its own
    generated_by = {
        "teacher": teacher_identity(module.teacher_config),
        "sampling": vars(settings),
        "seed": options.seed,
        "prompt_format": {"name": rendering.name, "fingerprint": rendering.fingerprint},
    }

    def generate(batch: list[dict[str, Any]], seed: int) -> list[str]:
        return generate_responses(teacher, rendering, batch, settings, seed)

    generated = {name: len(rows) for name, rows in records.items() if name in options.splits}
    targets = generated_split_paths(out, records)
    with split_progress("generate-data", generated) as update:
        for name, rows in records.items():
            target = targets[name]
            if name not in generated:
                write_records(target, rows)
                continue
            progress = functools.partial(update, name)
            write_generated_split(
                target, rows, generate, generated_by, settings.batch_size, options.seed, progress, options.restart
            )
    splits = {name: str(path) for name, path in targets.items()}
    overrides = " ".join(f"--data.{name} {path}" for name, path in splits.items())
    print(f"wrote {', '.join(splits.values())}; train on them with --data.raw null {overrides}")
    return out
