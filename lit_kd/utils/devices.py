"""Choosing the device a command runs its model on."""

from __future__ import annotations

import torch

from lit_kd.errors import ConfigError


def check_device(device: str, option: str = "--device") -> None:
    """``auto`` or a device name torch reads (``cpu``, ``cuda``, ``cuda:1``, ...) of a kind this machine has: one
    ``ConfigError`` naming ``option`` otherwise (commands call it before any model loads)."""
    if device == "auto":
        return
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"{option}: {err} (auto, cpu, cuda, cuda:1, ...)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option} {device}, but no CUDA device is available")


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is available, else ``cpu``; any other name as given (``check_device``)."""
    check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
