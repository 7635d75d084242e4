"""Model loading (config, local HF directory, GGUF errors), student derivation and vocabulary checks."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from lit_kd.models import (
    ModelConfig,
    ModelLoadError,
    StudentConfig,
    VocabularyMismatchError,
    check_same_tokenizer,
    derive_student,
    find_layer_stack,
    load_model,
    load_tokenizer,
    resolve_path,
    shared_vocab_size,
)
from tests.conftest import TINY_TOKENIZER, tiny_llama_config


def test_random_model_from_config_and_dtype():
    model = load_model(ModelConfig(config=tiny_llama_config(3), dtype="bfloat16"), "teacher")
    assert model.config.num_hidden_layers == 3 and model.dtype == torch.bfloat16


def test_local_hf_directory_round_trip(tmp_path, tiny_tokenizer):
    model = load_model(ModelConfig(config=tiny_llama_config(2)))
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    config = ModelConfig(path=str(tmp_path / "m"))
    loaded = load_model(config, "student")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert load_tokenizer(config).get_vocab() == tiny_tokenizer.get_vocab()


@pytest.mark.parametrize(
    "config, message",
    [
        (ModelConfig(path="/nonexistent/dir"), "model.teacher.path: model path not found: /nonexistent/dir"),
        (ModelConfig(gguf_file="/nonexistent/x.gguf"), "model.teacher.gguf_file: GGUF file not found: /nonexistent/x"),
        (ModelConfig(gguf_file="pkg://no_such_package_xyz/x.gguf"),
         "model.teacher.gguf_file: pkg://no_such_package_xyz/x.gguf: Python package 'no_such_package_xyz' is not"),
        (ModelConfig(), "teacher has no source"),
    ],
)
def test_missing_sources_are_clear_errors(config, message):
    with pytest.raises(ModelLoadError, match=message.replace(".", r"\.")):
        load_model(config, "teacher")


def test_tokenizer_errors_name_the_role():
    with pytest.raises(ModelLoadError, match="model.student.tokenizer: tokenizer path not found: ./missing/tokenizer"):
        load_tokenizer(ModelConfig(config=tiny_llama_config(), tokenizer="./missing/tokenizer"), "student")
    with pytest.raises(ModelLoadError, match="model.teacher.tokenizer: needed"):
        load_tokenizer(ModelConfig(config=tiny_llama_config()), "teacher")


def test_pkg_paths_resolve_inside_installed_packages():
    import lit_kd

    assert resolve_path("pkg://lit_kd/losses") == str(__import__("pathlib").Path(lit_kd.__file__).parent / "losses")


def test_config_validation():
    with pytest.raises(ValueError, match="dtype must be one of"):
        ModelConfig(path="x", dtype="float64")
    with pytest.raises(ValueError, match="not both"):
        ModelConfig(path="x", config={"model_type": "llama"})
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig(config={"hidden_size": 8})
    with pytest.raises(ValueError, match="strictly increasing"):
        StudentConfig(layers=[2, 1])
    with pytest.raises(ValueError, match="at least one layer"):
        StudentConfig(layers=[])


@pytest.mark.parametrize(
    "model_type, overrides",
    [
        ("llama", {}),
        ("gpt2", {"n_embd": 32, "n_head": 4, "n_layer": 4, "n_positions": 64, "vocab_size": 1000}),
        (
            "opt",
            {
                "hidden_size": 32,
                "num_attention_heads": 4,
                "ffn_dim": 64,
                "num_hidden_layers": 4,
                "max_position_embeddings": 64,
                "vocab_size": 1000,
                "word_embed_proj_dim": 32,
            },
        ),
    ],
)
def test_derived_student_copies_the_kept_layers(model_type, overrides):
    config = tiny_llama_config(4) if model_type == "llama" else {"model_type": model_type, **overrides}
    parent = load_model(ModelConfig(config=config))
    student = derive_student(parent, [0, 3])
    assert student.config.num_hidden_layers == 2
    parent_stack_name, parent_stack = find_layer_stack(parent)
    _, student_stack = find_layer_stack(student)
    for j, i in enumerate([0, 3]):
        for (name, a), (_, b) in zip(student_stack[j].state_dict().items(), parent_stack[i].state_dict().items()):
            assert torch.equal(a, b), f"{parent_stack_name}.{i}.{name}"
    non_layer = {k: v for k, v in student.state_dict().items() if not k.startswith(parent_stack_name + ".")}
    for key, value in non_layer.items():
        assert torch.equal(value, parent.state_dict()[key]), key
    # the copy is independent, and it runs (KV-cache layer indices renumbered)
    ids = torch.randint(0, 1000, (2, 9))
    assert student(input_ids=ids).logits.shape == (2, 9, 1000)
    out = student.generate(ids[:, :3], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 6)


def test_derive_student_rejects_out_of_range_layers():
    parent = load_model(ModelConfig(config=tiny_llama_config(4)))
    with pytest.raises(ValueError, match=r"into the 4 decoder layers of LlamaForCausalLM \(0 to 3\)"):
        derive_student(parent, [0, 4])


def test_vocabulary_checks(tiny_tokenizer, tmp_path):
    check_same_tokenizer(tiny_tokenizer, tiny_tokenizer, "a", "b")
    gpt2_like = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    gpt2_like.add_tokens(["<extra_token>"])
    with pytest.raises(
        VocabularyMismatchError, match=r"teacher 'big' \(1001 tokens\) and student 'small' \(1000 tokens\)"
    ):
        check_same_tokenizer(gpt2_like, tiny_tokenizer, "big", "small")
    # padded heads are compared over the real vocabulary (GPT-2's 50257 in a 50304-wide head)
    assert shared_vocab_size(tiny_tokenizer, 1024, 1000, "t", "s") == 1000
    with pytest.raises(VocabularyMismatchError, match=r"teacher 't' has 1000 .* student 's' has 900"):
        shared_vocab_size(tiny_tokenizer, 1000, 900, "t", "s")


def test_random_models_are_seeded_independently_of_the_global_rng():
    config = ModelConfig(config=tiny_llama_config(2))
    torch.manual_seed(1)
    a = load_model(config)
    torch.manual_seed(2)
    b = load_model(config)
    c = load_model(ModelConfig(config=tiny_llama_config(2), init_seed=5))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
