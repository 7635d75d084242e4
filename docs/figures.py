"""The README's figure: a demo run's training curves, read from its TensorBoard logs.

    python docs/figures.py logs/demo/version_1                 # → docs/assets/demo_training.png

Left: the training loss (KD at the run's τ, per logged step) and the validation KD loss (per epoch); right: the
validation ROUGE-L per epoch, the score the best checkpoint is chosen on (starred). The run's event files are
read in order — the validation before training and the fit, as ``python -m lit_kd demo`` writes them; a third
(the best checkpoint validated again, logged at the last step) is left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

OUT = Path(__file__).parent / "assets" / "demo_training.png"


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the run's event files: (step, value) pairs, in step order."""
    series: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(run.glob("events.out.tfevents.*"))[:2]:
        accumulator = EventAccumulator(str(events)).Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: sorted(values) for tag, values in series.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder: logs/<name>/version_N")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    series = scalars(args.run)
    missing = [tag for tag in ("train/loss", "val/loss", "val/rougeL") if tag not in series]
    if missing:
        parser.error(f"{args.run}: no {', '.join(missing)} in its TensorBoard logs")
    figure, (losses, rouge) = plt.subplots(1, 2, figsize=(9, 3.4))
    for tag, style in (("train/loss", "-"), ("val/loss", "o-")):
        steps, values = zip(*series[tag])
        losses.plot(steps, values, style, label=tag)
    losses.set(xlabel="optimizer step", ylabel="loss (KD, FKL at τ = 2)", title="the demo's losses")
    losses.legend()
    steps, values = zip(*series["val/rougeL"])
    rouge.plot(steps, values, "o-", color="tab:green")
    best = max(range(len(values)), key=values.__getitem__)
    rouge.plot(steps[best], values[best], "*", markersize=16, color="tab:green", label="best: kept")
    rouge.legend()
    rouge.set(xlabel="optimizer step", ylabel="ROUGE-L", title="validation ROUGE-L (20 prompts)")
    figure.suptitle("SmolLM2-135M-Instruct → its 6 cut layers, on 2 CPU cores (python -m lit_kd demo)")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
