"""Batched generation: seeding, EOS, left padding equivalence, prompt truncation."""

from __future__ import annotations

import pytest
import torch

from lit_kd.data.rendering import DollyRendering
from lit_kd.errors import ConfigError
from lit_kd.eval import SamplingConfig, encode_prompts, generate_ids, generate_responses
from lit_kd.models import ModelConfig, load_model
from tests.conftest import tiny_llama_config

RECORDS = [
    {"instruction": "Name a fruit.", "input": ""},
    {"instruction": "Summarize the passage.", "input": "Cats sleep a lot during the day and hunt at night."},
    {"instruction": "Why is the sky blue?", "input": ""},
    {"instruction": "Add two and two.", "input": ""},
    {"instruction": "Give a synonym for quick.", "input": ""},
]


@pytest.fixture
def tiny_model():
    return load_model(ModelConfig(config=tiny_llama_config(2, initializer_range=0.5)))


def test_same_seed_same_text_and_different_seeds_differ(tiny_model, tiny_tokenizer):
    settings = SamplingConfig(max_new_tokens=12, batch_size=2)
    a = generate_responses(tiny_model, DollyRendering(tiny_tokenizer), RECORDS, settings, seed=10)
    b = generate_responses(tiny_model, DollyRendering(tiny_tokenizer), RECORDS, settings, seed=10)
    c = generate_responses(tiny_model, DollyRendering(tiny_tokenizer), RECORDS, settings, seed=20)
    assert a == b
    assert a != c


