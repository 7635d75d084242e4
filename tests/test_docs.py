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


def test_the_objectives_concept_page_gives_each_formula_and_gradient(site):
    """The generated section of concepts/objectives.md: one row per registered objective (a fresh process's
    registry, as the build sees it), each with its formula and the gradient its docstring states."""
    listing = "import json; from lit_kd.losses import OBJECTIVES; print(json.dumps(list(OBJECTIVES)))"
    done = subprocess.run([sys.executable, "-c", listing], cwd=ROOT, capture_output=True, text=True, timeout=300)
    names = json.loads(done.stdout)
    text = page(site, "concepts/objectives")
    section = text[text.index('id="formulas-and-gradients"') : text.index('id="adding-an-objective"')]
    rows = re.findall(r"<tr>\s*<td><code>(\w+)</code></td>(.*?)</tr>", section, flags=re.S)
    assert [name for name, _ in rows] == names
    for name, cells in rows:
        assert re.search(r"Gradient|Subgradient|∇", cells) and cells.count("<td>") == 2, (name, cells)
    assert "(1/τ)·(u_j − q_j·Σ_k u_k)" in section  # the pull-back they share


def nav_pages(nav: object) -> list[str]:
    """The Markdown files that mkdocs.yml's nav lists."""
    if isinstance(nav, str):
        return [nav] if nav.endswith(".md") else []
    items = nav.values() if isinstance(nav, dict) else nav
    return [path for item in items for path in nav_pages(item)]  # type: ignore[union-attr]


def test_the_site_has_its_pages_and_a_search_index(site):
    """Every page of the nav is built and in the search index, whose text finds a page by a word of it. The search
    itself runs in the browser (lunr, in Material's web worker); with no headless browser on this machine (see
    test_a_headless_browser_opens_a_page) the index is what is checked. `mkdocs serve` serves the site locally."""
    import yaml

    nav = nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text("utf-8"))["nav"])
    assert len(nav) >= 30 and "guides/distill-your-own-pair.md" in nav and "reference/config.md" in nav
    urls = {path: "" if path == "index.md" else path.removesuffix(".md") + "/" for path in nav}
    for url in urls.values():
        page(site, url)
    entries = json.loads((site / "search" / "search_index.json").read_text("utf-8"))["docs"]
    located = {entry["location"].split("#")[0] for entry in entries}
    missing = [path for path, url in urls.items() if url not in located]
    assert not missing, f"pages not in the search index: {missing}"
    for word, where in {"tau_squared_scaling": "concepts/objectives/", "torchrun": "guides/multi-gpu/",
                        "drkl_gamma": "reference/objectives/", "last_checkpoint.every_n_train_steps":
                        "reference/config/"}.items():  # fmt: skip
        found = {entry["location"].split("#")[0] for entry in entries if word in entry["text"]}
        assert where in found, (word, sorted(found))


BROWSERS = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell"]


def test_a_headless_browser_opens_a_page(site):
    """One built page opened by a headless Chromium-family browser, where the machine has one (this project's
    machine has none; the search index test above stands in for it)."""
    import shutil

    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        pytest.skip(f"no headless browser on this machine (looked for {', '.join(BROWSERS)})")
    url = (site / "concepts" / "objectives" / "index.html").as_uri()
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Formulas and gradients" in done.stdout and 'class="md-search' in done.stdout


def test_the_reference_generators_use_no_private_parser_api():
    """docs/hooks.py lists options through the parsers' public interface (get_defaults, format_help)."""
    source = (ROOT / "docs" / "hooks.py").read_text("utf-8")
    assert "._actions" not in source and "_option_string_actions" not in source


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
