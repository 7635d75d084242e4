"""The one builder: a fit configuration (its ``--config`` files and overrides) → the run's module, data and trainer.

    run = build(["--config", "configs/tiny.yaml", "--model.loss.tau", "2"])
    run.trainer.fit(run.module, datamodule=run.datamodule)

``build`` is LightningCLI (``LitKDCLI``) on lit_kd's classes with the defaults every run gets: ``configs/base.yaml``
read first, ``seed_everything``, a TensorBoardLogger under ``logs/`` (a new ``version_N`` per run), two
ModelCheckpoints (``checkpoint``: the best by a monitored metric; ``last_checkpoint``: the latest, as last.ckpt), a
progress display (Rich in a terminal, plain lines in a log), the LR and throughput monitors, the HParams summary,
``fit_summary.json`` and the resume hint. Everything is checked before any run directory is written: the log
directory, the data files, a ``--ckpt_path`` of another student, and the teacher cache (opened and checked once,
then handed to the module). ``python -m lit_kd fit|validate|test`` run the same builder with their subcommand;
``demo``, ``cache-teacher``, ``generate-data`` and the benchmarks build without one and drive the trainer
themselves (``options`` adds a command's own arguments to the parser).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar, ThroughputMonitor, Timer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info

from lit_kd.data import DollyDataModule
from lit_kd.data.collate import batch_rows, batch_tokens
from lit_kd.errors import CheckpointError, ConfigError
from lit_kd.models import StudentConfig
from lit_kd.modules import DistillModule
from lit_kd.modules.fsdp import check_teacher_sharding
from lit_kd.modules.loading import checkpoint_hparams, read_checkpoint
from lit_kd.teacher import TeacherCache, cache_key
from lit_kd.teacher.build import clean_after_interrupted_builds
from lit_kd.training.hparams import HParamsSummary
from lit_kd.training.last_checkpoint import LastCheckpoint
from lit_kd.training.preflight import check_monitors, check_optimizer_factories, warn_unanchored_student_scale
from lit_kd.training.progress import LineProgress
from lit_kd.training.summary import FitSummary, ResumeHint
from lit_kd.training.trainer import Trainer
from lit_kd.utils.io import ensure_writable_dir, newest
from lit_kd.utils.paths import BASE_CONFIG

MAX_SEED = 2**32 - 1
"""The largest seed Lightning's ``seed_everything`` takes (NumPy's ``uint32``)."""

RUN_SUBCOMMANDS = ("fit", "validate", "test")
"""The LightningCLI subcommands lit_kd runs (``predict`` is not one: a student's generations come from
``python -m lit_kd evaluate``)."""


@dataclass
class Run:
    """A built run: what ``python -m lit_kd fit`` would train, with its resolved configuration."""

    module: DistillModule
    datamodule: DollyDataModule
    trainer: Trainer
    config: Namespace
    """The resolved configuration (``config.out`` etc. hold a command's own ``options``)."""


def build(
    args: list[str],
    subcommand: Optional[str] = None,
    options: Optional[Callable[[LightningArgumentParser], None]] = None,
    open_teacher_cache: bool = True,
) -> Run:
    """Build the run of a fit configuration given as command-line words; with ``subcommand`` (fit, validate,
    test) also run it, as ``python -m lit_kd <subcommand>`` does. ``options`` adds a command's own arguments;
    ``open_teacher_cache=False`` leaves ``model.teacher_cache`` unopened (for commands that write it)."""
    if subcommand is not None and subcommand not in RUN_SUBCOMMANDS:
        raise ValueError(f"subcommand must be one of {RUN_SUBCOMMANDS}, got {subcommand!r}")
    argv = [subcommand, *args] if subcommand else list(args)
    cli = LitKDCLI(args=argv, run=subcommand is not None, options=options, open_teacher_cache=open_teacher_cache)
    config = cli.config[cli.subcommand] if cli.subcommand else cli.config
    return Run(cli.model, cli.datamodule, cli.trainer, config)


def with_base(args: list[str], run: bool) -> list[str]:
    """The command line with ``configs/base.yaml`` read first: the shared base is the CLI's default, so no other
    config restates it (later ``--config`` files and flags override it)."""
    if not BASE_CONFIG.is_file():
        return args
    if run:
        return [args[0], "--config", str(BASE_CONFIG), *args[1:]]
    return ["--config", str(BASE_CONFIG), *args]


def resume_command(args: list[str]) -> str:
    """The command that resumes this ``fit`` (its arguments, with ``--ckpt_path last``)."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["python", "-m", "lit_kd", *kept, "--ckpt_path", "last"])


def default_callbacks(args: list[str], logger: bool = True) -> list:
    """Progress (Rich in a terminal, plain lines otherwise), LR and throughput monitors, HParams, fit summary,
    and the resume hint on Ctrl-C; without a ``logger`` (``trainer.logger: false``) no LR monitor and no HParams,
    which only write to a logger."""
    progress = RichProgressBar() if sys.stdout.isatty() else LineProgress()
    logged = [LearningRateMonitor(logging_interval="step"), HParamsSummary()] if logger else []
    return [
        progress,
        *logged,
        ThroughputMonitor(batch_size_fn=batch_rows, length_fn=batch_tokens, window_size=10),
        FitSummary(),
        ResumeHint(resume_command(args)),
    ]


def fill_data_parallel_size(trainer: Namespace) -> None:
    """FSDP2 alone (``ModelParallelStrategy`` with ``tensor_parallel_size: 1``): Lightning's ``data_parallel_size:
    auto`` is the number of nodes; sharding over every process needs devices × nodes, which is filled in here."""
    strategy = trainer.get("strategy")
    init = getattr(strategy, "init_args", None)
    if strategy_name(strategy) != ModelParallelStrategy.__name__ or init is None:
        return
    if init.get("tensor_parallel_size") != 1 or init.get("data_parallel_size", "auto") != "auto":
        return
    processes = process_count(trainer)
    if processes is None:
        raise ConfigError(
            "trainer.devices: FSDP (configs/strategies/fsdp.yaml) needs the number of devices per node, "
            f"got {trainer.get('devices')!r}"
        )
    init.data_parallel_size = processes


def process_count(trainer: Namespace) -> Optional[int]:
    """devices × nodes of a parsed ``trainer`` section; None when ``devices`` is not a count or a list (``auto``)."""
    devices = trainer.get("devices")
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    count = len(devices) if isinstance(devices, (list, tuple)) else devices if isinstance(devices, int) else None
    if count is None or count < 1:
        return None
    return count * int(trainer.get("num_nodes") or 1)


def strategy_name(strategy: Any) -> str:
    """The class name of a parsed ``trainer.strategy`` (a class path with its arguments, or a name like ``ddp``)."""
    return str(getattr(strategy, "class_path", strategy)).rsplit(".", 1)[-1]


def check_max_time(max_time: Any) -> None:
    """``trainer.max_time`` as Lightning's ``Timer`` reads it (``DD:HH:MM:SS``, or a mapping of days, hours, ...):
    a value it refuses is one error now, not when the trainer is built."""
    if max_time is None:
        return
    try:
        Timer(duration=max_time)
    except (MisconfigurationException, ValueError, TypeError) as err:
        raise ConfigError(f"trainer.max_time: {err}") from None


def monitor_loss_without_rouge(config: Namespace) -> None:
    """``model.val_rouge: null`` turns ROUGE-L off, so the best checkpoint, kept by ``val/rougeL`` in the shared base,
    falls back to the lowest ``val/loss`` (said in one line); any other monitor is checked once the run is built
    (``lit_kd.training.preflight``)."""
    if config.get("checkpoint.monitor") == "val/rougeL" and config.get("model.val_rouge") is None:
        config.checkpoint.monitor, config.checkpoint.mode = "val/loss", "min"
        rank_zero_info("lit_kd: model.val_rouge is null (no ROUGE-L): the best checkpoint is kept by val/loss (min)")


def check_strategy_request(config: Namespace) -> None:
    """What the strategy cannot run, one error before anything is built: ``model.teacher_sharding: shard`` without
    FSDP2 over several processes (``DistillModule.setup`` checks it again for runs not built here); a 4-bit QLoRA
    base under FSDP2 (bitsandbytes' packed weights are not sharded by ``fully_shard``)."""
    strategy = strategy_name(config.trainer.get("strategy"))
    if config.get("model.student.peft.quantize") and strategy == ModelParallelStrategy.__name__:
        raise ConfigError(
            "model.student.peft.quantize (QLoRA's 4-bit base) with FSDP2 (configs/strategies/fsdp.yaml): the packed "
            "4-bit weights are not sharded; run it on one device or with trainer.strategy: ddp"
        )
    sharding = config.get("model.teacher_sharding", "replicate")
    if sharding == "replicate":
        return
    check_teacher_sharding(sharding, strategy, process_count(config.trainer))


def quiet_hugging_face_progress_bars() -> None:
    """Turn off the tqdm bars of datasets (tokenizing), transformers (weight loading, GGUF conversion) and the hub;
    lit_kd prints its own one-line summaries (e.g. each split's tokenization)."""
    import datasets
    import huggingface_hub.utils
    import transformers.utils.logging

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def read_run_checkpoint(path: str, strategy: Any) -> dict[str, Any]:
    """A ``--ckpt_path`` as lit_kd wrote it (memory-mapped), or one ``CheckpointError``: missing, truncated or
    not a checkpoint of a lit_kd run. Of a sharded checkpoint (an FSDP2 run's folder) only the metadata is read:
    Lightning's FSDP2 strategy loads the shards (on any number of processes); another strategy cannot."""
    sharded = os.path.isdir(path)
    if sharded and strategy_name(strategy) != ModelParallelStrategy.__name__:
        raise CheckpointError(
            f"--ckpt_path {path} is a sharded checkpoint (the folder an FSDP2 run writes), which only the FSDP2 "
            "strategy reads: add --config configs/strategies/fsdp.yaml with --trainer.devices N (any N); "
            "python -m lit_kd evaluate and export read it on one process"
        )
    checkpoint = read_checkpoint(path, mmap=True, tensors=False)
    if "loops" not in checkpoint or not (sharded or "state_dict" in checkpoint):
        raise CheckpointError(
            f"--ckpt_path {path}: not a checkpoint of a lit_kd run (no training state in it); give a last.ckpt or a "
            "best-*.ckpt that lit_kd wrote"
        )
    return checkpoint


class LitKDCLI(LightningCLI):
    """LightningCLI bound to ``DistillModule`` and ``DollyDataModule`` (use ``build``)."""

    def __init__(
        self,
        args: list[str],
        run: bool = True,
        options: Optional[Callable[[LightningArgumentParser], None]] = None,
        open_teacher_cache: bool = True,
        **kwargs: Any,
    ) -> None:
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")  # Lightning-internal deprecation
        warnings.filterwarnings("ignore", ".*'set_vital' is deprecated.*")  # torchdata-internal deprecation
        warnings.filterwarnings("ignore", ".*LightningCLI's args parameter is intended.*")  # main() passes argv on
        if not sys.stderr.isatty():  # Hugging Face's bars would flood a log with carriage-return updates
            quiet_hugging_face_progress_bars()
        self.options, self.open_cache, self.args = options, open_teacher_cache, list(args)
        self.checkpoint: Optional[dict[str, Any]] = None  # the --ckpt_path file, read (memory-mapped) once
        super().__init__(
            DistillModule,
            DollyDataModule,
            args=with_base(list(args), run),
            run=run,
            seed_everything_default=1234,
            trainer_class=Trainer,
            trainer_defaults={"callbacks": default_callbacks(list(args))},
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False},  # parse errors reach main() and become one line
            **kwargs,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: spec for name, spec in LightningCLI.subcommands().items() if name in RUN_SUBCOMMANDS}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # `checkpoint` keeps the best checkpoint by a monitored metric; `last_checkpoint` keeps the latest
        # state as last.ckpt (for `--ckpt_path last`). Two callbacks because Lightning >= 2.6 writes
        # save_last's last.ckpt only when a top-k checkpoint is saved at the same step.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.auto_insert_metric_name": False,
                # a validation replayed after a resume rewrites the same file instead of adding a "-v1" twin
                "checkpoint.enable_version_counter": False,
                "last_checkpoint.monitor": None,
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.filename": "last",
                "last_checkpoint.enable_version_counter": False,
            }
        )
        # sampled sequences are cut like the data's (on-/mixed-policy), and rendered and stopped like its replies
        parser.link_arguments("data.max_length", "model.max_length")
        parser.link_arguments("data.prompt_format", "model.prompt_format")

        if self.options is not None:
            self.options(parser)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then read a ``--ckpt_path`` file at once: LightningCLI reads its hyperparameters right after parsing,
        so a truncated or foreign checkpoint is refused here, with one clear error, before anything else happens."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        seed = (self.config[subcommand] if subcommand else self.config).get("seed_everything")
        if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"seed_everything must be in [0, {MAX_SEED}] (true: a random one), got {seed}")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and path != "last":
            self.checkpoint = read_run_checkpoint(path, self.config[subcommand].trainer.get("strategy"))

    def before_instantiate_classes(self) -> None:
        """Checks that need no model, before any is loaded: the log directory must be writable, and
        ``--ckpt_path last`` resumes the newest ``last.ckpt`` among this config's runs, in that run's own
        version directory (its first config.yaml is kept; the resumed one is saved beside it)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        fill_data_parallel_size(config.trainer)
        check_strategy_request(config)
        if config.trainer.get("logger") is False:  # Lightning's switch: no logger, so no callback that needs one
            self.trainer_defaults["callbacks"] = default_callbacks(self.args, logger=False)
        monitor_loss_without_rouge(config)
        check_max_time(config.trainer.get("max_time"))
        logger = config.trainer.logger
        init_args = getattr(logger, "init_args", None)
        save_dir = getattr(init_args, "save_dir", None)
        if save_dir is not None:
            ensure_writable_dir(save_dir, "trainer.logger save_dir", create=False)
        if self.subcommand == "fit" and config.get("ckpt_path") == "last" and save_dir is not None:
            runs = Path(save_dir) / (getattr(init_args, "name", None) or "")
            last = newest(runs.glob("version_*/checkpoints/last.ckpt"))
            if last is None:
                raise CheckpointError(f"--ckpt_path last: no last.ckpt under {runs}/version_*/checkpoints to resume")
            config.ckpt_path = str(last)
            self.checkpoint = read_run_checkpoint(config.ckpt_path, config.trainer.get("strategy"))
            init_args.version = int(last.parents[1].name.removeprefix("version_"))
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"config-resumed-{stamp}.yaml"}

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's own checks of the trainer's settings (an accelerator, strategy or device count it does not
        take) as one error; its messages name the setting."""
        try:
            return super().instantiate_trainer(**kwargs)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"trainer: {err}") from None

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        optimizer = check_optimizer_factories(self.model)  # its class names the LR monitor's metric: lr-AdamW
        learning_rate = any(isinstance(c, LearningRateMonitor) for c in self.trainer.callbacks)
        check_monitors(self.trainer.callbacks, self.model, f"lr-{optimizer}" if learning_rate else None)
        warn_unanchored_student_scale(self.model)
        self.datamodule.connect(self.model.tokenizer, self.model.teacher_tokenizer)
        records = self.datamodule.load_split_records()  # bad data files fail here, before any trainer or model work
        self.check_checkpoint_student()
        if self.model.teacher_cache_path is not None and self.open_cache:
            self.open_teacher_cache(records)

    def open_teacher_cache(self, records: dict[str, list[dict]]) -> None:
        """Open ``model.teacher_cache`` once, check it was built for this teacher, tokenizer and data (a missing,
        damaged or foreign cache is refused now, before any run directory is written) and hand it to the module."""
        module = self.model
        clean_after_interrupted_builds(module.teacher_cache_path)
        cache = TeacherCache.open(module.teacher_cache_path)
        data = self.datamodule
        key = cache_key(module.teacher_config, module.tokenizer, records, data.max_length, data.fingerprints(),
                        module.teacher_tokenizer)  # fmt: skip
        cache.check(key, command_hint=" --config <this config> --out " + str(module.teacher_cache_path))
        module.teacher_cache = cache

    def check_checkpoint_student(self) -> None:
        """A ``--ckpt_path`` saved for another student is refused now, from its stored hyperparameters,
        before any weights load (``DistillModule.on_load_checkpoint`` checks the tensors themselves)."""
        if self.checkpoint is None:
            return
        path = (self.config[self.subcommand] if self.subcommand else self.config).get("ckpt_path")
        stored = checkpoint_hparams(self.checkpoint).get("student")
        if stored is None:
            return
        stored = StudentConfig.architecture_of(stored)
        configured = self.model.student_config.architecture()
        differing = [k for k in configured if stored.get(k) != configured[k]]
        if differing:
            differences = ", ".join(f"{k}: {stored.get(k)!r} vs {configured[k]!r}" for k in differing)
            raise CheckpointError(
                f"{path} was saved from another student architecture than model.student ({differences})"
            )
