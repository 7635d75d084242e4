"""Content digests of the files lit_kd writes and reads back: XXH3-128 (``xxhash``, which ``datasets`` already
depends on). It hashes at about 10 GB/s on this project's CPU (SHA-256: 1.15 GB/s), so verifying a file costs
about what reading it does. It detects accidental change (an edit, a partial copy, bit rot, a merged LoRA), not a
deliberate forgery.

A large file's digest can be remembered (``remembered_file_digest``) under its path, size, modification time and
inode: a file rewritten in place gets a new modification time and is hashed again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

import xxhash

from lit_kd.utils.io import atomic_write_text

DIGEST_NAME = "xxh3_128"
CHUNK = 16 << 20

Bytes = Union[bytes, bytearray, memoryview]


def bytes_digest(data: Bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def file_digest(path: str | os.PathLike) -> str:
    """The digest of every byte of ``path`` (read in 16 MiB pieces)."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as stream:
        while piece := stream.read(CHUNK):
            digest.update(piece)
    return digest.hexdigest()


def remembered_file_digest(path: str | os.PathLike, memo: str | os.PathLike) -> str:
    """``file_digest(path)``, remembered in the JSON file ``memo`` under (real path, size, mtime, inode)."""
    path, memo = Path(path).resolve(), Path(memo)
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if key not in known:
        known = {k: v for k, v in known.items() if not k.startswith(f"{path}|")}  # older versions of this file
        known[key] = file_digest(path)
        try:
            atomic_write_text(memo, json.dumps(known, indent=1) + "\n")
        except OSError:
            pass  # a read-only cache folder: the digest is recomputed next time
    return known[key]
