"""The teacher cache: the frozen teacher's final hidden states at every response position of the train,
validation and test examples, computed once, so training recomputes the teacher's logits exactly with its
LM head (one ``[rows, d] × [d, V]`` matmul per chunk) instead of a forward pass through its body.

Layout of a cache directory (written to a temporary sibling, renamed into place when complete)::

    manifest.json                  format, key (what the cache was built from), dtype, hidden size, shards, and
                                   each file's size and XXH3-128 content digest (verified when a run opens it)
    head.safetensors               the teacher's LM head: weight [V, d] (+ bias), in the teacher's dtype
    <split>-<first>.safetensors    hidden [rows, d] (float32 or bfloat16) and offsets [examples + 1] of the
                                   consecutive examples from example <first> on

Storage is safetensors, read with ``safe_open``: memory-mapped, so a batch reads exactly the rows of its
examples (no copy of the file in memory, pages shared between processes), with native bfloat16 (Arrow, the
``datasets`` format, has no bfloat16), and a library transformers already depends on. Shards (about
``shard_bytes`` each) keep the memory of the writer bounded.

The cache is keyed by the teacher's identity, the tokenizer, the rendering (``data.prompt_format``, and under
``chat_template`` the template itself and the supervised turns: ``lit_kd.data.rendering``), ``max_length`` and
each split's content: a cache built for anything else is refused with the fields that differ.
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor

from lit_kd.data.rendering import make_rendering
from lit_kd.data.tokenize import DataFingerprints, records_fingerprint, response_mask, tokenizer_fingerprint
from lit_kd.errors import CacheError
from lit_kd.models.config import ModelConfig
from lit_kd.models.head import OutputHead
from lit_kd.models.loading import cache_root, gguf_location, resolve_path
from lit_kd.utils.digests import DIGEST_NAME, bytes_digest, file_digest, remembered_file_digest
from lit_kd.utils.io import human_bytes

CACHE_FORMAT = 2  # 2: every file's content digest in the manifest
MANIFEST = "manifest.json"
HEAD_FILE = "head.safetensors"
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MANIFEST_BYTES = 1 << 16
"""A bound on the manifest and the safetensors headers of a cache, for the space a build needs."""


def weights_digest(path: str) -> str:
    """The digest of every byte of a teacher's file, remembered under ``$LIT_KD_CACHE/file_digests.json`` by path,
    size, modification time and inode (a file rewritten in place, as merging a LoRA into it does, is hashed again)."""
    return remembered_file_digest(path, cache_root() / "file_digests.json")


def teacher_identity(config: ModelConfig) -> dict[str, Any]:
    """What identifies a teacher without loading it: its source, revision, dtype, and for local files the
    digests of its config and weights files (a retrained teacher at the same path is another teacher), and of the
    files of an adapter merged into it."""
    identity: dict[str, Any] = {"source": config.describe(), "dtype": config.dtype}
    if config.config is not None:
        identity.update(config=config.config, init_seed=config.init_seed)
    elif config.gguf_file is not None:
        directory, filename = gguf_location(config, "teacher")
        identity["files"] = {filename: weights_digest(os.path.join(directory, filename))}
    else:
        path = resolve_path(config.path)
        identity["revision"] = config.revision
        if os.path.isdir(path):
            names = sorted(
                n for n in os.listdir(path) if n == "config.json" or n.endswith((".safetensors", ".bin", ".pt"))
            )
            identity["files"] = {n: weights_digest(os.path.join(path, n)) for n in names}
    if config.adapter is not None:  # the adapter merged into it: every byte of its files
        directory = resolve_path(config.adapter)
        names = sorted(n for n in os.listdir(directory) if n.endswith((".json", ".safetensors", ".bin")))
        identity["adapter"] = {n: weights_digest(os.path.join(directory, n)) for n in names}
    return identity


@dataclass
class CacheKey:
    """Everything a cache's content depends on; two keys that differ name the fields that differ."""

    teacher: dict[str, Any]
    tokenizer: str
    template: str
    max_length: int
    splits: dict[str, str] = field(default_factory=dict)
    """split name → the content fingerprint of its records"""

    def differences(self, cached: "CacheKey") -> list[str]:
        """The fields in which ``cached`` (a cache's key) does not serve this run."""
        found = []
        if cached.teacher != self.teacher:
            same = cached.teacher.get("source") == self.teacher.get("source")
            found.append(
                f"teacher (cache: {cached.teacher.get('source')}, this run: {self.teacher.get('source')}"
                + (": the same source with other weights or settings)" if same else ")")
            )
        if cached.tokenizer != self.tokenizer:
            pair = ("a pair" if "+" in cached.tokenizer else "one") + " of tokenizers"
            found.append(f"tokenizer (the cache was built for {pair}: other tokenizers than this run's)")
        if cached.template != self.template:
            found.append("prompt format (data.prompt_format, or the chat template and supervised turns)")
        if cached.max_length != self.max_length:
            found.append(f"max_length (cache: {cached.max_length}, this run: {self.max_length})")
        for split, fingerprint in self.splits.items():  # a split the cache lacks is an error only when read
            if split in cached.splits and cached.splits[split] != fingerprint:
                found.append(f"{split} data (another file or content)")
        return found



