"""LightningModules and training utilities."""

from lit_kd.modules.distill import DistillModule, StepLosses
from lit_kd.modules.schedule import WarmupCosineLR

__all__ = ["DistillModule", "StepLosses", "WarmupCosineLR"]
