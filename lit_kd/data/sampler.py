"""The training order: a shuffle that is a function of (seed, epoch), resumable mid-epoch.

``torch``'s and torchdata's ``RandomSampler`` draw their generator's seed from the global RNG when the loader
is built, so a run resumed from an end-of-epoch checkpoint (which rebuilds the loader) would shuffle the next
epoch differently from an uninterrupted run. Here the permutation of epoch ``e`` is
``randperm(n, seed + e)`` (``DistributedSampler``'s rule, the one Lightning applies under DDP), sharded over
the processes; Lightning's ``set_epoch`` call picks the epoch, and the position within the epoch is saved in
checkpoints through ``StatefulDataLoader`` (torchdata's ``StatefulDistributedSampler``).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler


class EpochShuffleSampler(StatefulDistributedSampler):
    """``StatefulDistributedSampler`` whose saved position also names its epoch: a restored position applies
    only to that epoch's pass. (An epoch cut short by ``limit_train_batches`` ends mid-permutation; the
    next epoch then starts from its own beginning, as in an uninterrupted run.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.restored_epoch: Optional[int] = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.restored_epoch = state_dict.get("epoch")
        if self.restored_epoch is not None:
            self.epoch = int(self.restored_epoch)

    def __iter__(self) -> Iterator[int]:
        # runs at the first ``next``: Lightning has set the epoch of this pass by then
        if self.restored_epoch is not None and self.restored_epoch != self.epoch:
            self.next_yielded = None
        self.restored_epoch = None
        yield from super().__iter__()