def test_sampling_leaves_the_callers_rng_alone(tiny_model, tiny_tokenizer):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    rendering = DollyRendering(tiny_tokenizer)
    generate_responses(tiny_model, rendering, RECORDS[:2], SamplingConfig(max_new_tokens=4), seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(tiny_model, tiny_tokenizer):
    prompts = encode_prompts(DollyRendering(tiny_tokenizer), RECORDS, SamplingConfig())
    assert len({len(p) for p in prompts}) > 1  # different lengths: padding matters
    batched = generate_ids(tiny_model, tiny_tokenizer, prompts, SamplingConfig(max_new_tokens=10, greedy=True), 0)
    single = generate_ids(
        tiny_model, tiny_tokenizer, prompts, SamplingConfig(max_new_tokens=10, greedy=True, batch_size=1), 0
    )
    assert batched == single


def test_responses_end_at_the_first_eos(tiny_model, tiny_tokenizer, monkeypatch):
    eos = tiny_tokenizer.eos_token_id
    continuations = [[7, 8, eos, 9], [eos, 5, 5, 5]]

    def fake_generate(input_ids, attention_mask, generation_config, logits_processor):
        assert generation_config.eos_token_id == eos  # HF stops each row at EOS; we cut what follows
        return torch.cat([input_ids, torch.tensor(continuations)], dim=1)

    monkeypatch.setattr(tiny_model, "generate", fake_generate)
    prompts = encode_prompts(DollyRendering(tiny_tokenizer), RECORDS[:2], SamplingConfig())
    assert generate_ids(tiny_model, tiny_tokenizer, prompts, SamplingConfig(max_new_tokens=4), 0) == [[7, 8], []]


def test_responses_end_at_a_chat_templates_end_of_turn_token_or_eos(tiny_model, monkeypatch):
    """Under a chat template generation stops at the end-of-turn token as well as at EOS (kept with keep_eos: the
    target of a sampled reply ends with it)."""
    from lit_kd.data.rendering import make_rendering
    from tests.data.chat_templates import chat_tokenizer

    rendering = make_rendering(chat_tokenizer("chatml"), "chat_template")
    tokenizer, end_of_turn, eos = rendering.tokenizer, rendering.end_of_turn, rendering.tokenizer.eos_token_id
    assert rendering.stop_ids == sorted({end_of_turn, eos}) and end_of_turn != eos
    continuations = [[7, end_of_turn, 9], [8, eos, 5], [5, 6, 7]]

    def fake_generate(input_ids, attention_mask, generation_config, logits_processor):
        assert sorted(generation_config.eos_token_id) == rendering.stop_ids  # HF stops a row at either
        return torch.cat([input_ids, torch.tensor(continuations)], dim=1)

    monkeypatch.setattr(tiny_model, "generate", fake_generate)
    prompts = encode_prompts(rendering, RECORDS[:3], SamplingConfig())
    assert all(tokenizer.decode(p).endswith("<|im_start|>assistant\n") for p in prompts)
    settings = SamplingConfig(max_new_tokens=3)
    stops = rendering.stop_ids
    assert generate_ids(tiny_model, tokenizer, prompts, settings, 0, stop_ids=stops) == [[7], [8], [5, 6, 7]]
    assert generate_ids(tiny_model, tokenizer, prompts, settings, 0, stop_ids=stops, keep_eos=True) == [
        [7, end_of_turn], [8, eos], [5, 6, 7]]  # fmt: skip


def test_long_prompts_keep_their_end(tiny_tokenizer):
    settings = SamplingConfig(max_new_tokens=16, max_length=40)
    long = [{"instruction": "word " * 200, "input": ""}]
    (ids,) = encode_prompts(DollyRendering(tiny_tokenizer), long, settings)
    assert len(ids) == 24 and tiny_tokenizer.decode(ids).endswith("### Response:\n")


@pytest.mark.parametrize(
    "kwargs", [{"max_new_tokens": 0}, {"temperature": 0.0}, {"top_p": 0.0}, {"max_length": 8, "max_new_tokens": 8}]
)
def test_sampling_config_is_checked(kwargs):
    with pytest.raises(ConfigError):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize("greedy", [False, True])
def test_the_models_own_generation_defaults_do_not_leak_in(tiny_model, tiny_tokenizer, monkeypatch, greedy):
    """transformers fills unset fields from the model's generation_config and its global defaults (top_k=50):
    a real generate call must shape the logits with nothing at all (temperature 1, no truncation)."""
    from transformers import GenerationConfig

    tiny_model.generation_config = GenerationConfig(top_k=5, top_p=0.5, repetition_penalty=1.7, no_repeat_ngram_size=2)
    seen = []
    original = tiny_model._get_logits_processor

    def recording(*args, **kwargs):
        processors = original(*args, **kwargs)
        seen.append([type(p).__name__ for p in processors])
        return processors

    monkeypatch.setattr(tiny_model, "_get_logits_processor", recording)
    prompts = encode_prompts(DollyRendering(tiny_tokenizer), RECORDS[:2], SamplingConfig())
    generate_ids(tiny_model, tiny_tokenizer, prompts, SamplingConfig(max_new_tokens=3, greedy=greedy), seed=0)
    # no top-k, top-p, repetition penalty, n-gram ban or temperature warper: only the draw when sampling
    assert seen == [[] if greedy else ["InverseCdfSampler"]]
    assert tiny_model.generation_config.top_k == 5  # the model's own config is left as it was
    truncating = SamplingConfig(max_new_tokens=3, top_k=7, top_p=0.9, temperature=0.7)
    generate_ids(tiny_model, tiny_tokenizer, prompts, truncating, seed=0)
    assert seen[-1] == ["TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "InverseCdfSampler"]


def test_inverse_cdf_sampler_draws_from_the_softmax():
    """Frequencies over 40,000 draws match softmax(scores) (a chi-square bound), a −inf entry is never drawn,
    and the output is one-hot: 0 at the drawn token, −inf elsewhere."""
    from lit_kd.eval.generate import InverseCdfSampler

    scores = torch.tensor([[2.0, 0.5, float("-inf"), -1.0, 1.0], [float("-inf"), 0.0, 0.0, float("-inf"), 3.0]])
    rows = 20_000
    torch.manual_seed(0)
    out = InverseCdfSampler()(torch.zeros(1), scores.repeat_interleave(rows, 0))
    assert out.shape == (2 * rows, 5) and bool(((out == 0).sum(-1) == 1).all())
    assert bool(((out == 0) | (out == float("-inf"))).all())
    drawn = out.argmax(-1).view(2, rows)
    for row in range(2):
        expected = torch.softmax(scores[row].double(), -1) * rows
        counts = torch.bincount(drawn[row], minlength=5).double()
        assert counts[expected == 0].sum() == 0  # −inf: never drawn
        kept = expected > 0
        chi2 = float((((counts - expected) ** 2)[kept] / expected[kept]).sum())
        assert chi2 < 20.0  # 4 degrees of freedom at most: p ≈ 5e-4


def test_inverse_cdf_sampler_is_seeded_by_the_global_generator():
    from lit_kd.eval.generate import InverseCdfSampler

    scores = torch.randn(6, 50)
    torch.manual_seed(3)
    a = InverseCdfSampler()(torch.zeros(1), scores)
    torch.manual_seed(3)
    b = InverseCdfSampler()(torch.zeros(1), scores)
    assert torch.equal(a, b)


@pytest.mark.parametrize("rows", [1, 8, 33])
def test_rows_as_columns_head_equals_the_linear_head(rows):
    from lit_kd.eval.generate import RowsAsColumnsHead

    torch.manual_seed(0)
    for bias in (False, True):
        head = torch.nn.Linear(16, 9000, bias=bias).double()
        hidden = torch.randn(rows, 2, 16, dtype=torch.float64)
        torch.testing.assert_close(RowsAsColumnsHead(head)(hidden), head(hidden))


def test_a_wide_cpu_head_is_swapped_for_generation_and_restored(tiny_tokenizer, monkeypatch):
    """A head of at least WIDE_HEAD outputs decodes through RowsAsColumnsHead (seen by the model's forward) and is
    the same module again afterwards; a narrower head is left alone. Sampled text does not depend on the swap."""
    from lit_kd.eval import generate as generation

    model = load_model(ModelConfig(config=tiny_llama_config(2, initializer_range=0.5)))
    head = model.get_output_embeddings()
    seen = []
    forward = model.forward

    def recording(*args, **kwargs):
        seen.append(type(model.get_output_embeddings()).__name__)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    prompts = encode_prompts(DollyRendering(tiny_tokenizer), RECORDS[:3], SamplingConfig())
    settings = SamplingConfig(max_new_tokens=4)
    narrow = generate_ids(model, tiny_tokenizer, prompts, settings, seed=4)
    assert set(seen) == {"Linear"}
    monkeypatch.setattr(generation, "WIDE_HEAD", head.out_features)
    seen.clear()
    wide = generate_ids(model, tiny_tokenizer, prompts, settings, seed=4)
    assert set(seen) == {"RowsAsColumnsHead"} and model.get_output_embeddings() is head
    assert wide == narrow
