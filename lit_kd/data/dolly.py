"""``DollyDataModule``: databricks-dolly-15k (or any file in its layout) for distillation.

Two forms, exactly one per config::

    data:                                   # the raw release: one source, split by a seed
      raw: databricks/databricks-dolly-15k  # hub name, or a local .jsonl/.jsonl.gz/.json/.parquet
      split_sizes: [14000, 500, 500]        # train / val / test; rows beyond their sum are not used
      split_seed: 1234
    data:                                   # MiniLLM/DistiLLM-processed splits, used as given
      train: ../shared/data/minillm/dolly/train.jsonl.gz
      val: ../shared/data/minillm/dolly/dev.jsonl
      test: ../shared/data/minillm/dolly/valid.jsonl   # MiniLLM calls its test file valid.jsonl

Rows may be instructions (Dolly, MiniLLM, ...) or conversations (``messages`` or ShareGPT ``conversations``:
``lit_kd.data.conversation``); ``prompt_format`` renders them (``lit_kd.data.rendering``): ``dolly`` (MiniLLM's
template, the paper's) or ``chat_template`` (each model's own chat template, the assistant's tokens supervised).
The tokenizer comes from the model (``connect``; LightningCLI calls it), so it is named once.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from lit_kd.data.collate import IndexedExamples, PadCollator
from lit_kd.data.records import DataFormatError, load_records
from lit_kd.data.rendering import PROMPT_FORMATS, SUPERVISED_TURNS, Rendering, pair_renderings
from lit_kd.data.sampler import EpochShuffleSampler
from lit_kd.data.tokenize import DataFingerprints, records_fingerprint, tokenizer_fingerprint
from lit_kd.data.tokenized import TokenizedSplit, tokenize_records
from lit_kd.errors import ConfigError

SPLITS = ("train", "val", "test")
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def split_records(
    records: list[dict[str, Any]], sizes: tuple[int, int, int], seed: int, source: str = "data"
) -> dict[str, list[dict[str, Any]]]:
    """Shuffle with ``seed`` (a fixed permutation, the same on every machine) and cut train/val/test.

    Rows after ``sum(sizes)`` in the shuffled order are left out (15,011 Dolly rows → 11 unused).
    """
    needed = sum(sizes)
    if len(records) < needed:
        raise DataFormatError(
            f"{source}: {len(records)} rows, but split_sizes {list(sizes)} need {needed}; lower split_sizes"
        )
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    bounds = [0, sizes[0], sizes[0] + sizes[1], needed]
    return {name: [records[i] for i in order[bounds[k] : bounds[k + 1]]] for k, name in enumerate(SPLITS)}


def read_option(option: str, source: str, split: str, single_exchange: bool) -> list[dict[str, Any]]:
    """``load_records`` of ``data.<option>``: its errors (a missing file, a bad line) name the option."""
    try:
        return load_records(source, split=split, single_exchange=single_exchange)
    except DataFormatError as err:
        raise DataFormatError(f"data.{option}: {err}") from None


class DollyDataModule(L.LightningDataModule):
    """Instruction data in Dolly/MiniLLM layout → padded batches of ``input_ids``, ``attention_mask``, ``labels``."""

    def __init__(
        self,
        raw: Optional[str] = None,
        train: Optional[str] = None,
        val: Optional[str] = None,
        test: Optional[str] = None,
        split_sizes: tuple[int, int, int] = (14000, 500, 500),
        split_seed: int = 1234,
        hub_split: str = "train",
        max_length: int = 512,
        batch_size: int = 8,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        cache_dir: Optional[str] = None,
        shuffle_seed: Optional[int] = None,
        max_examples: Optional[dict[str, int]] = None,
        prompt_format: Literal["dolly", "chat_template"] = "dolly",
        supervised_turns: Literal["all", "last"] = "all",
    ) -> None:
        """
        Args:
            raw: One source (hub dataset name or local file) split by ``split_seed`` into ``split_sizes``.
            train: Processed training split (local file or hub name), used as given.
            val: Processed validation split.
            test: Processed test split.
            split_sizes: Train / validation / test sizes for ``raw``.
            split_seed: Seed of the permutation that splits ``raw``.
            hub_split: Split of a hub dataset ``raw`` to read (``name@split`` works too). Processed hub
                sources are read as their train / validation / test splits unless given as ``name@split``.
            max_length: Maximum tokens per sequence (prompt + response + EOS); see the truncation rule.
            batch_size: Training batch size (per device).
            eval_batch_size: Validation/test batch size (default: ``batch_size``).
            num_workers: DataLoader worker processes.
            cache_dir: Where tokenized splits are cached as Arrow files (default: the datasets cache).
            max_examples: Use only the first N examples of a split, e.g. ``{train: 1000, val: 40}``: quick runs
                and small teacher caches.
            shuffle_seed: Seed of the training order (epoch e is shuffled with ``shuffle_seed + e``); default:
                the run's ``seed_everything``.
            prompt_format: How records become text (``lit_kd.data.rendering``): ``dolly``, MiniLLM's instruction
                template (the paper's), or ``chat_template``, each model's own chat template (conversations, several
                turns; the assistant's tokens supervised). Validation ROUGE-L, ``evaluate``, sampling and the teacher
                cache follow it.
            supervised_turns: Under ``chat_template``: the loss on ``all`` assistant turns or on the ``last`` one.
        """
        super().__init__()
        if raw is not None and any(s is not None for s in (train, val, test)):
            raise ConfigError("data: give either `raw` (split by seed) or `train`/`val`/`test` files, not both")
        if raw is None and train is None and val is None and test is None:
            raise ConfigError(
                "data: no source; set `raw` (e.g. databricks/databricks-dolly-15k) or `train`/`val`/`test`"
            )
        if len(split_sizes) != 3 or any(int(s) < 1 for s in split_sizes):
            raise ConfigError(f"data.split_sizes must be three positive integers, got {split_sizes}")
        if max_length < 2:
            raise ConfigError(f"data.max_length must be at least 2, got {max_length}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ConfigError("data.batch_size and data.eval_batch_size must be positive")
        if prompt_format not in PROMPT_FORMATS or supervised_turns not in SUPERVISED_TURNS:
            raise ConfigError(
                f"data.prompt_format must be one of {', '.join(PROMPT_FORMATS)} and data.supervised_turns one of "
                f"{', '.join(SUPERVISED_TURNS)}, got {prompt_format!r} and {supervised_turns!r}"
            )
        self.prompt_format, self.supervised_turns = prompt_format, supervised_turns
        self.raw, self.sources = raw, {"train": train, "val": val, "test": test}
        self.split_sizes = tuple(int(s) for s in split_sizes)
        self.split_seed = split_seed
        self.hub_split = hub_split
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.shuffle_seed = shuffle_seed
        self.max_examples = dict(max_examples or {})
        for name, count in self.max_examples.items():
            if name not in SPLITS or not isinstance(count, int) or count < 1:
                raise ConfigError(
                    f"data.max_examples: expected {{train|val|test: a positive count}}, got {name}: {count}"
                )
        self.tokenizer: Optional[PreTrainedTokenizerBase] = None
        self.teacher_tokenizer: Optional[PreTrainedTokenizerBase] = None
        self.rendering: Optional[Rendering] = None
        self.teacher_rendering: Optional[Rendering] = None
        self.data_fingerprints: Optional[DataFingerprints] = None
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.splits: dict[str, TokenizedSplit] = {}

    def connect(
        self, tokenizer: PreTrainedTokenizerBase, teacher_tokenizer: Optional[PreTrainedTokenizerBase] = None
    ) -> None:
        """Give the data module the model's tokenizer (LightningCLI does this after instantiation), and the
        teacher's when it has one of its own (``model.cross_tokenizer``: examples then hold both tokenizations, each
        rendered with its own template under ``chat_template``). A tokenizer the prompt format cannot serve (no chat
        template) is refused here, before any data is read."""
        self.tokenizer, self.teacher_tokenizer = tokenizer, teacher_tokenizer
        self.rendering, self.teacher_rendering = pair_renderings(
            tokenizer, teacher_tokenizer, self.prompt_format, self.supervised_turns
        )
        self.data_fingerprints = None
        self.splits = {}

    def fingerprints(self) -> DataFingerprints:
        """The tokenizer's and each split's content hashes, computed once (after ``connect``)."""
        if self.tokenizer is None:
            raise RuntimeError("DollyDataModule has no tokenizer: call connect(tokenizer) first")
        if self.data_fingerprints is None:
            records = self.load_split_records()
            splits = {name: records_fingerprint(rows) for name, rows in records.items()}
            rendering = self.rendering.fingerprint
            if self.teacher_rendering is not None:
                rendering += "+" + self.teacher_rendering.fingerprint
            self.data_fingerprints = DataFingerprints(tokenizer_fingerprint(self.tokenizer), splits, rendering)
        return self.data_fingerprints

    def load_split_records(self) -> dict[str, list[dict[str, Any]]]:
        """Validated records of every available split (no tokenizer needed)."""
        if not self.records:
            single = self.prompt_format == "dolly"  # a conversation of several turns needs a chat template
            if self.raw is not None:
                rows = read_option("raw", self.raw, self.hub_split, single)
                records = split_records(rows, self.split_sizes, self.split_seed, source=self.raw)
                unused = len(rows) - sum(self.split_sizes)
                if unused:
                    rank_zero_info(f"{self.raw}: {unused} of {len(rows)} rows are beyond split_sizes and not used")
            else:  # a hub dataset's splits are read as train / validation / test (or name@split)
                records = {
                    name: read_option(name, source, HUB_SPLITS[name], single)
                    for name, source in self.sources.items()
                    if source is not None
                }
            for name, count in self.max_examples.items():
                if name in records:
                    records[name] = records[name][:count]
            self.records = records
        return self.records

    def setup(self, stage: Optional[str] = None) -> None:
        if self.tokenizer is None:
            raise RuntimeError("DollyDataModule has no tokenizer: call connect(tokenizer) before setup")
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", SPLITS)
        records = self.load_split_records()
        for name in needed:
            if name not in records:
                raise ConfigError(f"data: stage {stage!r} needs a {name!r} split; set `data.{name}`")
        hashes = self.fingerprints()
        for name in records:
            if name in self.splits:
                continue
            split = tokenize_records(
                records[name], self.rendering, self.max_length, self.cache_dir, desc=f"Tokenizing {name}",
                fingerprints=(hashes.splits[name], hashes.tokenizer), teacher_rendering=self.teacher_rendering,
            )  # fmt: skip
            if len(split.dataset) == 0:
                raise DataFormatError(f"{name} split: every example was dropped (prompts longer than max_length)")
            if split.dropped or split.truncated or split.shortened:
                rank_zero_warn(split.summary(name))
            else:
                rank_zero_info(split.summary(name))
            self.splits[name] = split

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if name not in self.splits:
            raise ConfigError(f"data: no {name!r} split is configured (set `data.{name}` or `data.raw`)")
        teacher_pad = self.teacher_tokenizer.pad_token_id if self.teacher_tokenizer is not None else None
        dataset = IndexedExamples(self.splits[name].dataset)
        collate = PadCollator(self.tokenizer.pad_token_id, teacher_pad)
        seed = self.shuffle_seed if self.shuffle_seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        # a loader's own generator: each new iterator draws its workers' base seed from it, not from the global
        # RNG, so building loaders (a resumed run builds them at another moment) never shifts the RNG stream that
        # dropout and student sampling draw from
        generator = torch.Generator().manual_seed(seed)
        if not shuffle:
            return DataLoader(
                dataset, batch_size=self.eval_batch_size, num_workers=self.num_workers, collate_fn=collate,
                generator=generator,
            )  # fmt: skip
        # the order of epoch e is a function of (seed, e), sharded over the processes; StatefulDataLoader saves
        # the position within the epoch in Lightning checkpoints, so a killed run resumes on the next batch
        trainer = self.trainer
        sampler = EpochShuffleSampler(
            dataset,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            shuffle=True,
            seed=seed,
        )
        return StatefulDataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers, collate_fn=collate,
            generator=generator,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
