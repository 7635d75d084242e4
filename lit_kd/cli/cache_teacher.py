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
from typing import Optional

from lightning.pytorch.cli import LightningArgumentParser

from lit_kd.errors import ConfigError
from lit_kd.teacher.build import CACHE_DTYPES, write_teacher_cache
from lit_kd.training import build


def cache_options(parser: LightningArgumentParser) -> None:
    """The cache's own options (``python -m lit_kd cache-teacher --help``)."""
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
    parser.add_argument("--device", type=str, default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")


def main(args: list[str]) -> Path:
    """Build (or confirm) the teacher cache of a fit configuration (its ``--config`` files and overrides)."""
    run = build(args, options=cache_options, open_teacher_cache=False)
    module, options = run.module, run.config
    if module.teacher_config is None:
        raise ConfigError("cache-teacher: the config has no model.teacher")
    target = options.out or module.teacher_cache_path
    if target is None:
        raise ConfigError("cache-teacher: give --out (or set model.teacher_cache in the config)")
    return write_teacher_cache(
        module.teacher_config, module.tokenizer, run.datamodule, target, options.dtype, options.batch_size,
        options.device, tuple(options.splits),
    )  # fmt: skip
