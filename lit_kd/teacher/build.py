"""Building a teacher cache: run the teacher once over the splits of a fit configuration's data and store its final
hidden states at the response positions (``python -m lit_kd cache-teacher``; the demo and sweeps build theirs
here too)."""

from __future__ import annotations

import socket
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from lightning.fabric import Fabric
from torch.utils.data import DataLoader, Subset

from lit_kd.data.collate import IndexedExamples, PadCollator, teacher_view
from lit_kd.data.tokenize import IGNORE_INDEX
from lit_kd.errors import CacheError, ConfigError, LitKDError, LockedError
from lit_kd.models import ModelConfig, load_model
from lit_kd.models.head import OutputHead, final_hidden_states, output_head, verify_head
from lit_kd.teacher.cache import (
    CACHE_DTYPES,
    MANIFEST,
    CacheKey,
    TeacherCache,
    cache_bytes,
    cache_key,
    check_dtype,
    describe_size,
    write_head,
    write_manifest,
    write_split,
)
from lit_kd.utils.devices import resolve_device
from lit_kd.utils.io import atomic_directory, remove_stale_temporaries
from lit_kd.utils.lock import DirectoryLock
from lit_kd.utils.progress import split_progress

__all__ = ["CACHE_DTYPES", "build_teacher_cache", "split_sizes", "write_teacher_cache"]


def split_sizes(dataset: Any) -> tuple[int, int]:
    """(examples, response rows) of a tokenized split: the rows a cache stores for it (the teacher's own rows in a
    cross-tokenizer split)."""
    labels = dataset["teacher_labels" if "teacher_labels" in dataset.column_names else "labels"]
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
    shard_bytes: int = 1 << 30,
    fabric: Optional[Fabric] = None,
) -> Path:
    """Run the teacher over the ``splits`` of ``data`` (a connected ``DollyDataModule``) and write the cache to
    ``target``; an existing cache for the same key is reused, any other content is refused. One build per
    ``target`` at a time (``build_lock``); what an interrupted build left is removed first.

    With ``fabric`` (launched on several processes: ``cache-teacher --trainer.devices N``, nodes too), each
    process runs the teacher on its own device over a contiguous share of each split's batches (the batches of
    one process, so the cache is tensor-equal to a one-process cache) and writes its shard files into rank 0's
    temporary folder. Rank 0 holds the lock, checks that the shares cover every split exactly, writes the
    manifest and renames the folder into place only then: a process killed before that leaves no cache, only a
    temporary folder that the next build (or a run reading ``target``) removes."""
    target = Path(target)
    lead = fabric is None or fabric.global_rank == 0
    with ExitStack() as held:  # rank 0: the build lock, then the temporary folder

        def prepare() -> Optional[CacheKey]:
            lock = held.enter_context(build_lock(target).acquire())
            if lock.took_over:
                print(f"took over the build lock of {target} from pid {lock.took_over.get('pid')} (no longer running)")
            remove_interrupted_builds(target)
            return cache_to_build(teacher_config, tokenizer, data, target, splits)

        key = decided_by_rank_zero(fabric, prepare)
        if key is None:
            return target
        with fabric.rank_zero_first() if fabric is not None else nullcontext():
            data.setup("fit")  # tokenized once by rank 0 (the others read its cached Arrow files)
        sizes = {name: split_sizes(data.splits[name].dataset) for name in splits}
        device = fabric.device if fabric is not None else resolve_device(device)
        teacher = load_model(teacher_config, "teacher").to(device).eval().requires_grad_(False)
        verify_head(teacher, "teacher")  # the cached hidden states must give the teacher's logits exactly
        head = output_head(teacher)
        rank, processes = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
        size = batch_size or data.eval_batch_size
        shares = {name: share_of_batches(sizes[name][0], size, rank, processes) for name in splits}
        if lead:
            sharing = f", {processes} processes" if processes > 1 else ""
            print(f"teacher cache {target}: {describe_size(sizes, head.hidden_size, dtype)}{sharing}", flush=True)
        own_tokenizer = getattr(data, "teacher_tokenizer", None)  # a cross-tokenizer pair: the teacher's tokens
        collate = PadCollator(tokenizer.pad_token_id, own_tokenizer.pad_token_id if own_tokenizer else None)

        def batches(name: str) -> DataLoader:
            examples = Subset(IndexedExamples(data.splits[name].dataset), shares[name])
            return DataLoader(examples, batch_size=size, collate_fn=lambda rows: teacher_view(collate(rows)))

        def hidden(batch: dict[str, Any]) -> torch.Tensor:
            return final_hidden_states(teacher, batch["input_ids"].to(device), batch["attention_mask"].to(device))

        label = "teacher cache" if processes == 1 else f"teacher cache (rank 0's share of {processes})"
        totals = {name: len(share) for name, share in shares.items()}
        with split_progress(label, totals) if lead else nullcontext(None) as update:
            own = {name: (batches(name), shares[name].start) for name in splits}
            write_shares(fabric, target, key, head, own, sizes, hidden, dtype, shard_bytes, update)
    if fabric is not None:
        fabric.barrier()  # every process returns once rank 0 has renamed the cache into place
    if lead:
        print(f"wrote the teacher cache {target}; train with --model.teacher_cache {target}")
    return target


