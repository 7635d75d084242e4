"""``python -m lit_kd report <sweep dir>``: report.md with Table 1, the grid, the τ-gain heatmap, FKL vs RKL across
τ (the crossover), diversity and calibration, τ schedules and rules against the best constant τ (``--variants``)
and the KD diagnostics against τ, plus figure1_fkl_rkl.png,
heatmap_gain.png, diagnostics_vs_tau.png and diversity_calibration_vs_tau.png; for a sweep with ``evaluation.steps``,
a table per evaluation point and learning_curves_<objective>.png with learning_curves.csv."""

from __future__ import annotations

from typing import Optional

from lit_kd.experiments.report import write_report


def report(sweep_dir: str, variants: Optional[list[str]] = None) -> None:
    """Write the report of a sweep directory (made by ``python -m lit_kd sweep``).

    Args:
        sweep_dir: The sweep's ``--out`` directory.
        variants: Sweeps of τ schedules and rules (``--regimes '[tau_cosine, ...]'``) on the same base configs, fit
            arguments and evaluation: a table sets them against each objective's best constant τ.
    """
    path, figures = write_report(sweep_dir, variants)
    print(f"wrote {path} (+ {', '.join(p.name for p in figures.values())})")
