"""Progress of a command that works through the splits of a data set (``cache-teacher``, ``generate-data``)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def split_progress(label: str, totals: dict[str, int]) -> Iterator[Callable[[str, int], None]]:
    """Yield ``update(split, done)``: a Rich bar per split on a terminal; without one (a SLURM or ``nohup``
    log), a plain line ``<label>: <split> <done>/<total>`` each tenth of the split and at its end."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    terminal = sys.stderr.isatty()
    with Progress(*columns, disable=not terminal) as bar:
        tasks = {split: bar.add_task(f"{label}: {split}", total=total) for split, total in totals.items()}
        printed = dict.fromkeys(totals, 0)

        def update(split: str, done: int) -> None:
            bar.update(tasks[split], completed=done)
            total = totals[split]
            if not terminal and (done - printed[split] >= max(total // 10, 1) or done == total):
                print(f"{label}: {split} {done}/{total}", flush=True)
                printed[split] = done

        yield update
