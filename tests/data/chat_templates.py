"""Chat templates of four families, written for the tests in the style of the released ones, and tokenizers that
carry them: the shipped tiny byte-level BPE with each family's special tokens added (ids 1000 and up)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tests.conftest import TINY_TOKENIZER

# ChatML with a default system prompt when the conversation has none (SmolLM2-Instruct's layout)
CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama-3 style: the template writes BOS, header tokens around the role, trims the content, <|eot_id|> ends a turn
LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Mistral style: [INST] ... [/INST], the reply then EOS; no system role (raises on one), strict alternation
MISTRAL = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)

# ChatML with {% generation %} markers around each reply and its end-of-turn token (what
# return_assistant_tokens_mask reads), no default system prompt
CHATML_GENERATION = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

FAMILIES = {
    "chatml": (CHATML, {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}),
    "llama3": (LLAMA3, {"bos_token": "<|begin_of_text|>",
                        "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}),
    "mistral": (MISTRAL, {"bos_token": "<s>", "eos_token": "</s>"}),
    "generation": (CHATML_GENERATION, {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}),
}  # fmt: skip
CHAT_VOCAB = 1004
"""A tiny model's vocabulary that covers every family's added tokens."""


def chat_tokenizer(family: str = "chatml") -> PreTrainedTokenizerFast:
    template, special = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    tokenizer.add_special_tokens(special)
    tokenizer.chat_template = template
    assert len(tokenizer) <= CHAT_VOCAB
    return tokenizer


def save_chat_tokenizer(directory: Path, family: str = "chatml") -> str:
    chat_tokenizer(family).save_pretrained(directory)
    return str(directory)
