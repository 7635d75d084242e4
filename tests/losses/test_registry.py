"""The registry declares each objective's hyperparameters once; ``LossConfig`` (fields, defaults, range checks,
help) and the objectives table follow from it, and a plugin objective registered later is usable from the
command line (``tests/losses/toy_objective.py``, run in subprocesses so the registry here stays the built-in one)."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import pytest
import yaml
from jsonargparse import ArgumentParser

from lit_kd.experiments.records import FIT_SUMMARY_FILE, FitSummary
from lit_kd.losses import OBJECTIVES, HParam, LossConfig, Objective, fkl, js, register
from tests.conftest import ROOT

# the fields and defaults that configs/ and tests/cli/resolved_before/*.yaml rely on, in their order
FIELDS = {
    "name": "fkl",
    "tau": 1.0,
    "tau_squared_scaling": False,
    "tau_schedule": "constant",
    "tau_end": None,
    "tau_horizon": None,
    "tau_horizon_unit": "steps",
    "tau_rule": "none",
    "tau_min": 0.05,
    "tau_max": 100.0,
    "tau_target_entropy": 1.0,
    "sym_kl_weight": 0.5,
    "js_beta": 0.1,
    "skew_alpha": 0.1,
    "akl_mu": 0.5,
    "ab_alpha": 0.2,
    "ab_beta": 0.7,
    "drkl_gamma": 0.5,
}


def test_loss_config_fields_are_the_common_ones_then_the_registered_hyperparameters():
    assert [(f.name, f.default) for f in dataclasses.fields(LossConfig)] == list(FIELDS.items())
    assert dataclasses.asdict(LossConfig()) == FIELDS
    assert LossConfig("js", tau=2.0, js_beta=0.5).js_beta == 0.5  # positional name, as the modules' tests use


def test_every_field_has_its_help_text():
    parser = ArgumentParser(prog="x")
    parser.add_argument("--loss", type=LossConfig, default=LossConfig())
    text = " ".join(parser.format_help().split())  # the help wraps lines
    for documented in (
        "--loss.name NAME Objective name in the registry: fkl, rkl,",
        "--loss.tau TAU Distillation temperature τ > 0",
        "--loss.js_beta JS_BETA js: mixture weight β of the teacher",
        "Range: (0.0, 1.0). (type: float, default: 0.1)",
        "--loss.skew_alpha SKEW_ALPHA sfkl/srkl: skew α",
        "--loss.ab_alpha AB_ALPHA ab: α of the AB-divergence (limits handled). Range: (-inf, inf).",
        "--loss.drkl_gamma DRKL_GAMMA drkl: weight γ",
    ):
        assert documented in text, documented


def test_objective_hparams_are_the_selected_objectives_fields():
    assert LossConfig("fkl").objective_hparams() == {}
    assert LossConfig("js", js_beta=0.3).objective_hparams() == {"js_beta": 0.3}
    assert LossConfig("srkl").objective_hparams() == {"skew_alpha": 0.1}
    config = LossConfig("ab", ab_alpha=0.5)
    assert config.objective_hparams() == {"ab_alpha": 0.5, "ab_beta": 0.7}
    assert config.hparam_values() == {"alpha": 0.5, "beta": 0.7}  # the keyword arguments of ab()
    assert config.objective is OBJECTIVES["ab"]


def test_every_declared_range_is_enforced():
    for objective in OBJECTIVES.values():
        for hparam in objective.hparams:
            for value in (hparam.low, hparam.high):
                if not math.isfinite(value):
                    continue
                open_end = hparam.open_low if value == hparam.low else hparam.open_high
                if open_end:
                    with pytest.raises(ValueError, match=f"model.loss.{hparam.field} must be in"):
                        LossConfig(objective.name, **{hparam.field: value})
                else:
                    assert getattr(LossConfig(objective.name, **{hparam.field: value}), hparam.field) == value


def _js_like(student_logits, teacher_logits, tau, beta=0.1):
    return js(student_logits, teacher_logits, tau, beta)


@pytest.mark.parametrize(
    "objective, message",
    [
        (Objective("fkl", fkl, "again"), "'fkl' is already registered"),
        (Objective("x", fkl, "f", [HParam("x_beta", "beta", 0.1, "d")]), r"fkl\(\) has no parameter 'beta'"),
        (Objective("x", _js_like, "f", [HParam("x_beta", "beta", 0.2, "d")]), "differs from _js_like"),
        (Objective("x", _js_like, "f", [HParam("x_beta", "beta", 0.1, "d", high=0.1, open_high=True)]), "range"),
        (Objective("x", _js_like, "f", [HParam("tau", "beta", 0.1, "d")]), "not usable as a LossConfig field"),
        (Objective("x", _js_like, "f", [HParam("objective", "beta", 0.1, "d")]), "not usable as a LossConfig"),
        (Objective("x", _js_like, "f", [HParam("js_beta", "beta", 0.1, "d")]), "declared differently"),
    ],
)
def test_a_bad_declaration_is_refused_and_changes_nothing(objective, message):
    before = (dict(OBJECTIVES), dataclasses.fields(LossConfig), LossConfig.__doc__)
    with pytest.raises(ValueError, match=message):
        register(objective)
    assert (dict(OBJECTIVES), dataclasses.fields(LossConfig), LossConfig.__doc__) == before


# -- a plugin objective, registered after lit_kd is imported ---------------------------------------------------


def with_toy(*args: str, module: bool = True) -> subprocess.CompletedProcess:
    """``python -m lit_kd ARGS`` with ``tests/losses/toy_objective.py`` registered (or ``python -c ARGS[0]``)."""
    command = [sys.executable, "-m", "tests.losses.toy_objective", *args] if module else [sys.executable, "-c", *args]
    env = {**os.environ, "COLUMNS": "200"}  # help lines unwrapped
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_a_plugin_objective_trains_through_the_cli(tmp_path, tiny_args):
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    result = with_toy("fit", *tiny_args, "--model.loss.name", "toy", "--model.loss.toy_scale", "2.0", *limits)
    assert result.returncode == 0, result.stderr[-3000:]
    log_dir = tmp_path / "logs" / "tiny" / "version_0"
    loss = yaml.safe_load((log_dir / "config.yaml").read_text())["model"]["loss"]
    assert loss["name"] == "toy" and loss["toy_scale"] == 2.0 and loss["js_beta"] == 0.1
    kd_loss = FitSummary.read(log_dir / FIT_SUMMARY_FILE).metrics["train/kd_loss"]
    assert math.isfinite(kd_loss) and kd_loss > 0


def test_a_plugin_objective_is_checked_documented_and_listed(tiny_args):
    out_of_range = with_toy("fit", *tiny_args, "--model.loss.name", "toy", "--model.loss.toy_scale", "0")
    assert out_of_range.returncode == 2
    assert "lit_kd: error: model.loss.toy_scale must be in (0.0, 10.0], got 0.0" in out_of_range.stderr
    assert "Traceback" not in out_of_range.stderr

    help_text = with_toy("fit", "--help").stdout
    assert "--model.loss.toy_scale TOY_SCALE" in help_text
    assert "toy: the factor s on FKL. Range: (0.0, 10.0]." in " ".join(help_text.split())

    table = with_toy("objectives").stdout.splitlines()
    table = table[: table.index("")]  # the registry's table, before the cross-tokenizer paragraph
    assert len(table) == 1 + len(OBJECTIVES) + 1
    assert any(line.startswith("toy ") and "toy_scale=1.0 (0.0, 10.0]" in line for line in table), table

    reaches_the_function = (
        "import torch; import tests.losses.toy_objective;"
        "from lit_kd.losses import LossConfig, fkl, per_token_divergence;"
        "zs, zt = torch.randn(3, 7), torch.randn(3, 7); config = LossConfig('toy', tau=2.0, toy_scale=3.0);"
        "assert config.objective_hparams() == {'toy_scale': 3.0};"
        "torch.testing.assert_close(per_token_divergence(config, zs, zt), 3.0 * fkl(zs, zt, 2.0))"
    )
    result = with_toy(reaches_the_function, module=False)
    assert result.returncode == 0, result.stderr[-3000:]

