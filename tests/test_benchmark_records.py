"""The benchmark figures of the README and docs/ against the benchmarks' records
(``benchmarks/records/<name>.json``): every generated block equals its rendering from its record, every record is
fresh (no source it measured has changed), every block names a record that exists; then ``benchmarks/record.py`` and
``benchmarks/tables.py`` themselves, on a temporary repository, records folder and markdown file. Re-run a record's
command (``bash benchmarks/rerun.sh`` lists them all), then ``python benchmarks/tables.py``."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ROOT

BENCHMARKS = ROOT / "benchmarks"
if str(BENCHMARKS) not in sys.path:  # as when a benchmark runs: the scripts import record and each other
    sys.path.insert(0, str(BENCHMARKS))

import record  # noqa: E402
import tables  # noqa: E402

REGENERATE = "regenerate the tables with: python benchmarks/tables.py"


@pytest.fixture
def repo_records(monkeypatch):
    """The repository's own records folder, whatever LIT_KD_RECORDS says."""
    monkeypatch.delenv(record.RECORDS_ENV, raising=False)


def readme_blocks() -> list[tuple[Path, tables.Block]]:
    return [(path, block) for path in tables.markdown_files() for block in tables.find_blocks(path.read_text("utf-8"))]


def where(path: Path, block: tables.Block) -> str:
    return f"{path.relative_to(ROOT)}:{block.start + 1} <!-- benchmark: {block.label} -->"


# (a)–(c): the repository's README (and docs/) against the repository's records


def test_every_record_is_shown_by_a_generated_block():
    """The tables live in docs/ (with their commands and prose) since the README became a short front page; the
    README may still hold a block, and tables.py rewrites both. A record no block shows is a figure nobody reads."""
    names = {block.name for _, block in readme_blocks()}
    records = {path.stem for path in record.records_dir().glob("*.json")}
    assert "loss_memory" in names
    assert records <= names, f"records without a block: {sorted(records - names)}"


def test_every_block_names_a_record_that_exists(repo_records):
    missing = [f"{where(path, block)}: no {record.record_path(block.name).relative_to(ROOT)}"
               for path, block in readme_blocks() if not record.record_path(block.name).is_file()]  # fmt: skip
    assert not missing, "\n".join([*missing, "run their commands (bash benchmarks/rerun.sh), then " + REGENERATE])


def test_every_block_has_a_renderer():
    lacking = []
    for path, block in readme_blocks():
        try:
            tables.renderer(block)
        except (ImportError, LookupError) as err:
            lacking.append(f"{where(path, block)}: {err}")
    assert not lacking, "\n".join(lacking)


def test_every_block_equals_its_rendering_from_its_record(repo_records):
    differing = []
    for path, block in readme_blocks():
        if not record.record_path(block.name).is_file():
            differing.append(f"{where(path, block)}: no record to render it from")
        elif block.content != tables.render(block, record.read_record(block.name)):
            differing.append(f"{where(path, block)} differs from its record")
    assert not differing, "\n".join([*differing, REGENERATE])


def test_every_record_is_fresh(repo_records):
    stale = []
    for path in sorted(record.records_dir().glob("*.json")):
        written = json.loads(path.read_text("utf-8"))
        changed = record.stale_sources(written)
        if changed:
            stale.append(f"{path.name}: {', '.join(changed)} changed since; re-run: {written['command']}")
    assert not stale, "\n".join([*stale, "then " + REGENERATE])


def test_rerun_sh_has_every_records_command(repo_records):
    commands = set((BENCHMARKS / "rerun.sh").read_text("utf-8").splitlines())
    missing = [f"{path.name}: {json.loads(path.read_text('utf-8'))['command']}"
               for path in sorted(record.records_dir().glob("*.json"))
               if json.loads(path.read_text("utf-8"))["command"] not in commands]  # fmt: skip
    assert not missing, "records whose command benchmarks/rerun.sh does not run:\n" + "\n".join(missing)


