"""lit_kd's ``Trainer``: Lightning's, with the defaults every lit_kd run relies on.

* checkpoints are written through ``AtomicCheckpointIO`` (a temporary file renamed into place, the free space
  checked first) unless ``plugins`` names a checkpoint IO of its own;
* the always-on callbacks step aside when their feature is switched off (``enable_checkpointing: false`` drops
  the ``ModelCheckpoint`` callbacks, ``enable_progress_bar: false`` the progress bar) instead of Lightning
  refusing the combination, and ``LastCheckpoint`` runs after the other checkpoint callbacks (it writes
  ``last.ckpt`` once the best checkpoint has recorded the epoch);
* every run keeps its RNG states in checkpoints and gives its LR schedule the run's horizon (``state``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.plugins.io import CheckpointIO

from lit_kd.training.checkpoint_io import AtomicCheckpointIO
from lit_kd.training.last_checkpoint import LastCheckpoint
from lit_kd.training.state import RNGStates, ScheduleHorizon


class Trainer(L.Trainer):
    """``lightning.Trainer`` with atomic checkpoint writes and switch-aware default callbacks (see the module)."""

    def __init__(self, **kwargs: Any) -> None:
        callbacks = kwargs.get("callbacks")
        callbacks = (
            [] if callbacks is None else list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        )
        if kwargs.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if kwargs.get("enable_progress_bar") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        for needed in (RNGStates, ScheduleHorizon):
            if not any(isinstance(c, needed) for c in callbacks):
                callbacks.append(needed())
        callbacks.sort(key=lambda c: isinstance(c, LastCheckpoint))  # stable: the others keep their order
        kwargs["callbacks"] = callbacks
        plugins = kwargs.get("plugins")
        listed = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in listed):
            kwargs["plugins"] = [*listed, AtomicCheckpointIO()]
        super().__init__(**kwargs)
