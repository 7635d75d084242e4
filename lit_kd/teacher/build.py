"""Building a teacher cache: run the teacher once over the splits of a fit configuration's data and store its final
hidden states at the response positions (``python -m lit_kd cache-teacher``; the demo and sweeps build theirs
here too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from lit_kd.data.collate import IndexedExamples, PadCollator
from lit_kd.data.tokenize import IGNORE_INDEX
from lit_kd.errors import CacheError, ConfigError, LockedError
from lit_kd.models import ModelConfig, load_model
from lit_kd.models.head import final_hidden_states, output_head, verify_head
from lit_kd.teacher.cache import CACHE_DTYPES, MANIFEST, TeacherCache, build_teacher_cache, cache_key, describe_size
from lit_kd.utils.devices import resolve_device
from lit_kd.utils.io import remove_stale_temporaries
from lit_kd.utils.lock import DirectoryLock
from lit_kd.utils.progress import split_progress

__all__ = ["CACHE_DTYPES", "split_sizes", "write_teacher_cache"]


def split_sizes(dataset: Any) -> tuple[int, int]:
    """(examples, response rows) of a tokenized split: the rows a cache stores for it."""
    labels = dataset["labels"]
    return len(labels), sum(sum(1 for label in row[1:] if label != IGNORE_INDEX) for row in labels)


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
    ``target``; an existing cache for the same key is reused, any other content is refused. One build per
    ``target`` at a time (``build_lock``); what an interrupted build left is removed first."""
    target = Path(target)
    with build_lock(target).acquire() as lock:
        if lock.took_over:
            print(f"took over the build lock of {target} from pid {lock.took_over.get('pid')} (no longer running)")
        remove_interrupted_builds(target)
        return _write_teacher_cache(teacher_config, tokenizer, data, target, dtype, batch_size, device, splits)


def build_lock(target: Path) -> DirectoryLock:
    """The lock a build of the cache ``target`` holds (``.<name>.build.lock`` beside it, naming its owner)."""
    return DirectoryLock(target.parent / f".{target.name}.build.lock", "teacher cache", subject=target)


def remove_interrupted_builds(target: Path) -> list[Path]:
    """Remove the temporary folders that killed builds of ``target`` left beside it. Call it holding
    ``build_lock(target)``: no build of ``target`` is then running, so every such folder is an orphan."""
    removed = remove_stale_temporaries(target.parent, of=target.name)
    for entry in removed:
        print(f"removed {entry}, the temporary folder of a teacher-cache build that was interrupted")
    return removed


def clean_after_interrupted_builds(target: str | Path) -> list[Path]:
    """For a run that reads the cache ``target``: remove what killed builds left, unless a build is running."""
    target = Path(target)
    try:
        with build_lock(target).acquire():
            return remove_interrupted_builds(target)
    except LockedError:
        return []  # a build is running: its temporary folder is not an orphan
    except OSError:
        return []  # a read-only folder (a shared cache): nothing can have been left there by this user


def _write_teacher_cache(
    teacher_config: ModelConfig,
    tokenizer: Any,
    data: Any,
    target: Path,
    dtype: str,
    batch_size: Optional[int],
    device: str,
    splits: tuple[str, ...],
) -> Path:
    records = data.load_split_records()
    unknown = [name for name in splits if name not in ("train", "val", "test")]
    if unknown or not splits:
        raise ConfigError(f"--splits: choose among train, val, test; got {','.join(splits) or 'nothing'}")
    missing = [name for name in splits if name not in records]
    if missing:
        raise ConfigError(f"--splits: the config's data has no {', '.join(missing)} split")
    chosen = {name: records[name] for name in splits}
    key = cache_key(teacher_config, tokenizer, chosen, data.max_length, data.fingerprints())
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
    device = resolve_device(device)
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