# (d): record.py and tables.py on a temporary repository


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    """A repository of one benchmark script and one imported ``lit_kd`` module, its records in a temporary folder,
    git answering for a commit with uncommitted changes."""
    root = tmp_path / "repo"
    script, module_file = root / "benchmarks" / "fake_bench.py", root / "lit_kd" / "fake_module.py"
    for path, text in ((script, "print('measuring')\n"), (module_file, "VALUE = 1\n")):
        path.parent.mkdir(parents=True)
        path.write_text(text)
    spec = importlib.util.spec_from_file_location("lit_kd_fake_module", module_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "lit_kd_fake_module", module)
    monkeypatch.setattr(record, "ROOT", root)
    monkeypatch.setattr(tables, "ROOT", root)
    monkeypatch.setenv(record.RECORDS_ENV, str(tmp_path / "records"))
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    calls = []

    def git(*args):
        calls.append(args)
        outputs = {"rev-parse": "0123456789abcdef0123456789abcdef01234567\n", "status": " M lit_kd/fake_module.py\n"}
        return outputs[args[0]]

    monkeypatch.setattr(record, "git", git)
    return SimpleNamespace(root=root, script=script, module=module_file, records=tmp_path / "records", git=calls)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_record_names_the_command_the_commit_the_machine_and_the_measured_sources(fake_repo, monkeypatch):
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    argv = [str(fake_repo.script), "--rows", "8", "--label", "two words"]
    path = record.write_record("fake_bench-v2", {"seconds": 1.23456789, "rows": 8, "pair": (0.5, None), 3: "x"},
                               argv=argv)  # fmt: skip
    assert path == fake_repo.records / "fake_bench-v2.json"
    written = record.read_record("fake_bench-v2")
    assert written["benchmark"] == "fake_bench.py"
    assert written["command"] == "python benchmarks/fake_bench.py --rows 8 --label 'two words'"
    assert written["commit"] == "0123456789abcdef0123456789abcdef01234567" and written["dirty"] is True
    assert ("status", "--porcelain", "--", "lit_kd", "benchmarks", ":(exclude)benchmarks/records") in fake_repo.git
    assert written["torch"] == torch.__version__ and written["threads"] == torch.get_num_threads()
    assert set(written["machine"]) == {"cpu", "logical_cpus", "memory_gib", "platform", "cuda"}
    assert written["thp_mem_alloc"] == "1"
    assert datetime.fromisoformat(written["date"]).utcoffset().total_seconds() == 0
    assert written["sources"] == {"benchmarks/fake_bench.py": sha256(fake_repo.script),
                                  "lit_kd/fake_module.py": sha256(fake_repo.module)}  # fmt: skip
    assert written["results"] == {"seconds": 1.23457, "rows": 8, "pair": [0.5, None], "3": "x"}
    assert sorted(p.name for p in fake_repo.records.iterdir()) == ["fake_bench-v2.json"]  # no temporary file left


def test_sources_of_other_processes_are_added_and_the_record_modules_are_not(fake_repo):
    other = fake_repo.root / "lit_kd" / "child_only.py"
    other.write_text("CHILD = 1\n")
    record.write_record("fake", {}, argv=[str(fake_repo.script)], sources=["lit_kd/child_only.py"])
    assert set(record.read_record("fake")["sources"]) == {
        "benchmarks/fake_bench.py", "lit_kd/fake_module.py", "lit_kd/child_only.py"}  # fmt: skip


def test_the_repository_modules_of_this_process_are_its_sources_but_record_and_tables():
    loaded = record.loaded_sources()
    assert "lit_kd/__init__.py" in loaded  # (the test suite imports lit_kd)
    assert not {"benchmarks/record.py", "benchmarks/tables.py"} & set(loaded)


