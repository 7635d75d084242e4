"""LightningModules and training utilities."""

from lit_kd.modules.distill import DistillModule
from lit_kd.modules.schedule import WarmupCosineLR

__all__ = ["DistillModule", "WarmupCosineLR"]
