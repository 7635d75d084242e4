"""``python -m lit_kd cache-teacher``: run the teacher once over a fit config's data and store its final hidden
states at the response positions, so that training (``model.teacher_cache``) never runs the teacher again.

    python -m lit_kd cache-teacher --config configs/demo.yaml --out logs/cache/demo
    python -m lit_kd fit --config configs/demo.yaml --model.teacher_cache logs/cache/demo

Every ``--config`` and override a ``fit`` accepts is accepted (they select the teacher, tokenizer and data);
``--out`` defaults to the config's ``model.teacher_cache``. An existing cache built for the same teacher, data
and settings is reused; one built for anything else is refused, never overwritten. With ``--trainer.devices N``
(and ``--trainer.num_nodes``) N processes share the work, each writing its part of one cache:

    python -m lit_kd cache-teacher --config configs/pairs/gpt2.yaml --trainer.devices 8
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from jsonargparse import Namespace
from lightning.fabric import Fabric
from lightning.pytorch.cli import LightningArgumentParser

from lit_kd.errors import ConfigError
from lit_kd.teacher.build import CACHE_DTYPES, write_teacher_cache
from lit_kd.training import build
from lit_kd.training.build import process_count
from lit_kd.utils.devices import check_device


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
        default="float32",
        choices=sorted(CACHE_DTYPES),
        help="float32: exact; bfloat16: half the size (loss difference: docs/guides/teacher-cache.md#measured).",
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
    parser.add_argument(
        "--shard_bytes", type=int, default=1 << 30, help="About this many bytes of hidden states per shard file."
    )
    parser.add_argument(
        "--device",
        type=str,
        default="auto",
        help="One process: auto (CUDA when available), cpu, cuda, cuda:1, ... With --trainer.devices N (or "
        "--trainer.num_nodes) each process takes a device of --trainer.accelerator instead.",
    )


def main(args: list[str]) -> Path:
    """Build (or confirm) the teacher cache of a fit configuration (its ``--config`` files and overrides)."""
    run = build(args, options=cache_options, open_teacher_cache=False)
    module, options = run.module, run.config
    if module.teacher_config is None:
        raise ConfigError("cache-teacher: the config has no model.teacher")
    target = options.out or module.teacher_cache_path
    if target is None:
        raise ConfigError("cache-teacher: give --out (or set model.teacher_cache in the config)")
    if options.shard_bytes < 1:
        raise ConfigError(f"--shard_bytes must be positive, got {options.shard_bytes}")
    if options.batch_size is not None and options.batch_size < 1:
        raise ConfigError(f"--batch_size must be positive (or null: data.eval_batch_size), got {options.batch_size}")
    if process_count(run.config.trainer) in (None, 1):  # one process: --device is where the teacher runs
        check_device(options.device)
    return write_teacher_cache(
        module.teacher_config, module.tokenizer, run.datamodule, target, options.dtype, options.batch_size,
        options.device, tuple(options.splits), options.shard_bytes, launch_processes(options),
    )  # fmt: skip


def launch_processes(options: Namespace) -> Optional[Fabric]:
    """With ``--trainer.devices N`` (N > 1) or several ``--trainer.num_nodes``: Lightning Fabric's processes, one
    per device of ``--trainer.accelerator`` (started here, or by torchrun or SLURM), joined in one process group
    (DDP's: gloo on CPU, NCCL on CUDA). None for one process, which uses ``--device``."""
    trainer = options.trainer
    processes = process_count(trainer)
    if processes is None:
        raise ConfigError(
            f"cache-teacher: --trainer.devices must be a number of devices or a list of them, got {trainer.devices!r}"
        )
    if processes == 1:
        return None
    if options.device != "auto":
        raise ConfigError(
            f"cache-teacher: --device {options.device} is for one process; with {processes} processes each takes a "
            "device of --trainer.accelerator (set --trainer.devices 1 to use --device)"
        )
    if options.model.get("teacher_sharding") == "shard":
        raise ConfigError(
            "cache-teacher: model.teacher_sharding shard is for training; cache-teacher runs a whole teacher on each "
            "process (set --model.teacher_sharding replicate, or train with the live sharded teacher)"
        )
    accelerator = trainer.accelerator if isinstance(trainer.accelerator, str) else "auto"
    fabric = Fabric(accelerator=accelerator, devices=trainer.devices, num_nodes=trainer.num_nodes, strategy="ddp")
    fabric.launch()
    return fabric
