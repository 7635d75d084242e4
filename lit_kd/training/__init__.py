"""Running a ``DistillModule``: the one builder (``build``), lit_kd's ``Trainer``, checkpoint IO and every callback
a run gets (restart-safe last checkpoint, progress lines, HParams, fit summary, resume hint, RNG states, the LR
schedule's horizon, exporting the best student, the weights at chosen steps)."""

from lit_kd.training.build import Run, build
from lit_kd.training.hparams import HParamsSummary
from lit_kd.training.last_checkpoint import LastCheckpoint
from lit_kd.training.progress import LineProgress
from lit_kd.training.state import RNGStates, ScheduleHorizon
from lit_kd.training.step_checkpoints import StepCheckpoints
from lit_kd.training.summary import ExportBest, FitSummary, ResumeHint
from lit_kd.training.trainer import Trainer

__all__ = [
    "ExportBest",
    "FitSummary",
    "HParamsSummary",
    "LastCheckpoint",
    "LineProgress",
    "RNGStates",
    "Run",
    "ScheduleHorizon",
    "StepCheckpoints",
    "ResumeHint",
    "Trainer",
    "build",
]