def build_teacher_cache(
    out: str | Path,
    key: CacheKey,
    head: OutputHead,
    batches: dict[str, Callable[[], Iterable[dict[str, torch.Tensor]]]],
    sizes: dict[str, tuple[int, int]],
    hidden_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    dtype: str = "float32",
    shard_bytes: int = 1 << 30,
    progress: Optional[Callable[[str, int], None]] = None,
) -> Path:
    """Write a cache in one process: for each split, ``batches[split]()`` yields its examples in order (padded
    batches with ``labels``), ``hidden_fn(batch)`` returns the teacher's final hidden states ``[B, T, d]``; the rows
    at the response positions are stored. ``sizes[split] = (examples, rows)`` lets the size be checked first.
    ``progress(split, examples_done)`` is called after each batch. (``write_teacher_cache`` runs a teacher over a
    data module's splits, on one process or several, through the same ``write_shares``.)"""
    out = Path(out)
    own = {split: (make(), 0) for split, make in batches.items()}
    write_shares(None, out, key, head, own, sizes, hidden_fn, dtype, shard_bytes, progress)
    return out


def write_shares(
    fabric: Optional[Fabric],
    target: Path,
    key: CacheKey,
    head: OutputHead,
    own: dict[str, tuple[Iterable[dict[str, Any]], int]],
    sizes: dict[str, tuple[int, int]],
    hidden: Callable[[dict[str, Any]], torch.Tensor],
    dtype: str,
    shard_bytes: int,
    progress: Optional[Callable[[str, int], None]],
) -> None:
    """Each process writes its ``own[split]`` = (batches, first example) into rank 0's temporary folder; rank 0
    gathers every process's shard entries, writes the head and the manifest, and renames the folder to ``target``
    (or removes it if anything failed on rank 0). Without ``fabric`` one process writes every share."""
    check_dtype(dtype)
    rank = fabric.global_rank if fabric is not None else 0
    with ExitStack() as made:  # rank 0: the temporary folder (made there, so that its errors reach every process)
        folder = Path(decided_by_rank_zero(
            fabric, lambda: str(made.enter_context(atomic_directory(target, cache_bytes(head, sizes, dtype))))
        ))  # fmt: skip
        if not folder.is_dir():
            raise CacheError(
                f"rank {rank} on {socket.gethostname()} cannot see {folder}, the cache's temporary "
                "folder that rank 0 made: with several nodes, --out must be on a filesystem that every node shares"
            )
        mine = {
            name: write_split(folder, name, batches, hidden, dtype, shard_bytes, first, progress)
            for name, (batches, first) in own.items()
        }
        everyone: list[Any] = [mine]
        if fabric is not None:
            everyone = [None] * fabric.world_size
            try:
                torch.distributed.all_gather_object(everyone, mine)
            except RuntimeError as err:  # torch's DistError: a process died (killed, out of memory, ...)
                raise CacheError(
                    f"teacher cache {target}: a process of the build stopped before every share was written "
                    f"({str(err).splitlines()[0]}); no cache was made, run the command again"
                ) from None
        if rank == 0:
            shards = {name: [entry for share in everyone for entry in share[name]] for name in own}
            write_manifest(folder, key, dtype, head.hidden_size, write_head(folder, head), shards, sizes)


def decided_by_rank_zero(fabric: Optional[Fabric], decide: Callable[[], Any]) -> Any:
    """``decide()`` run on rank 0 alone (in every process when there is no ``fabric``); its result, or the
    ``LitKDError`` it raised, is every process's, so all of them stop with the same error instead of waiting."""
    if fabric is None:
        return decide()
    outcome: Any = None
    if fabric.global_rank == 0:
        try:
            outcome = (decide(), None)
        except LitKDError as err:
            outcome = (None, err)
    result, error = fabric.broadcast(outcome, src=0)
    if error is not None:
        raise error
    return result


def share_of_batches(examples: int, batch_size: int, rank: int, processes: int) -> range:
    """The examples of process ``rank``: a contiguous run of whole batches (``processes`` near-equal runs)."""
    batches = -(-examples // batch_size)
    first, last = rank * batches // processes, (rank + 1) * batches // processes
    return range(min(first * batch_size, examples), min(last * batch_size, examples))


def cache_to_build(
    teacher_config: ModelConfig, tokenizer: Any, data: Any, target: Path, splits: tuple[str, ...]
) -> Optional[CacheKey]:
    """The key of the cache to build at ``target``, or None when a cache with that key and splits is there;
    one error when the splits are not in the data or ``target`` holds anything else (which is left as it is)."""
    records = data.load_split_records()
    unknown = [name for name in splits if name not in ("train", "val", "test")]
    if unknown or not splits:
        raise ConfigError(f"--splits: choose among train, val, test; got {','.join(splits) or 'nothing'}")
    missing = [name for name in splits if name not in records]
    if missing:
        raise ConfigError(f"--splits: the config's data has no {', '.join(missing)} split")
    chosen = {name: records[name] for name in splits}
    teacher_tokenizer = getattr(data, "teacher_tokenizer", None)
    key = cache_key(teacher_config, tokenizer, chosen, data.max_length, data.fingerprints(), teacher_tokenizer)
    if not target.exists() or not any(target.iterdir()):
        return key
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
    return None


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