def cache_key(
    teacher: ModelConfig,
    tokenizer: Any,
    records: dict[str, list[dict]],
    max_length: int,
    fingerprints: Optional[DataFingerprints] = None,
    teacher_tokenizer: Any = None,
) -> CacheKey:
    """The key of a cache for this teacher, tokenizer and data (the records of each split, ``max_length``);
    ``fingerprints``: the tokenizer's, the splits' and the rendering's hashes when already computed (without them:
    the Dolly template). A ``teacher_tokenizer`` of its
    own (``model.cross_tokenizer``): the cache holds the teacher's rows of its own tokenization, and which examples
    and rows there are depends on both tokenizers, so the key names both (``student+teacher``)."""
    if fingerprints is None:
        fingerprints = DataFingerprints(
            tokenizer_fingerprint(tokenizer),
            {name: records_fingerprint(rows) for name, rows in records.items()},
            make_rendering(tokenizer).fingerprint,
        )
    tokenizers = fingerprints.tokenizer[:16]
    if teacher_tokenizer is not None:
        tokenizers += "+" + tokenizer_fingerprint(teacher_tokenizer)[:16]
    return CacheKey(
        teacher=teacher_identity(teacher),
        tokenizer=tokenizers,
        template=fingerprints.rendering,

        max_length=int(max_length),
        splits={name: fingerprints.splits[name][:16] for name in records},
    )


# -- reading ----------------------------------------------------------------------------------------


@dataclass
class _Shard:
    file: str
    first_example: int
    examples: int
    rows: int
    bytes: int
    digest: str


