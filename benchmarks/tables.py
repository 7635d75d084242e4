"""The README's benchmark tables, rendered from the benchmarks' records (``benchmarks/records/<name>.json``).

    python benchmarks/tables.py            # rewrite every generated block of README.md and docs/**/*.md
    python benchmarks/tables.py --check    # exit 1, naming them, when a block differs or a record is missing/stale

A generated block is the text between two HTML comments:

    <!-- benchmark: teacher_cache -->
    ...
    <!-- /benchmark -->

``teacher_cache`` names the record; its script is ``benchmarks/<the name up to its first '-'>.py`` (so
``loss_memory-v151936`` is a record of ``loss_memory.py``), whose ``table(record)`` renders the block, or with
``<!-- benchmark: NAME table=KEY -->`` its ``tables[KEY](record)``. Scripts are imported by file path, which runs
no benchmark. The block holds the rendering, a blank line and one line naming the record's command, commit, torch,
threads and ``THP_MEM_ALLOC_ENABLE``. An indented opening comment (a block inside a list item) indents the block.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from record import read_record, record_path, stale_sources

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
OPEN = re.compile(r"(?P<indent>[ \t]*)<!-- benchmark: (?P<name>[\w.-]+)(?: table=(?P<table>\w+))? -->[ \t]*")
CLOSE = re.compile(r"[ \t]*<!-- /benchmark -->[ \t]*")
REGENERATE = "python benchmarks/tables.py"


@dataclass(frozen=True)
class Block:
    """A generated block of a markdown text: the record it shows, the renderer's key, the indentation of its
    opening comment, the line indices (from 0) of its two comments, and the text between them."""

    name: str
    table: str | None
    indent: str
    start: int
    end: int
    content: str

    @property
    def label(self) -> str:
        return self.name if self.table is None else f"{self.name} table={self.table}"


def find_blocks(text: str) -> list[Block]:
    """The generated blocks of ``text``, in order; an opening comment without its closing one (or a closing one
    without an opening one) is a ``ValueError`` naming its line."""
    lines, blocks, opened = text.split("\n"), [], None
    for index, line in enumerate(lines):
        match = OPEN.fullmatch(line)
        if match and opened is not None:
            raise ValueError(f"line {index + 1}: a benchmark block opens inside the block of line {opened[0] + 1}")
        if match:
            opened = (index, match)
        elif CLOSE.fullmatch(line):
            if opened is None:
                raise ValueError(f"line {index + 1}: <!-- /benchmark --> closes no block")
            start, found = opened
            content = "\n".join(lines[start + 1 : index])
            blocks.append(Block(found["name"], found["table"], found["indent"], start, index, content))
            opened = None
    if opened is not None:
        raise ValueError(f"line {opened[0] + 1}: the benchmark block is not closed (<!-- /benchmark -->)")
    return blocks


def replace_blocks(text: str, render: Callable[[Block], str | None]) -> str:
    """``text`` with each block's content replaced by ``render(block)`` (a block it returns None for is kept)."""
    lines, blocks = text.split("\n"), find_blocks(text)
    contents = [render(block) for block in blocks]  # in order: the problems they report come in the text's order
    for block, content in reversed(list(zip(blocks, contents))):  # from the end: earlier line indices stay valid
        if content is not None:
            lines[block.start + 1 : block.end] = content.split("\n")
    return "\n".join(lines)


def script_for(name: str) -> Path:
    """The benchmark script of record ``name``: ``benchmarks/<name up to its first '-'>.py``."""
    return BENCHMARKS / f"{name.split('-')[0]}.py"


_SCRIPTS: dict[Path, ModuleType] = {}


