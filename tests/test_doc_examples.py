"""The examples of the README and docs/ run as written.

A shell block runs when the line before its fence is ``<!-- runnable -->``; ``<!-- runnable: skip REASON -->`` keeps
it out with the reason stated (it needs a GPU, the network, or takes minutes); every shell block has one or the
other. Every ``python`` block runs unless ``<!-- runnable: skip REASON -->`` precedes it. A page's runnable blocks
run in order, in one scratch folder
holding a copy of ``configs/`` and ``data/`` (so ``configs/tiny.yaml`` and ``logs/tiny/version_0`` mean what they
say on the page, and nothing is written into the checkout), with this interpreter's ``python`` first on PATH.

The default run checks that every marked block is well formed and every Python block compiles; executing them trains
the tiny config several times, so it is in the slow set: ``bash scripts/test.sh -m slow tests/test_doc_examples.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests.conftest import ROOT

MARKER = re.compile(r"<!-- runnable(?::\s*skip\s+(?P<reason>.+?))?\s*-->")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>```+)(?P<lang>[\w+-]*)")
SHELLS = {"bash", "sh", "shell"}


@dataclass(frozen=True)
class Example:
    """A fenced block of a page: its language, its text, the line of its fence (from 1), whether a ``runnable``
    marker precedes it, and the stated reason when it is skipped."""

    page: Path
    line: int
    lang: str
    code: str
    marked: bool
    skip: Optional[str]

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.skip is None and (self.lang == "python" or (self.marked and self.lang in SHELLS))


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def examples(page: Path) -> list[Example]:
    """The fenced blocks of ``page``, in order, each with the marker of the last non-blank line before its fence."""
    lines = page.read_text("utf-8").split("\n")
    found, index = [], 0
    while index < len(lines):
        opened = FENCE.match(lines[index])
        if not opened:
            index += 1
            continue
        before = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = MARKER.fullmatch(before)
        indent, ticks = opened["indent"], opened["ticks"]
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == ticks)
        code = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines[index + 1 : end])
        skip = marker["reason"] if marker else None
        found.append(Example(page, index + 1, opened["lang"], code, marker is not None, skip))
        index = end + 1
    return found


def runnable_pages() -> list[Path]:
    return [page for page in pages() if any(example.runs for example in examples(page))]


def test_every_marker_precedes_a_block_it_can_run():
    """A ``runnable`` marker sits right before a shell or Python fence, and a skip states its reason."""
    problems = []
    for page in pages():
        lines = page.read_text("utf-8").split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip().startswith("<!-- runnable"):  # a marker is a line of its own
                continue
            after = next((text for text in lines[number:] if text.strip()), "")
            opened = FENCE.match(after)
            marker = MARKER.fullmatch(line.strip())
            where = f"{page.relative_to(ROOT)}:{number}"
            if marker is None:
                problems.append(f"{where}: not <!-- runnable --> nor <!-- runnable: skip WHY -->")
            elif not opened or opened["lang"] not in SHELLS | {"python"}:
                problems.append(f"{where}: the marker is not followed by a shell or python block")
    assert not problems, "\n".join(problems)


def test_every_shell_block_runs_or_states_why_not():
    """Every shell block of the README and docs/ is marked: ``<!-- runnable -->`` (the slow test runs it) or
    ``<!-- runnable: skip REASON -->`` (a GPU, the network, minutes, a server, a placeholder)."""
    unmarked = [example.where for page in pages() for example in examples(page)
                if example.lang in SHELLS and not example.marked]  # fmt: skip
    assert not unmarked, "shell blocks without <!-- runnable --> or <!-- runnable: skip WHY -->: " + ", ".join(unmarked)


def test_every_python_block_compiles_and_some_blocks_run():
    blocks = [example for page in pages() for example in examples(page)]
    for example in blocks:
        if example.lang == "python":
            compile(example.code, example.where, "exec")
    assert any(example.runs and example.lang in SHELLS for example in blocks), "no shell block is marked runnable"
    assert any(example.runs and example.lang == "python" for example in blocks)


def scratch(tmp_path: Path) -> dict[str, str]:
    """A scratch folder with ``configs/`` and ``data/``, and the environment the blocks run in."""
    for folder in ("configs", "data"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("LIT_KD_DEBUG", None)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("page", runnable_pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_the_runnable_examples_of_a_page_run(page, tmp_path):
    env = scratch(tmp_path)
    ran = 0
    for example in examples(page):
        if not example.runs:
            continue
        if example.lang == "python":
            command = [sys.executable, "-c", example.code]
        else:
            command = ["bash", "-euo", "pipefail", "-c", example.code]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        output = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        assert done.returncode == 0, f"{example.where} failed (exit {done.returncode}):\n{output}"
        ran += 1
    print(f"{page.relative_to(ROOT)}: {ran} examples ran")