def test_a_failed_write_leaves_the_previous_record_whole(fake_repo, monkeypatch):
    record.write_record("fake", {"value": 1}, argv=[str(fake_repo.script)])
    before = (fake_repo.records / "fake.json").read_bytes()
    with pytest.raises(ValueError, match="finite"):
        record.write_record("fake", {"value": float("nan")}, argv=[str(fake_repo.script)])

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(record.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        record.write_record("fake", {"value": 2}, argv=[str(fake_repo.script)])
    assert (fake_repo.records / "fake.json").read_bytes() == before
    assert [p.name for p in fake_repo.records.iterdir()] == ["fake.json"]


def test_a_changed_or_removed_source_makes_the_record_stale(fake_repo):
    record.write_record("fake", {"value": 1}, argv=[str(fake_repo.script)])
    assert record.stale_sources(record.read_record("fake")) == []
    fake_repo.module.write_text("VALUE = 2\n")
    assert record.stale_sources(record.read_record("fake")) == ["lit_kd/fake_module.py"]
    fake_repo.script.unlink()
    assert record.stale_sources(record.read_record("fake")) == ["benchmarks/fake_bench.py", "lit_kd/fake_module.py"]


@pytest.mark.parametrize("name", ["", "../fake", "a/b", ".hidden", "v 2"])
def test_a_record_name_is_a_plain_file_name(name):
    with pytest.raises(ValueError, match="record name"):
        record.record_path(name)


def test_the_records_folder_is_benchmarks_records_unless_overridden(monkeypatch, tmp_path):
    monkeypatch.delenv(record.RECORDS_ENV, raising=False)
    assert record.record_path("fsdp") == ROOT / "benchmarks" / "records" / "fsdp.json"
    monkeypatch.setenv(record.RECORDS_ENV, str(tmp_path))
    assert record.record_path("fsdp") == tmp_path / "fsdp.json"


MARKDOWN = """# Fake

Prose before, kept.

<!-- benchmark: fake -->
| value |
| old |
<!-- /benchmark -->

* a list item whose table is indented with it:

  <!-- benchmark: fake-big table=peaks -->
  old
  <!-- /benchmark -->

Prose after, kept.
"""


def fake_renderer(block: tables.Block):
    """A renderer of one value, naming the block's table key."""
    return lambda written: f"| value |\n|---:|\n| {written['results']['value']} ({block.table or 'table'}) |"


@pytest.fixture
def fake_readme(fake_repo, monkeypatch):
    record.write_record("fake", {"value": 1.5}, argv=[str(fake_repo.script)])
    record.write_record("fake-big", {"value": 2.5}, argv=[str(fake_repo.script), "--big"])
    readme = fake_repo.root / "README.md"
    readme.write_text(MARKDOWN)
    monkeypatch.setattr(tables, "renderer", fake_renderer)
    monkeypatch.setattr(tables, "markdown_files", lambda: [readme])
    return readme


def test_the_blocks_are_found_with_their_names_tables_and_indentation():
    found = tables.find_blocks(MARKDOWN)
    assert [(b.name, b.table, b.indent, b.start, b.end) for b in found] == [
        ("fake", None, "", 4, 7), ("fake-big", "peaks", "  ", 11, 13)]  # fmt: skip
    assert found[0].content == "| value |\n| old |"


@pytest.mark.parametrize(
    "text, message",
    [("<!-- benchmark: a -->\nx\n", "not closed"),
     ("<!-- benchmark: a -->\n<!-- benchmark: b -->\n<!-- /benchmark -->\n", "opens inside"),
     ("x\n<!-- /benchmark -->\n", "closes no block")],
)  # fmt: skip
def test_a_block_without_its_pair_is_refused_with_its_line(text, message):
    with pytest.raises(ValueError, match=message):
        tables.find_blocks(text)


def test_the_rewrite_renders_each_block_from_its_record_and_keeps_the_prose(fake_readme):
    assert tables.rewrite(fake_readme) == []
    first, big = record.read_record("fake"), record.read_record("fake-big")
    assert fake_readme.read_text() == MARKDOWN.replace(
        "| value |\n| old |", f"| value |\n|---:|\n| 1.5 (table) |\n\n{tables.footer(first)}"
    ).replace("  old\n", f"  | value |\n  |---:|\n  | 2.5 (peaks) |\n\n  {tables.footer(big)}\n")
    rewritten = fake_readme.read_text()
    assert tables.rewrite(fake_readme) == [] and fake_readme.read_text() == rewritten  # a second run changes nothing
    assert tables.main(["--check"]) == 0


def test_the_footer_names_the_command_commit_torch_threads_and_thp(fake_readme):
    assert tables.footer(record.read_record("fake-big")) == (
        f"<sub>python benchmarks/fake_bench.py --big · commit 0123456 with uncommitted changes · torch "
        f"{torch.__version__} · {torch.get_num_threads()} threads · THP_MEM_ALLOC_ENABLE unset</sub>"
    )


def test_the_check_names_a_block_that_differs_from_its_record(fake_readme, capsys):
    tables.rewrite(fake_readme)
    fake_readme.write_text(fake_readme.read_text().replace("| 1.5 (table) |", "| 1.4 (table) |"))
    assert tables.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "README.md:5 block 'fake' differs from its record; run python benchmarks/tables.py" in out
    assert "fake-big" not in out
    assert tables.main([]) == 0 and tables.main(["--check"]) == 0  # regenerated


def test_the_check_names_a_stale_record_and_its_command(fake_readme, fake_repo, capsys):
    tables.rewrite(fake_readme)
    fake_repo.module.write_text("VALUE = 2\n")
    assert tables.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert ("block 'fake-big table=peaks': record 'fake-big' is stale (lit_kd/fake_module.py changed since); re-run: "
            "python benchmarks/fake_bench.py --big") in out  # fmt: skip


def test_a_block_without_a_record_is_named_and_kept(fake_readme, fake_repo, capsys):
    (fake_repo.records / "fake.json").unlink()
    assert tables.main([]) == 1
    assert "README.md:5 block 'fake': no record" in capsys.readouterr().out
    assert "| value |\n| old |" in fake_readme.read_text()  # kept as it was
    assert "| 2.5 (peaks) |" in fake_readme.read_text()  # the other block rendered
