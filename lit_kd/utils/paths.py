"""Where a checkout of lit_kd keeps its shipped configs."""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BASE_CONFIG = CONFIGS / "base.yaml"
"""The shared base every fit-configuration command reads as its defaults (where lit_kd runs from a checkout)."""
OBJECTIVE_CONFIGS = CONFIGS / "objectives"
"""One file per objective, shared by every model pair (``sweep`` layers ``<objective>.yaml`` from here)."""
REGIME_CONFIGS = CONFIGS / "regimes"
"""One file per training regime (off_policy, seqkd, mixed, on_policy): ``sweep --regimes`` makes it a grid axis."""