def load_script(path: Path) -> ModuleType:
    """The benchmark script at ``path``, imported once by file path (its ``main()`` is not run). The benchmarks'
    folder goes on ``sys.path`` first, as when a script runs: they import ``record`` and each other."""
    if path not in _SCRIPTS:
        if str(BENCHMARKS) not in sys.path:
            sys.path.insert(0, str(BENCHMARKS))
        spec = importlib.util.spec_from_file_location(f"lit_kd_benchmark_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _SCRIPTS[path] = module
    return _SCRIPTS[path]


def renderer(block: Block) -> Callable[[dict[str, Any]], str]:
    """The script's ``table``, or ``tables[block.table]``."""
    script = script_for(block.name)
    module = load_script(script)
    found = getattr(module, "table", None) if block.table is None else getattr(module, "tables", {}).get(block.table)
    if found is None:
        wanted = "table(record)" if block.table is None else f"tables[{block.table!r}]"
        raise LookupError(f"{script.relative_to(ROOT)} has no renderer {wanted}")
    return found


def footer(record: dict[str, Any]) -> str:
    """One line: the command, the commit (and whether the measured code had uncommitted changes), torch, threads,
    THP_MEM_ALLOC_ENABLE and the CUDA device, if one was used."""
    commit = (record.get("commit") or "unknown")[:7] + (" with uncommitted changes" if record.get("dirty") else "")
    thp = record.get("thp_mem_alloc")
    parts = [
        record["command"],
        f"commit {commit}",
        f"torch {record['torch']}",
        f"{record['threads']} threads",
        f"THP_MEM_ALLOC_ENABLE {'unset' if thp is None else '= ' + thp}",
    ]
    cuda = record.get("machine", {}).get("cuda")
    return f"<sub>{' · '.join(parts + ([cuda] if cuda else []))}</sub>"


def render(block: Block, record: dict[str, Any]) -> str:
    """The block's content: the renderer's output, a blank line and the footer, indented as the block."""
    text = renderer(block)(record).strip("\n") + "\n\n" + footer(record)
    return "\n".join(block.indent + line if line else line for line in text.split("\n"))


def markdown_files() -> list[Path]:
    """README.md and every ``docs/**/*.md``."""
    docs = ROOT / "docs"
    return [ROOT / "README.md", *(sorted(docs.rglob("*.md")) if docs.is_dir() else [])]


def where(path: Path, block: Block) -> str:
    return f"{path.relative_to(ROOT)}:{block.start + 1} block '{block.label}'"


def record_problems(path: Path, block: Block) -> list[str]:
    """The block's record is missing, or stale (a source it measured has changed since)."""
    if not record_path(block.name).is_file():
        return [f"{where(path, block)}: no record {record_path(block.name)} (bash benchmarks/rerun.sh lists the "
                "commands)"]  # fmt: skip
    record = read_record(block.name)
    stale = stale_sources(record)
    if not stale:
        return []
    return [f"{where(path, block)}: record '{block.name}' is stale ({', '.join(stale)} changed since); re-run: "
            f"{record['command']}"]  # fmt: skip


def checked_render(path: Path, block: Block) -> tuple[str | None, list[str]]:
    """The block's content from its record (None when there is none or it cannot be rendered) and the problems:
    no record, a stale record, no renderer."""
    problems = record_problems(path, block)
    if not record_path(block.name).is_file():
        return None, problems
    try:
        return render(block, read_record(block.name)), problems
    except (ImportError, LookupError) as err:
        return None, [*problems, f"{where(path, block)}: {err}"]


def block_problems(path: Path, block: Block) -> list[str]:
    """What is wrong with one block: no record, a stale record, no renderer, a content that differs."""
    expected, problems = checked_render(path, block)
    if expected is not None and block.content != expected:
        problems.append(f"{where(path, block)} differs from its record; run {REGENERATE}")
    return problems


def rewrite(path: Path) -> list[str]:
    """Rewrite ``path``'s blocks from their records; return the blocks it could not render and the stale records."""
    problems: list[str] = []

    def content(block: Block) -> str | None:
        text, found = checked_render(path, block)
        problems.extend(found)
        return text

    text = path.read_text(encoding="utf-8")
    updated = replace_blocks(text, content)
    if updated != text:
        path.write_text(updated, encoding="utf-8")
        print(f"rewrote {path.relative_to(ROOT)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing: exit 1 when a block is not current")
    args = parser.parse_args(argv)
    problems = []
    for path in markdown_files():
        if args.check:
            for block in find_blocks(path.read_text(encoding="utf-8")):
                problems.extend(block_problems(path, block))
        else:
            problems.extend(rewrite(path))
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
