"""The teacher cache: head(hidden) = logits per family, cached = live loss and gradients, stale or damaged
caches refused before training, the command builds once and reuses."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from lit_kd.cli import main
from lit_kd.data import DollyDataModule
from lit_kd.errors import CacheError, ConfigError
from lit_kd.losses import LossConfig
from lit_kd.models import ModelConfig, StudentConfig, load_model
from lit_kd.models.head import verify_head
from lit_kd.modules import DistillModule
from lit_kd.teacher import TeacherCache
from lit_kd.teacher.build import write_teacher_cache
from tests.conftest import DEMO_DATA, ROOT, TINY_TOKENIZER, tiny_llama_config

FAMILIES = {
    "llama": tiny_llama_config(3),
    "gpt2": {"model_type": "gpt2", "vocab_size": 1000, "n_embd": 32, "n_layer": 3, "n_head": 4, "n_positions": 512,
             "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0},
    # word_embed_proj_dim < hidden_size: OPT's project_in/project_out are in the model
    "opt": {"model_type": "opt", "vocab_size": 1000, "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 3,
            "num_attention_heads": 4, "max_position_embeddings": 512, "word_embed_proj_dim": 16,
            "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0},
}  # fmt: skip


def tiny_data(tmp_path, tokenizer, **kwargs) -> DollyDataModule:
    options = dict(raw=str(DEMO_DATA), split_sizes=(24, 8, 8), max_length=128, batch_size=4)
    data = DollyDataModule(**{**options, **kwargs}, cache_dir=str(tmp_path / "tokenized"))
    data.connect(tokenizer)
    return data


def module_for(family: str, loss: LossConfig | None = None, **kwargs) -> DistillModule:
    teacher = ModelConfig(config=FAMILIES[family], tokenizer=str(TINY_TOKENIZER))
    return DistillModule(
        student=StudentConfig(layers=[0, 2]), teacher=teacher, loss=loss or LossConfig("js", tau=2.0), **kwargs
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_lm_head_of_the_last_hidden_state_is_the_logits(family):
    model = load_model(ModelConfig(config=FAMILIES[family]))
    if family == "opt":
        assert model.model.decoder.project_out is not None
    verify_head(model, "teacher")  # no error: exact


def test_an_architecture_that_caps_its_logits_is_refused():
    config = {"model_type": "gemma2", "vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
              "final_logit_softcapping": 0.5}  # fmt: skip
    with pytest.raises(ConfigError, match=r"its config sets final_logit_softcapping=0\.5.*max difference"):
        verify_head(load_model(ModelConfig(config=config)), "teacher")


@pytest.mark.parametrize("chunk_size", [6, None])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cached_teacher_equals_the_live_one(tmp_path, family, chunk_size):
    live = module_for(family, chunk_size=chunk_size, kd_ratio=0.8)
    live.configure_model()
    data = tiny_data(tmp_path, live.tokenizer)
    cache = write_teacher_cache(live.teacher_config, live.tokenizer, data, tmp_path / "cache")
    cached = module_for(family, chunk_size=chunk_size, kd_ratio=0.8, teacher_cache=str(cache))
    cached.configure_model()
    assert cached.teacher is None  # the body was released after cutting the student
    for split, loader in (("train", data.train_dataloader()), ("val", data.val_dataloader())):
        batch = next(iter(loader))
        results = []
        for module in (live, cached):
            module.eval()  # no dropout (GPT-2, OPT): the same computation twice
            module.student.zero_grad()
            sums = module.compute_losses(batch, split)
            (sums.loss / sums.tokens).backward()
            results.append((sums, [p.grad.clone() for p in module.student.parameters()]))
        (a, grads_a), (b, grads_b) = results
        assert a.tokens == b.tokens
        for name in ("loss", "kd_loss", "lm_loss"):
            assert float(b.mean(name)) == pytest.approx(float(a.mean(name)), rel=1e-5, abs=1e-6), (split, name)
        for x, y in zip(grads_a, grads_b):
            assert (x - y).abs().max() <= 1e-5 * max(y.abs().max(), 1e-6)


@pytest.mark.parametrize("rule", ["logit_standardization", "sharpness_matching", "entropy_target"])
def test_a_tau_rule_reads_the_cached_teacher_as_the_live_one(tmp_path, rule):
    """Per-token temperatures come from the teacher's logits, which the cache rebuilds exactly: the same τ per
    token, the same loss and gradients."""
    loss = LossConfig("rkl", tau=2.0, tau_rule=rule)
    live = module_for("llama", loss=loss, chunk_size=6, kd_ratio=0.8)
    live.configure_model()
    data = tiny_data(tmp_path, live.tokenizer)
    cache = write_teacher_cache(live.teacher_config, live.tokenizer, data, tmp_path / "cache")
    cached = module_for("llama", loss=loss, chunk_size=6, kd_ratio=0.8, teacher_cache=str(cache))
    cached.configure_model()
    batch = next(iter(data.train_dataloader()))
    results = []
    for module in (live, cached):
        module.student.zero_grad()
        sums = module.compute_losses(batch, "train")
        (sums.loss / sums.tokens).backward()
        results.append((sums, [p.grad.clone() for p in module.student.parameters()]))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(b.teacher_tau, a.teacher_tau, rtol=1e-5, atol=1e-6)
    assert float(b.mean("loss")) == pytest.approx(float(a.mean("loss")), rel=1e-5)
    for x, y in zip(grads_a, grads_b):
        assert (x - y).abs().max() <= 1e-5 * max(y.abs().max(), 1e-6)


def test_a_bfloat16_cache_is_half_the_size_and_close(tmp_path):
    live = module_for("llama")
    live.configure_model()
    data = tiny_data(tmp_path, live.tokenizer)
    exact = write_teacher_cache(live.teacher_config, live.tokenizer, data, tmp_path / "fp32")
    half = write_teacher_cache(live.teacher_config, live.tokenizer, data, tmp_path / "bf16", dtype="bfloat16")
    size = lambda folder: sum(p.stat().st_size for p in folder.glob("train-*.safetensors"))  # noqa: E731
    assert size(half) < 0.55 * size(exact)
    batch = next(iter(data.train_dataloader()))
    values = []
    for cache in (exact, half):
        module = module_for("llama", teacher_cache=str(cache))
        module.configure_model()
        with torch.no_grad():
            values.append(float(module.compute_losses(batch, "train").mean("kd_loss")))
    assert values[0] != values[1] and values[1] == pytest.approx(values[0], rel=1e-2)


def snapshot(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory):
    """A cache built by the command for configs/tiny.yaml, and an earlier run's outputs beside it (shared:
    the tests below must leave them as they are)."""
    tmp_path = tmp_path_factory.mktemp("cached_run")
    args = [
        "--config", str(ROOT / "configs" / "tiny.yaml"), "--model.teacher.tokenizer", str(TINY_TOKENIZER),
        "--data.raw", str(DEMO_DATA), "--data.cache_dir", str(tmp_path / "tokenized"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--trainer.enable_progress_bar", "false",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    main(["cache-teacher", *args, "--out", str(tmp_path / "cache")])
    main(["fit", *args, "--model.teacher_cache", str(tmp_path / "cache")])  # the earlier run, from the cache
    return tmp_path, args


STALE = [
    ("another teacher", ["--model.teacher.init_seed", "3"], "its teacher (cache: random llama from config, this run"),
    ("another data file", ["--data.split_seed", "7"], "train data (another file or content)"),
    ("another max length", ["--data.max_length", "200"], "max_length (cache: 256, this run: 200)"),
]


@pytest.mark.parametrize("label, override, expected", STALE, ids=[row[0] for row in STALE])
def test_a_stale_cache_is_one_clear_error_before_training(cached_run, capsys, label, override, expected):
    tmp_path, args = cached_run
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, *override, "--model.teacher_cache", str(tmp_path / "cache")])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        line.startswith(f"lit_kd: error: teacher cache {tmp_path / 'cache'} was built for another run")
        and expected in line
    )
    assert "cache-teacher" in line
    assert snapshot(tmp_path) == before  # nothing written, nothing lost


def test_a_truncated_cache_file_is_one_clear_error(cached_run, capsys, tmp_path):
    import shutil

    shared, args = cached_run
    cache = shutil.copytree(shared / "cache", tmp_path / "cache")
    shard = cache / "train-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    before = snapshot(shared), snapshot(tmp_path)
    with pytest.raises(SystemExit):
        main(["fit", *args, "--model.teacher_cache", str(cache)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "train-00000.safetensors is truncated or altered" in line and "rebuild the cache" in line
    assert (snapshot(shared), snapshot(tmp_path)) == before


def test_the_command_reuses_a_matching_cache_and_refuses_a_foreign_folder(cached_run, capsys):
    tmp_path, args = cached_run
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "val"} and manifest["dtype"] == "float32"  # the default --splits
    before = snapshot(tmp_path / "cache")
    capsys.readouterr()
    main(["cache-teacher", *args, "--out", str(tmp_path / "cache")])
    assert "is up to date" in capsys.readouterr().out and snapshot(tmp_path / "cache") == before
    with pytest.raises(SystemExit):
        main(["cache-teacher", *args, "--data.max_length", "64", "--out", str(tmp_path / "cache")])
    assert "was built for another run" in capsys.readouterr().err and snapshot(tmp_path / "cache") == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["cache-teacher", *args, "--out", str(tmp_path / "other")])
    assert "exists and is not a teacher cache" in capsys.readouterr().err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_reading_rows_checks_them_against_the_batch(tmp_path):
    live = module_for("llama")
    live.configure_model()
    data = tiny_data(tmp_path, live.tokenizer)
    cache = TeacherCache.open(write_teacher_cache(live.teacher_config, live.tokenizer, data, tmp_path / "cache"))
    batch = next(iter(data.val_dataloader()))
    counts = (batch["labels"][:, 1:] != -100).sum(1).tolist()
    assert cache.rows("val", batch["index"].tolist(), counts).shape == (sum(counts), 32)
    with pytest.raises(CacheError, match="has 1 cached rows|cached rows but"):
        cache.rows("val", batch["index"].tolist(), [c + 1 for c in counts])
    with pytest.raises(CacheError, match="val example 999 is not in the cache"):
        cache.rows("val", [999])


def test_a_split_the_cache_lacks_is_named_when_it_is_read(tmp_path):
    live = module_for("llama")
    live.configure_model()
    data = tiny_data(tmp_path, live.tokenizer)
    cache = write_teacher_cache(live.teacher_config, live.tokenizer, data, tmp_path / "cache", splits=("train",))
    module = module_for("llama", teacher_cache=str(cache))
    module.configure_model()
    batch = next(iter(data.val_dataloader()))
    with pytest.raises(CacheError, match=r"has no 'val' split \(built with --splits train\); rebuild it with --splits"):
        module.compute_losses(batch, "val")


def test_a_second_build_on_the_same_cache_is_one_line_naming_the_owner(cached_run, capsys, tmp_path):
    import os

    from lit_kd.teacher.build import build_lock

    _, args = cached_run
    target = tmp_path / "cache"
    with build_lock(target).acquire():  # a build of this cache is running (this process holds its lock)
        with pytest.raises(SystemExit) as exit_info:
            main(["cache-teacher", *args, "--out", str(target)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and line.startswith(f"lit_kd: error: teacher cache {target} is in use by pid")
    assert f"pid {os.getpid()} on host" in line and not target.exists()
    main(["cache-teacher", *args, "--out", str(target)])  # the lock is released: the build runs
    assert (target / "manifest.json").is_file() and not list(tmp_path.glob(".cache.build.lock"))


def test_the_temporary_folder_of_a_killed_build_is_removed_by_the_next_build_or_run(cached_run, capsys, tmp_path):
    import shutil

    shared, args = cached_run
    cache = shutil.copytree(shared / "cache", tmp_path / "cache")
    orphans = [tmp_path / ".cache.0123456789abcdef.tmp", tmp_path / ".cache.fedcba9876543210.tmp"]
    for orphan in orphans:  # what a build killed half-way leaves: the head and part of the shards
        orphan.mkdir()
        (orphan / "head.safetensors").write_bytes(b"0" * 1000)
    unrelated = tmp_path / ".other.0123456789abcdef.tmp"
    unrelated.mkdir()
    capsys.readouterr()
    main(["cache-teacher", *args, "--out", str(cache)])  # up to date: it builds nothing, but cleans
    out = capsys.readouterr().out
    assert not orphans[0].exists() and f"removed {orphans[0]}, the temporary folder of a teacher-cache build" in out
    orphans[1].mkdir()
    main(["fit", *args, "--model.teacher_cache", str(cache)])  # a run that reads the cache cleans too
    assert not orphans[1].exists() and unrelated.is_dir()


def test_a_full_disk_during_a_build_gives_a_message_that_adds_up(tmp_path, monkeypatch, capsys):
    """The space needed counts the LM head and the manifest; the free space is the one measured before the build
    wrote anything (not after its cleanup)."""
    import errno

    import lit_kd.teacher.cache as cache_module
    from lit_kd.errors import OutOfSpaceError
    from lit_kd.utils.io import human_bytes

    live = module_for("llama")
    live.configure_model()
    data = tiny_data(tmp_path, live.tokenizer)
    real_write = cache_module.write_safetensors

    def fills_the_disk(tensors, path):
        if "hidden" in tensors:  # the head is written, the first shard is not
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(tensors, path)

    free = iter([10**9] + [10**3] * 100)  # before the build, then what the failed write left
    monkeypatch.setattr(cache_module, "write_safetensors", fills_the_disk)
    monkeypatch.setattr("lit_kd.utils.io.free_space", lambda folder: next(free))
    with pytest.raises(OutOfSpaceError) as error:
        write_teacher_cache(live.teacher_config, live.tokenizer, data, tmp_path / "cache")
    message = str(error.value)
    head = live.teacher.get_output_embeddings().weight
    needed = float(message.split("it needs about ")[1].split(" KB")[0]) * 1024
    assert needed >= head.numel() * head.element_size()  # the head is part of it
    assert f"; {human_bytes(10**9)} free in {tmp_path} when it began" in message
    assert not (tmp_path / "cache").exists() and not list(tmp_path.glob(".cache.*.tmp"))


def test_a_cache_file_changed_in_place_is_one_clear_error(cached_run, capsys, tmp_path):
    """Values with flipped signs in a shard (the same size, the same offsets) are caught by its content digest."""
    import shutil

    shared, args = cached_run
    cache = shutil.copytree(shared / "cache", tmp_path / "cache")
    for name in ("train-00000.safetensors", "head.safetensors"):
        changed = cache / name
        data = bytearray(changed.read_bytes())
        middle = len(data) // 2 // 4 * 4
        for k in range(16):  # flip the sign bit of 16 float32 values in the middle of the tensor data
            data[middle + 4 * k + 3] ^= 0x80
        changed.write_bytes(bytes(data))
        before = snapshot(tmp_path)
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *args, "--model.teacher_cache", str(cache)])
        assert exit_info.value.code == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(f"lit_kd: error: teacher cache {cache}: {name} was changed after it was written")
        assert "rebuild the cache" in line and snapshot(tmp_path) == before
        shutil.copy2(shared / "cache" / name, changed)


def test_the_teachers_identity_covers_every_byte_of_its_weights(tmp_path, monkeypatch):
    """A change in the middle of a weights file (a LoRA merged into the same path) makes another teacher; the digest
    of an unchanged file is remembered, not recomputed."""
    import lit_kd.teacher.cache as cache_module
    from lit_kd.models import ModelConfig, load_model
    from lit_kd.teacher.cache import teacher_identity

    monkeypatch.setenv("LIT_KD_CACHE", str(tmp_path / "lit_kd_cache"))
    directory = tmp_path / "teacher"
    big = tiny_llama_config(2, hidden_size=256, intermediate_size=512)  # about 6 MB of weights
    model = load_model(ModelConfig(config=big, tokenizer=str(TINY_TOKENIZER)), "teacher")
    model.save_pretrained(directory)
    config = ModelConfig(path=str(directory), tokenizer=str(TINY_TOKENIZER))
    hashed = []
    real_digest = cache_module.remembered_file_digest.__globals__["file_digest"]
    monkeypatch.setitem(cache_module.remembered_file_digest.__globals__, "file_digest",
                        lambda path: hashed.append(path) or real_digest(path))  # fmt: skip
    first = teacher_identity(config)
    assert teacher_identity(config) == first and len(hashed) == 2  # config.json and the weights, each hashed once
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    assert middle > 2 << 20  # beyond the first and last MiB
    data[middle] ^= 0x01
    weights.write_bytes(bytes(data))
    assert teacher_identity(config)["files"]["model.safetensors"] != first["files"]["model.safetensors"]


def test_the_cached_teacher_equals_the_live_one_under_a_chat_template_and_is_keyed_by_it(tmp_path):
    """Multi-turn conversations through a ChatML template, every reply supervised: cached = live loss and
    gradients; a cache of these replies is refused for the last reply only (another rendering)."""
    from lit_kd.errors import CacheError
    from lit_kd.teacher import cache_key
    from tests.data.chat_templates import CHAT_VOCAB, save_chat_tokenizer

    teacher = ModelConfig(config=tiny_llama_config(3, vocab_size=CHAT_VOCAB),
                          tokenizer=save_chat_tokenizer(tmp_path / "tokenizer"))  # fmt: skip
    arguments = dict(student=StudentConfig(layers=[0, 2]), teacher=teacher, loss=LossConfig("js", tau=2.0),
                     chunk_size=6, kd_ratio=0.8, prompt_format="chat_template")  # fmt: skip
    live = DistillModule(**arguments)
    live.configure_model()
    conversations = str(ROOT / "data" / "demo" / "conversations.jsonl")
    data = tiny_data(tmp_path, live.tokenizer, raw=conversations, split_sizes=(12, 4, 4), max_length=512,
                     prompt_format="chat_template")  # fmt: skip
    cache = TeacherCache.open(write_teacher_cache(live.teacher_config, live.tokenizer, data, tmp_path / "cache"))
    assert cache.key.template == data.rendering.fingerprint and cache.key.template.startswith("chat-")
    cached = DistillModule(**arguments, teacher_cache=str(cache.path))
    cached.configure_model()
    for split, loader in (("train", data.train_dataloader()), ("val", data.val_dataloader())):
        batch = next(iter(loader))
        records = data.load_split_records()[split]
        assert all(sum(m["role"] == "assistant" for m in record["messages"]) == 2 for record in records)
        results = []
        for module in (live, cached):
            module.student.zero_grad()
            sums = module.compute_losses(batch, split)
            (sums.loss / sums.tokens).backward()
            results.append((sums, [p.grad.clone() for p in module.student.parameters()]))
        (a, grads_a), (b, grads_b) = results
        assert a.tokens == b.tokens == int((batch["labels"][:, 1:] != -100).sum())
        assert float(b.mean("loss")) == pytest.approx(float(a.mean("loss")), rel=1e-5, abs=1e-6), split
        for x, y in zip(grads_a, grads_b):
            assert (x - y).abs().max() <= 1e-5 * max(y.abs().max(), 1e-6)
    last = tiny_data(tmp_path, live.tokenizer, raw=conversations, split_sizes=(12, 4, 4), max_length=512,
                     prompt_format="chat_template", supervised_turns="last")  # fmt: skip
    key = cache_key(teacher, live.tokenizer, last.load_split_records(), 512, last.fingerprints())
    with pytest.raises(CacheError, match="prompt format"):
        cache.check(key)
