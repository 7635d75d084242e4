"""Small shared helpers (file output)."""

from lit_kd.utils.io import atomic_write_text, ensure_writable_dir, fresh_directory

__all__ = ["atomic_write_text", "ensure_writable_dir", "fresh_directory"]
