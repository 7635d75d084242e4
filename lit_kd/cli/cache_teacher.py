"""``python -m lit_kd cache-teacher``: run the teacher once over a fit config's data and store its final hidden
states at the response positions, so that training (``model.teacher_cache``) never runs the teacher again.

    python -m lit_kd cache-teacher --config configs/demo.yaml --out logs/cache/demo
    python -m lit_kd fit --config configs/demo.yaml --model.teacher_cache logs/cache/demo

Every ``--config`` and override a ``fit`` accepts is accepted (they select the teacher, tokenizer and data);
``--out`` defaults to the config's ``model.teacher_cache``. An existing cache built for the same teacher, data
and settings is reused; one built for anything else is refused, never overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.cli import LightningArgumentParser
from torch.utils.data import DataLoader

from lit_kd.cli.main import LitKDCLI
from lit_kd.cli.progress import split_progress
from lit_kd.data.collate import IndexedExamples, PadCollator
from lit_kd.errors import CacheError, ConfigError
from lit_kd.models import ModelConfig, load_model
from lit_kd.models.head import final_hidden_states, output_head, verify_head
from lit_kd.teacher.cache import (
    CACHE_DTYPES,
    MANIFEST,
    TeacherCache,
    build_teacher_cache,
    cache_key,
    describe_size,
)


def split_sizes(dataset: Any) -> tuple[int, int]:
    """(examples, response rows) of a tokenized split: the rows a cache stores for it."""
    labels = dataset["labels"]
    return len(labels), sum(sum(1 for label in row[1:] if label != -100) for row in labels)


class CacheTeacherCLI(LitKDCLI):
    """The fit configuration's parser, plus the cache's own options (``python -m lit_kd cache-teacher --help``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument(
            "--out",
            type=Optional[str],
            default=None,
            help="The cache directory (default: the config's model.teacher_cache).",
        )
        parser.add_argument(
            "--dtype",
            type=str,
            default="float32",
            choices=sorted(CACHE_DTYPES),
            help="float32: exact; bfloat16: half the size (see the README for the loss difference).",
        )
        parser.add_argument(
            "--splits", type=list[str], default=["train", "val"], help="The splits to cache (add test for `test` runs)."
        )
        parser.add_argument(
            "--batch_size",
            type=Optional[int],
            default=None,
            help="Examples per teacher forward (default: data.eval_batch_size).",
        )
        parser.add_argument("--device", type=str, default="auto",
                            help="auto (CUDA when available), cpu, cuda, cuda:1, ...")  # fmt: skip


def main(args: Optional[list[str]] = None) -> Path:
    """Build (or confirm) the teacher cache of a fit configuration (its ``--config`` files and overrides)."""
    cli = CacheTeacherCLI(args=args, run=False)
    module, options = cli.model, cli.config
    if module.teacher_config is None:
        raise ConfigError("cache-teacher: the config has no model.teacher")
    target = options.out or module.teacher_cache_path
    if target is None:
        raise ConfigError("cache-teacher: give --out (or set model.teacher_cache in the config)")
    return write_teacher_cache(
        module.teacher_config, module.tokenizer, cli.datamodule, target, options.dtype, options.batch_size,
        options.device, tuple(options.splits),
    )  # fmt: skip


def write_teacher_cache(
    teacher_config: ModelConfig,
    tokenizer: Any,
    data: Any,
    target: str | Path,
    dtype: str = "float32",
    batch_size: Optional[int] = None,
    device: str = "auto",
    splits: tuple[str, ...] = ("train", "val"),
) -> Path:
    """Run the teacher over the ``splits`` of ``data`` (a connected ``DollyDataModule``) and write the cache to
    ``target``; an existing cache for the same key is reused, any other content is refused."""

    target = Path(target)
    records = data.load_split_records()
    unknown = [name for name in splits if name not in ("train", "val", "test")]
    if unknown or not splits:
        raise ConfigError(f"--splits: choose among train, val, test; got {','.join(splits) or 'nothing'}")
    missing = [name for name in splits if name not in records]
    if missing:
        raise ConfigError(f"--splits: the config's data has no {', '.join(missing)} split")
    key = cache_key(teacher_config, tokenizer, {name: records[name] for name in splits}, data.max_length)
    if target.exists() and any(target.iterdir()):
        if not (target / MANIFEST).is_file():
            raise CacheError(f"{target} exists and is not a teacher cache; choose another --out (nothing was changed)")
        existing = TeacherCache.open(target)
        existing.check(key)
        if set(splits) - set(existing.shards):
            raise CacheError(
                f"teacher cache {target} holds the splits {','.join(existing.shards)}, not "
                f"{','.join(sorted(set(splits) - set(existing.shards)))}; build one with all of them elsewhere"
            )
        print(f"teacher cache {target} is up to date for this teacher, tokenizer and data: nothing to do")
        return target

    data.setup("fit")
    sizes = {name: split_sizes(data.splits[name].dataset) for name in splits}
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = load_model(teacher_config, "teacher").to(device).eval().requires_grad_(False)
    verify_head(teacher, "teacher")  # the cached hidden states must give the teacher's logits exactly
    head = output_head(teacher)
    print(f"teacher cache {target}: {describe_size(sizes, head.hidden_size, dtype)}", flush=True)
    collate = PadCollator(tokenizer.pad_token_id)
    size = batch_size or data.eval_batch_size
    loaders = {
        name: (lambda d=data.splits[name].dataset: DataLoader(IndexedExamples(d), batch_size=size, collate_fn=collate))
        for name in splits
    }

    def hidden(batch: dict[str, Any]) -> torch.Tensor:
        return final_hidden_states(teacher, batch["input_ids"].to(device), batch["attention_mask"].to(device))

    with split_progress("teacher cache", {name: examples for name, (examples, _) in sizes.items()}) as update:
        path = build_teacher_cache(target, key, head, loaders, sizes, hidden, dtype=dtype, progress=update)
    print(f"wrote the teacher cache {path}; train with --model.teacher_cache {path}")
    return path
