"""Small shared helpers (file output)."""

from lit_kd.utils.io import (
    atomic_directory,
    atomic_path,
    atomic_write_text,
    ensure_writable_dir,
    fresh_directory,
    newest,
    numbered_paths,
    remove_stale_temporaries,
)

__all__ = [
    "atomic_directory",
    "atomic_path",
    "atomic_write_text",
    "ensure_writable_dir",
    "fresh_directory",
    "newest",
    "numbered_paths",
    "remove_stale_temporaries",
]
