"""Conversations end to end through the command line: fit on the project's multi-turn set through a ChatML template
(every reply supervised, validation ROUGE-L on the last reply), evaluate the checkpoint with the rendering it was
trained with, generate-data that samples a conversation's last reply, and one line for a template-less tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from lit_kd.cli import main
from lit_kd.data import load_records
from tests.conftest import ROOT
from tests.data.chat_templates import CHAT_VOCAB, save_chat_tokenizer

CONVERSATIONS = ROOT / "data" / "demo" / "conversations.jsonl"


def chat_args(tmp, tokenizer: str) -> list[str]:
    return [
        "--config", str(ROOT / "configs" / "tiny.yaml"), "--config", str(ROOT / "configs" / "data" /
                                                                         "demo_conversations.yaml"),
        "--model.teacher.tokenizer", tokenizer, "--model.teacher.config.vocab_size", str(CHAT_VOCAB),
        "--model.teacher.config.max_position_embeddings", "1024", "--data.max_length", "1024",
        "--data.split_sizes", "[16, 4, 4]", "--data.cache_dir", str(tmp / "cache"),
        "--trainer.logger.init_args.save_dir", str(tmp / "logs"), "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chat")
    tokenizer = save_chat_tokenizer(tmp / "tokenizer")
    args = chat_args(tmp, tokenizer)
    main(["fit", *args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3"])
    version = tmp / "logs" / "tiny" / "version_0"
    return tmp, tokenizer, args, version


def test_fit_on_multi_turn_conversations_validates_on_the_last_reply(chat_run):
    tmp, _, _, version = chat_run
    summary = json.loads((version / "fit_summary.json").read_text())
    assert summary["global_step"] == 3 and summary["monitor"] == "val/rougeL"
    assert {"val/rougeL", "val/loss", "train/kd_loss"} <= set(summary["metrics"])
    (best,) = (version / "checkpoints").glob("best-*.ckpt")
    hparams = torch.load(best, map_location="cpu", weights_only=False)["lit_kd_hyper_parameters"]
    assert hparams["prompt_format"] == "chat_template"  # evaluate and export read it back


def test_evaluate_renders_the_benchmarks_as_the_checkpoint_was_trained(chat_run, monkeypatch):
    import lit_kd.eval.evaluate as evaluate_module

    tmp, _, _, version = chat_run
    (best,) = (version / "checkpoints").glob("best-*.ckpt")
    seen = []
    original = evaluate_module.encode_prompts

    def spy(rendering, records, settings):
        prompts = original(rendering, records, settings)
        seen.append(rendering.tokenizer.decode(prompts[0]))
        return prompts

    monkeypatch.setattr(evaluate_module, "encode_prompts", spy)
    heldout = ROOT / "data" / "demo" / "heldout.jsonl"
    common = ["evaluate", "--ckpt", str(best), "--benchmarks", f"[demo={heldout}]", "--seeds", "[1]",
              "--max_examples", "2", "--generation.max_new_tokens", "4", "--calibration", "false"]  # fmt: skip
    main([*common, "--out_dir", str(tmp / "eval-chat")])
    main([*common, "--out_dir", str(tmp / "eval-dolly"), "--prompt_format", "dolly"])
    first = load_records(str(heldout))[0]
    assert seen[0].startswith("<|im_start|>system\n") and seen[0].endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert f"<|im_start|>user\n{first['instruction']}\n\n{first['input']}<|im_end|>" in seen[0]
    assert seen[1].startswith("Below is an instruction") and seen[1].endswith("### Response:\n")
    settings = json.loads((tmp / "eval-chat" / "results.json").read_text())["settings"]
    assert settings["prompt_format"] == "chat_template"


def test_generate_data_samples_the_last_reply_of_each_conversation(chat_run):
    tmp, _, args, _ = chat_run
    main(["generate-data", *args, "--out", str(tmp / "seqkd"), "--sampling.max_new_tokens", "5"])
    written = [json.loads(line) for line in (tmp / "seqkd" / "train.jsonl").read_text().splitlines()]
    originals = [json.loads(line) for line in CONVERSATIONS.read_text().splitlines()]
    prompts = [row["messages"][:-1] for row in originals]
    assert len(written) == 16
    for row in written:
        assert row["messages"][:-1] in prompts and row["messages"][-1]["role"] == "assistant"
        assert row["generated_by"]["prompt_format"]["name"] == "chat_template"
    records = load_records(str(tmp / "seqkd" / "train.jsonl"))  # fit reads it back as conversations
    assert [r["output"] for r in records] == [row["messages"][-1]["content"] for row in written]


def test_a_tokenizer_without_a_chat_template_is_one_line_before_any_model_loads(tmp_path, capsys):
    from tests.conftest import TINY_TOKENIZER

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *chat_args(tmp_path, str(TINY_TOKENIZER))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lit_kd: error: data.prompt_format chat_template: the tokenizer") and "Traceback" not in err
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*"))


def test_an_export_names_its_prompt_format_and_evaluate_reads_it_back(chat_run):
    from lit_kd.data import ChatRendering, DollyRendering
    from lit_kd.models.export import exported_prompt_format
    from lit_kd.modules.loading import model_from_source
    from tests.conftest import TINY_TOKENIZER

    tmp, _, _, version = chat_run
    (best,) = (version / "checkpoints").glob("best-*.ckpt")
    main(["export", "--ckpt", str(best), "--out", str(tmp / "export")])
    assert exported_prompt_format(tmp / "export") == "chat_template"
    _, rendering, _ = model_from_source(str(tmp / "export"))
    assert isinstance(rendering, ChatRendering) and rendering.tokenizer.chat_template
    assert isinstance(model_from_source(str(tmp / "export"), prompt_format="dolly")[1], DollyRendering)
    assert exported_prompt_format(TINY_TOKENIZER) is None  # any other model directory: the Dolly template