def write_safetensors(tensors: dict[str, Tensor], path: Path) -> tuple[int, str]:
    """Write ``tensors`` as a safetensors file; return its size and content digest, computed on the bytes as they
    are written (no second pass over the file)."""
    from safetensors.torch import save

    data = save(tensors)
    with open(path, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    return len(data), bytes_digest(data)


def verify_file(cache: Path, name: str, size: int, digest: str) -> None:
    """``CacheError`` naming the file unless it has the size and content digest the manifest records."""
    file = cache / name
    if not file.is_file():
        raise CacheError(f"teacher cache {cache}: {name} is missing; rebuild the cache")
    if file.stat().st_size != size:
        raise CacheError(
            f"teacher cache {cache}: {name} is truncated or altered ({file.stat().st_size} bytes, the manifest says "
            f"{size}); rebuild the cache"
        )
    if file_digest(file) != digest:
        raise CacheError(
            f"teacher cache {cache}: {name} was changed after it was written (its {DIGEST_NAME} digest differs from "
            "the manifest's); rebuild the cache (python -m lit_kd cache-teacher --config <fit config> --out "
            f"{cache}) or point model.teacher_cache elsewhere"
        )


class TeacherCache:
    """A cache directory opened for reading (memory-mapped). ``rows(split, indices)`` returns the hidden rows
    of those examples, concatenated in order: the rows of a batch at its response positions."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        from safetensors import safe_open

        self.path = path
        self.key = CacheKey(**manifest["key"])
        self.dtype = manifest["dtype"]
        self.hidden_size = int(manifest["hidden_size"])
        self.shards = {s: [_Shard(**x) for x in shards] for s, shards in manifest["splits"].items()}
        self._starts = {s: [x.first_example for x in shards] for s, shards in self.shards.items()}
        self._handles: dict[str, Any] = {}
        self._offsets: dict[str, Tensor] = {}
        head_file = manifest["head"]
        verify_file(path, HEAD_FILE, head_file["bytes"], head_file["digest"])
        for split, shards in self.shards.items():
            for shard in shards:
                file = path / shard.file
                verify_file(path, shard.file, shard.bytes, shard.digest)  # every byte: reading it costs as much
                try:
                    handle = safe_open(str(file), framework="pt")
                    offsets = handle.get_tensor("offsets")
                except Exception as err:  # safetensors raises its own error types for a corrupt file
                    raise CacheError(f"teacher cache {path}: {shard.file} is not readable ({err})") from None
                if offsets.numel() != shard.examples + 1 or int(offsets[-1]) != shard.rows:
                    raise CacheError(f"teacher cache {path}: {shard.file} does not match the manifest; rebuild it")
                self._handles[shard.file], self._offsets[shard.file] = handle, offsets
        try:
            head = safe_open(str(path / HEAD_FILE), framework="pt")
            self.head = OutputHead(
                head.get_tensor("weight"), head.get_tensor("bias") if "bias" in head.keys() else None
            )
        except Exception as err:
            raise CacheError(f"teacher cache {path}: {HEAD_FILE} is missing or not readable ({err})") from None

    @classmethod
    def open(cls, path: str | os.PathLike) -> "TeacherCache":
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise CacheError(
                f"teacher cache not found: {path} (no {MANIFEST}; model.teacher_cache names it); build it with "
                "`python -m lit_kd cache-teacher --config <fit config>`"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError as err:
            raise CacheError(f"teacher cache {path}: {MANIFEST} is not valid JSON ({err})") from None
        if manifest.get("format") != CACHE_FORMAT:
            raise CacheError(
                f"teacher cache {path} has format {manifest.get('format')}, this lit_kd reads format {CACHE_FORMAT}; "
                "rebuild it"
            )
        return cls(path, manifest)

    def check(self, expected: CacheKey, command_hint: str = "") -> None:
        """``CacheError`` naming what differs when this cache was not built for ``expected``."""
        differences = expected.differences(self.key)
        if differences:
            raise CacheError(
                f"teacher cache {self.path} was built for another run, its {'; '.join(differences)} differ from "
                f"this one's. Rebuild it "
                f"(python -m lit_kd cache-teacher{command_hint}) or point model.teacher_cache elsewhere"
            )

    def split_examples(self, split: str) -> int:
        return sum(s.examples for s in self.shards.get(split, []))

    def rows(self, split: str, indices: list[int], expected_rows: Optional[list[int]] = None) -> Tensor:
        """Hidden rows ``[Σ rows, d]`` of the examples ``indices`` of ``split``, in order; ``expected_rows``
        (each example's response positions in the batch) must match what was cached."""
        if split not in self.shards:
            raise CacheError(
                f"teacher cache {self.path} has no {split!r} split (built with --splits "
                f"{','.join(self.shards)}); rebuild it with --splits {','.join([*self.shards, split])}"
            )
        pieces = []
        for position, index in enumerate(indices):
            k = bisect.bisect_right(self._starts[split], index) - 1
            shard = self.shards[split][k] if k >= 0 else None
            if shard is None or index >= shard.first_example + shard.examples:
                raise CacheError(f"teacher cache {self.path}: {split} example {index} is not in the cache")
            offsets = self._offsets[shard.file]
            local = index - shard.first_example
            start, end = int(offsets[local]), int(offsets[local + 1])
            if expected_rows is not None and end - start != expected_rows[position]:
                raise CacheError(
                    f"teacher cache {self.path}: {split} example {index} has {end - start} cached rows but "
                    f"{expected_rows[position]} response positions in this batch; the cache is for other data"
                )
            pieces.append(self._handles[shard.file].get_slice("hidden")[start:end])
        return torch.cat(pieces) if pieces else torch.empty(0, self.hidden_size)


# -- writing ----------------------------------------------------------------------------------------


def check_dtype(dtype: str) -> None:
    if dtype not in CACHE_DTYPES:
        raise CacheError(f"teacher cache dtype must be one of {', '.join(CACHE_DTYPES)}, got {dtype!r}")


def cache_bytes(head: OutputHead, sizes: dict[str, tuple[int, int]], dtype: str) -> int:
    """The space a cache of ``sizes`` (split → examples, rows) needs: hidden rows, head and manifest."""
    element = torch.empty((), dtype=CACHE_DTYPES[dtype]).element_size()
    head_bytes = sum(t.numel() * t.element_size() for t in (head.weight, head.bias) if t is not None)
    return sum(rows for _, rows in sizes.values()) * head.hidden_size * element + head_bytes + MANIFEST_BYTES


def write_head(folder: Path, head: OutputHead) -> dict[str, Any]:
    """Write the teacher's LM head (weight [V, d], + bias) to ``folder``; return its manifest entry."""
    tensors = {"weight": head.weight.detach().cpu().contiguous()}
    if head.bias is not None:
        tensors["bias"] = head.bias.detach().cpu().contiguous()
    size, digest = write_safetensors(tensors, folder / HEAD_FILE)
    return {"bytes": size, "digest": digest}


def write_split(
    folder: Path,
    split: str,
    batches: Iterable[dict[str, Tensor]],
    hidden_fn: Callable[[dict[str, Tensor]], Tensor],
    dtype: str,
    shard_bytes: int = 1 << 30,
    first: int = 0,
    progress: Optional[Callable[[str, int], None]] = None,
) -> list[dict[str, Any]]:
    """Write the response rows of consecutive examples of ``split``, the first being example ``first``, as shard
    files of about ``shard_bytes`` in ``folder`` (each named after its first example, so processes writing
    disjoint ranges of a split never collide); return their manifest entries in order."""
    shards: list[dict[str, Any]] = []
    buffer: list[Tensor] = []
    counts: list[int] = []
    hidden_size, element = None, torch.empty((), dtype=CACHE_DTYPES[dtype]).element_size()

    def flush() -> None:
        nonlocal first, buffer, counts
        if not counts:
            return
        name = f"{split}-{first:05d}.safetensors"
        offsets = torch.tensor([0, *counts]).cumsum(0)
        size, digest = write_safetensors({"hidden": torch.cat(buffer).contiguous(), "offsets": offsets}, folder / name)
        shards.append({"file": name, "first_example": first, "examples": len(counts),
                       "rows": int(offsets[-1]), "bytes": size, "digest": digest})  # fmt: skip
        first += len(counts)
        buffer, counts = [], []

    done = 0
    for batch in batches:
        with torch.no_grad():
            hidden = hidden_fn(batch)[:, :-1]
        hidden_size = hidden.shape[-1]
        mask = response_mask(batch["labels"]).to(hidden.device)
        for row in range(hidden.shape[0]):
            rows = hidden[row][mask[row]].to("cpu", CACHE_DTYPES[dtype])
            buffer.append(rows)
            counts.append(rows.shape[0])
        if sum(b.shape[0] for b in buffer) * hidden_size * element >= shard_bytes:
            flush()
        done += hidden.shape[0]
        if progress is not None:
            progress(split, done)
    flush()
    return shards


def write_manifest(
    folder: Path,
    key: CacheKey,
    dtype: str,
    hidden_size: int,
    head: dict[str, Any],
    shards: dict[str, list[dict[str, Any]]],
    sizes: dict[str, tuple[int, int]],
) -> None:
    """Write ``manifest.json`` last, once every split's shards (in example order) are checked to cover exactly
    ``sizes[split]`` = (examples, rows) with no gap or overlap, and every file listed is in ``folder`` at the size
    its writer recorded (a process on another node writes to the same folder only on a shared filesystem)."""
    for split, entries in shards.items():
        first = 0
        for entry in entries:
            if entry["first_example"] != first:
                raise CacheError(
                    f"teacher cache: the {split} shards leave a gap or overlap at example {first} "
                    f"({entry['file']} starts at {entry['first_example']})"
                )
            first += entry["examples"]
            file = folder / entry["file"]
            if not file.is_file() or file.stat().st_size != entry["bytes"]:
                raise CacheError(
                    f"teacher cache: {entry['file']} is not in {folder} as its writer left it; with several nodes, "
                    "--out must be on a filesystem that every node shares"
                )
        cached = first, sum(entry["rows"] for entry in entries)
        if cached != tuple(sizes[split]):
            raise CacheError(
                f"teacher cache: the {split} split gave {cached} (examples, rows), expected {sizes[split]}"
            )
    manifest = {"format": CACHE_FORMAT, "key": asdict(key), "dtype": dtype, "hidden_size": hidden_size,
                "splits": shards, "head": head}  # fmt: skip
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def describe_size(sizes: dict[str, tuple[int, int]], hidden_size: int, dtype: str) -> str:
    """``train: 11,435 examples, 1,034,221 rows; ... → 6.2 GB (float32, d = 1600)``."""
    element = torch.empty((), dtype=CACHE_DTYPES[dtype]).element_size()
    parts = [f"{split}: {examples:,} examples, {rows:,} rows" for split, (examples, rows) in sizes.items()]
    total = sum(rows for _, rows in sizes.values()) * hidden_size * element
    return f"{'; '.join(parts)} → {human_bytes(total)} ({dtype}, d = {hidden_size})"
