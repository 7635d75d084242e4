"""The documentation: the site builds with ``mkdocs build --strict`` (a broken link, a page missing from the nav or a
reference generator that fails is an error), its generated reference pages hold what the code defines, and the
README stays a short front page whose relative links all resolve."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built once by the venv's MkDocs, strict, into a temporary folder."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it comes with the dev extra: pip install -e '.[dev]')")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "true"},  # Material's banner about MkDocs 2.0, on every build
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def page(site: Path, path: str) -> str:
    html = site / path / "index.html"
    assert html.is_file(), f"{path} is not in the built site"
    return html.read_text("utf-8")


def test_the_objectives_reference_lists_every_registered_objective(site):
    """Against the registry of a fresh process, as the build sees it (other tests register plugins in this one)."""
    listing = "import json; from lit_kd.losses import OBJECTIVES; " \
        "print(json.dumps({n: [h.field for h in o.hparams] for n, o in OBJECTIVES.items()}))"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", listing], cwd=ROOT, capture_output=True, text=True, timeout=300)
    objectives = json.loads(done.stdout)
    assert len(objectives) >= 10, done.stderr
    text = page(site, "reference/objectives")
    for name, fields in objectives.items():
        assert f"<code>{name}</code>" in text, name
        for field in fields:
            assert f"<code>{field}</code>" in text, (name, field)


def test_the_config_reference_holds_the_fit_parsers_keys(site):
    text = page(site, "reference/config")
    for key in ["model.loss.tau", "model.loss.name", "model.chunk_size", "model.kd_ratio", "model.teacher_cache",
                "model.policy.student_fraction", "model.student.peft.r", "data.max_length", "data.prompt_format",
                "trainer.max_epochs", "trainer.accumulate_grad_batches", "checkpoint.monitor",
                "last_checkpoint.every_n_train_steps", "seed_everything"]:  # fmt: skip
        assert f"<code>{key}</code>" in text, key


def test_the_commands_reference_holds_every_command_and_its_options(site):
    from lit_kd.cli.main import COMMANDS

    text = page(site, "reference/commands")
    for name in COMMANDS:
        assert f'id="{name}"' in text, name  # each command's own section
    for option in ["--benchmarks", "--seeds", "--objectives", "--taus", "--out", "--shard_bytes"]:
        assert option in text, option


def test_the_api_reference_is_rendered_from_the_docstrings(site):
    for path, names in {
        "reference/api/losses": ["LossConfig", "register", "fkl"],
        "reference/api/modules": ["DistillModule"],
        "reference/api/data": ["DollyDataModule"],
        "reference/api/teacher": ["TeacherCache"],
        "reference/api/training": ["build"],
    }.items():
        text = page(site, path)
        assert 'class="doc doc-' in text, f"{path}: no mkdocstrings output"
        for name in names:
            assert name in text, (path, name)


def test_the_site_has_its_pages_and_a_search_index(site):
    assert (site / "index.html").is_file()
    for path in ["guides/distill-your-own-pair", "guides/choose-objective-and-tau", "guides/multi-gpu",
                 "concepts/the-step", "concepts/temperature", "results/demo", "results/tau-study",
                 "results/benchmarks"]:  # fmt: skip
        page(site, path)
    assert (site / "search" / "search_index.json").is_file()


def test_the_readme_is_at_most_200_lines():
    lines = README.read_text("utf-8").rstrip("\n").split("\n")
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move the detail to docs/"


def test_every_relative_link_of_the_readme_points_to_a_file():
    text = README.read_text("utf-8")
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)  # a commented-out TODO is not a link
    broken = []
    for target in MARKDOWN_LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor of the README itself
        path = target.split("#", 1)[0]
        if not (ROOT / path).exists():
            broken.append(target)
    assert not broken, f"README.md links to missing files: {broken}"
    assert "](#" not in text, "README.md links to an anchor of its own; the sections live in docs/ now"
