"""``DistillModule``: a frozen teacher, a trainable student and a τ-scaled objective from the registry.

    L = Σ_i [(1 − kd_ratio) · CE_i + kd_ratio · d_i(student, teacher; τ)] / N_step

over the response positions i (labels ≠ −100 after the causal shift) of the whole optimizer step: N_step
counts the response tokens of every micro-batch of the accumulation window on every process.

The module is the step. Its collaborators do the rest: ``lit_kd.models.pair`` builds the models,
``lit_kd.teacher`` supplies the teacher (live, or a cache of its hidden states), ``lit_kd.losses.chunked``
computes the token sums (chunked through the LM heads), ``lit_kd.modules.normalization`` divides by the
step's tokens, ``lit_kd.eval.val_rouge`` generates and scores during validation, and the callbacks of
``configure_callbacks`` keep the RNG states in checkpoints and give the LR schedule its horizon.

The teacher is kept outside the module's registered children: it is never in the optimizer, never in
``state_dict`` (a checkpoint is student-sized), never wrapped by DDP/FSDP (it is replicated and frozen on
every device); it follows the module to its device when a stage starts. With ``teacher: null`` and
``kd_ratio: 0`` the same module fine-tunes a model with the LM loss only (the teacher-SFT stage).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_kd.data.tokenize import IGNORE_INDEX
from lit_kd.errors import CheckpointError, ConfigError, NonFiniteError
from lit_kd.eval.val_rouge import GenerationRouge, ValidationRouge
from lit_kd.losses import LossConfig
from lit_kd.losses.chunked import TokenSums, chunked_token_sums, token_sums_from_logits
from lit_kd.models import ModelConfig, StudentConfig
from lit_kd.models.head import final_hidden_states, output_head, verify_head
from lit_kd.models.pair import build_pair, check_student_layers, pair_tokenizer, pair_vocab_size
from lit_kd.modules.callbacks import RNGStates, ScheduleHorizon
from lit_kd.modules.normalization import StepNormalizer
from lit_kd.modules.policy import PolicyConfig, StudentPolicy
from lit_kd.modules.schedule import WarmupCosineLR
from lit_kd.teacher import CachedTeacher, LiveTeacher, TeacherCache, cache_key

HPARAMS_KEY = "lit_kd_hyper_parameters"
"""Where checkpoints keep the module's arguments, as plain data (see ``on_save_checkpoint``)."""


def check_student_state(expected: dict[str, Tensor], given: dict[str, Tensor], source: str) -> None:
    """Raise ``CheckpointError`` unless ``given`` has exactly the student's tensor names and shapes."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong_shape = [k for k in expected if k in given and given[k].shape != expected[k].shape]
    if not (missing or unexpected or wrong_shape):
        return
    details = []
    if missing:
        details.append(f"{len(missing)} student tensors missing (e.g. {missing[0]})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong_shape:
        k = wrong_shape[0]
        details.append(f"shape of {k} is {tuple(given[k].shape)}, the student has {tuple(expected[k].shape)}")
    raise CheckpointError(f"{source} was saved from another student architecture: " + "; ".join(details))


def plain(value: Any) -> Any:
    """Dataclasses as dicts, recursively: checkpoint hyperparameters that ``torch.load(weights_only=True)`` reads."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class DistillModule(L.LightningModule):
    def __init__(
        self,
        student: StudentConfig,
        teacher: Optional[ModelConfig] = None,
        loss: LossConfig = LossConfig(),
        kd_ratio: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: Optional[LRSchedulerCallable] = WarmupCosineLR,
        diagnostics: bool = True,
        val_rouge: Optional[ValidationRouge] = None,
        nonfinite: str = "raise",
        teacher_cache: Optional[str] = None,
        chunk_size: Optional[int] = 512,
        policy: Optional[PolicyConfig] = None,
    ) -> None:
        """
        Args:
            student: The trainable model: its own source, or ``layers`` kept from the teacher.
            teacher: The frozen teacher (``null`` for LM-only fine-tuning with ``kd_ratio: 0``).
            loss: The distillation objective, τ and its hyperparameters.
            kd_ratio: Weight of the KD term; ``1 − kd_ratio`` weighs the label cross-entropy.
            optimizer: Optimizer factory over the student's parameters.
            lr_scheduler: LR schedule factory, stepped every optimizer step (``null``: constant LR).
            diagnostics: Log the KD diagnostics (``diag/*``: teacher entropy and non-target mass at τ,
                top-1 agreement, KD gradient norms on the target and non-target logits) every
                ``log_every_n_steps``.
            val_rouge: Generate on part of the validation/test split each epoch and log ROUGE-L
                (``val/rougeL``, ``test/rougeL``); ``null`` turns it off.
            nonfinite: What a NaN or +inf in the logits or the loss does: ``raise`` (an error naming the
                step and batch) or ``skip`` (the batch is dropped, counted in ``train/skipped_batches``;
                under DDP it contributes a zero gradient so the processes stay in step, but the optimizer
                and the LR schedule still step: AdamW's moments decay and weight decay applies).
            teacher_cache: A teacher cache directory (``python -m lit_kd cache-teacher``): the teacher's logits
                are recomputed exactly from its stored hidden states with its LM head, and its body is never
                run (nor loaded, unless the student is cut from its layers). ``teacher`` still names the
                teacher: the cache must have been built for it, the tokenizer and the data.
            chunk_size: Response rows per chunk of the fused-head loss: at most one ``[chunk_size, V]`` block
                of each model's logits exists at a time. ``null`` computes the full logits (the former path).
            policy: Student-generated outputs (``lit_kd.modules.policy``): ``student_fraction`` λ of each batch
                gets responses sampled by the current student, scored by the live teacher; ``null`` (or λ = 0):
                off-policy, the data's responses.
        """
        super().__init__()
        if not 0.0 <= kd_ratio <= 1.0:
            raise ConfigError(f"model.kd_ratio must be in [0, 1], got {kd_ratio}")
        if teacher is None and kd_ratio > 0:
            raise ConfigError("model.teacher is required when model.kd_ratio > 0 (set kd_ratio: 0 to fine-tune alone)")
        if not student.has_source and (student.layers is None or teacher is None):
            raise ConfigError("model.student needs a source (path, gguf_file or config) or `layers` of the teacher")
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"model.chunk_size must be a positive number of rows or null, got {chunk_size}")
        if teacher_cache is not None and teacher is None:
            raise ConfigError("model.teacher_cache needs model.teacher: it names the teacher the cache was built from")
        if nonfinite not in ("raise", "skip"):
            raise ConfigError(f"model.nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        on_policy = policy is not None and (policy.student_fraction > 0 or policy.adaptive is not None)
        if on_policy and teacher_cache is not None:
            raise ConfigError(
                "model.policy samples new responses, which only a live teacher can score; a teacher cache holds the "
                "data's responses only: drop model.teacher_cache or set model.policy.student_fraction: 0"
            )
        if on_policy and (teacher is None or kd_ratio == 0):
            raise ConfigError("model.policy needs a teacher to score the student's samples (and kd_ratio > 0)")
        # the hyperparameters go to TensorBoard's HParams tab through lit_kd's HParamsSummary callback
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"], logger=False)
        self.teacher_config, self.student_config, self.loss_config = teacher, student, loss
        self.kd_ratio = kd_ratio
        self.diagnostics = diagnostics
        self.nonfinite = nonfinite
        self.skipped_batches = 0
        self.val_rouge = val_rouge
        self.generation_rouge = GenerationRouge(val_rouge) if val_rouge is not None else None
        self.optimizer_factory: Callable = optimizer
        self.lr_scheduler_factory: Optional[Callable] = lr_scheduler
        self.teacher_cache_path = teacher_cache
        self.chunk_size = chunk_size
        self.normalizer = StepNormalizer()
        self.policy = policy
        self.student_policy: Optional[StudentPolicy] = None  # built with the tokenizer below
        self.flops_per_batch = 0.0  # read by Lightning's ThroughputMonitor (MFU on a GPU)

        self.tokenizer: PreTrainedTokenizerBase = pair_tokenizer(student, teacher)
        check_student_layers(student, teacher)  # before any data is tokenized
        if on_policy:
            self.student_policy = StudentPolicy(policy, self.tokenizer.pad_token_id)
        self.student: Optional[PreTrainedModel] = None  # built in configure_model
        self.teacher_source: Optional[LiveTeacher | CachedTeacher] = None
        self.vocab_size: Optional[int] = None

    @property
    def teacher(self) -> Optional[PreTrainedModel]:
        """The live teacher model (None when it is read from a teacher cache, or absent)."""
        return self.teacher_source.model if isinstance(self.teacher_source, LiveTeacher) else None

    def attached_trainer(self) -> Optional[L.Trainer]:
        try:
            return self.trainer
        except RuntimeError:  # not attached to a Trainer (used on its own, in tests and tools)
            return None

    # -- models -----------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Load (or derive) the models and the teacher source; idempotent, as Lightning calls it in every stage."""
        if self.student is not None:
            return
        pair = build_pair(self.student_config, self.teacher_config, keep_teacher=self.teacher_cache_path is None)
        self.student = pair.student
        cache = self.open_teacher_cache() if self.teacher_cache_path is not None else None
        teacher_width = (
            cache.head.weight.shape[0]
            if cache is not None
            else pair.teacher.get_output_embeddings().weight.shape[0]
            if pair.teacher is not None
            else None
        )
        self.vocab_size = pair_vocab_size(
            self.tokenizer, self.student, teacher_width, self.student_config, self.teacher_config
        )
        if cache is not None:
            self.teacher_source = CachedTeacher(cache, self.vocab_size)
        elif pair.teacher is not None:  # not an nn.Module: the teacher stays outside the registered children
            self.teacher_source = LiveTeacher(pair.teacher, self.vocab_size)
        if self.chunk_size is not None:  # logits = head(hidden) must hold exactly for the chunked loss
            verify_head(self.student, "student", self.vocab_size)
            if pair.teacher is not None:
                verify_head(pair.teacher, "teacher", self.vocab_size)
        self.student.to(device=self.device)
        self.place_teacher()
        rank_zero_info(
            f"student: {sum(p.numel() for p in self.student.parameters()):,} trainable parameters"
            + (f"; teacher: {sum(p.numel() for p in pair.teacher.parameters()):,} frozen" if pair.teacher else "")
            + (f"; teacher from the cache {self.teacher_cache_path} (its body not loaded)" if cache else "")
            + f"; compared over {self.vocab_size:,} vocabulary entries"
        )

    def open_teacher_cache(self) -> TeacherCache:
        """Open ``teacher_cache`` and, inside a trainer with a ``DollyDataModule``, check it was built for this
        teacher, tokenizer and data (the CLI checks it earlier, before anything is written)."""
        cache = TeacherCache.open(self.teacher_cache_path)
        trainer = self.attached_trainer()
        datamodule = trainer.datamodule if trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "load_split_records"):
            records = datamodule.load_split_records()
            cache.check(cache_key(self.teacher_config, self.tokenizer, records, datamodule.max_length))
        return cache

    def place_teacher(self) -> None:
        """Move the teacher (or the cached teacher's head) to the module's device."""
        if isinstance(self.teacher_source, LiveTeacher):
            self.teacher_source.model.to(device=self.device)
        elif isinstance(self.teacher_source, CachedTeacher):
            self.teacher_source.to(self.device)

    def setup(self, stage: str) -> None:
        if self.student_policy is not None:  # sampled sequences are cut like the data's: to data.max_length
            self.student_policy.max_length = getattr(self.trainer.datamodule, "max_length", None)
            self.student_policy.reseed(int(os.environ.get("PL_GLOBAL_SEED", 0)))  # a checkpoint may restore it later
        strategy = self.trainer.strategy
        if self.chunk_size is not None and type(strategy).__name__ in ("FSDPStrategy", "ModelParallelStrategy"):
            raise ConfigError(
                "model.chunk_size: the chunked loss applies the student's LM head outside its forward, where FSDP "
                "keeps it sharded; set model.chunk_size: null with FSDP (configs/strategies/fsdp.yaml does)"
            )

    def on_fit_start(self) -> None:
        self.place_teacher()

    def on_validation_start(self) -> None:
        self.place_teacher()

    def on_test_start(self) -> None:
        self.place_teacher()

    def configure_callbacks(self) -> list[L.Callback]:
        """What any Trainer running this module needs: RNG states in checkpoints (exact resume) and the LR
        schedule's horizon."""
        return [RNGStates(), ScheduleHorizon()]

    # -- the step ---------------------------------------------------------------------------------

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Student logits ``[B, T, V]``."""
        return self.student(input_ids=input_ids, attention_mask=attention_mask).logits

    def compute_losses(self, batch: dict[str, Tensor], stage: str = "train", diagnostics: bool = False) -> TokenSums:
        """Token sums of ℓ_i = (1 − r)·CE_i + r·d_i over the batch's response positions (``lit_kd.losses.chunked``),
        chunked through the LM heads (``chunk_size``) or from full logits (``chunk_size: null``)."""
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX  # position t predicts token t + 1
        targets = labels[mask]
        source = self.teacher_source if self.kd_ratio > 0 else None
        if self.chunk_size is None:
            student_rows = self(batch["input_ids"], batch["attention_mask"])[:, :-1, : self.vocab_size][mask]
            teacher_rows = source.logits_rows(batch, mask, stage) if source is not None else None
            return token_sums_from_logits(
                student_rows, teacher_rows, targets, self.loss_config, self.kd_ratio, diagnostics
            )
        hidden = final_hidden_states(self.student, batch["input_ids"], batch["attention_mask"])[:, :-1][mask]
        return chunked_token_sums(
            hidden,
            output_head(self.student, self.vocab_size),
            targets,
            self.loss_config,
            self.kd_ratio,
            self.chunk_size,
            teacher_hidden=source.hidden_rows(batch, mask, stage) if source is not None else None,
            teacher_head=source.head if source is not None else None,
            diagnostics=diagnostics,
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Optional[Tensor]:
        if self.student_policy is not None:  # on-/mixed-policy: a share of the responses sampled by the student
            batch, sampled = self.student_policy.mix(batch, self.student, self.tokenizer)
            self.log("train/student_fraction", self.student_policy.fraction, batch_size=batch["input_ids"].shape[0])
            self.log("train/sampled_rows", float(sampled), batch_size=batch["input_ids"].shape[0])
        logging = (self.trainer.global_step + 1) % max(self.trainer.log_every_n_steps, 1) == 0
        diagnostics = self.diagnostics and self.kd_ratio > 0 and self.teacher_source is not None and logging
        sums = self.compute_losses(batch, "train", diagnostics=diagnostics)
        self.flops_per_batch = self.estimate_flops(batch, sums.tokens)
        size = batch["input_ids"].shape[0]
        if not self.usable(sums, "train", batch_idx):
            self.log("train/skipped_batches", float(self.skipped_batches), batch_size=size)
            if self.trainer.world_size > 1:  # every rank must take part in the gradient all-reduce
                return sum(p.sum() for p in self.student.parameters() if p.requires_grad) * 0.0
            return None  # Lightning skips backward and the optimizer step
        self.normalizer.add(sums)
        for name, value in (sums.diagnostics or {}).items():
            self.log(f"diag/{name}", value, batch_size=size)
        # the micro-batch's sum: the gradient is divided by the step's token count in on_before_optimizer_step
        return sums.loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Token-exact normalization of the accumulated gradients; log the step's token means."""
        means = self.normalizer.finish(
            self.student.parameters(),
            reduce_sum=lambda tensor: self.trainer.strategy.reduce(tensor, reduce_op="sum"),
            grad_scale=self.trainer.accumulate_grad_batches * self.trainer.world_size,
            device=self.device,
        )
        for name, value in means.items():
            if name == "kd_loss" and (self.kd_ratio == 0 or self.teacher_source is None):
                continue
            self.log(f"train/{name}", value, prog_bar=name == "loss")

    def on_train_epoch_start(self) -> None:
        self.normalizer.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluation_step("val", batch, batch_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluation_step("test", batch, batch_idx)

    def evaluation_step(self, stage: str, batch: dict[str, Tensor], batch_idx: int) -> None:
        sums = self.compute_losses(batch, stage)
        if not self.usable(sums, stage, batch_idx):
            return
        for name in ("loss", "kd_loss", "lm_loss"):
            value = sums.mean(name)
            if value is not None:
                # weighting each batch mean by its token count makes the epoch value a token mean over
                # the whole split; sync_dist sums values and weights over processes
                self.log(f"{stage}/{name}", value, prog_bar=name == "loss", batch_size=sums.tokens, sync_dist=True)
        if self.generation_rouge is not None:
            scored = self.generation_rouge.step(
                stage, batch, self.student, self.tokenizer, self.trainer.world_size, self.global_rank
            )
            if scored:
                metric = self.generation_rouge.metrics[stage]
                self.log(f"{stage}/rougeL", metric, prog_bar=True, batch_size=scored)

    def on_validation_end(self) -> None:
        if (
            self.student_policy is not None
            and not self.trainer.sanity_checking
            and "val/loss" in self.trainer.callback_metrics
        ):
            self.student_policy.after_validation(float(self.trainer.callback_metrics["val/loss"]))

    def on_validation_epoch_start(self) -> None:
        if self.generation_rouge is not None:
            self.generation_rouge.start("val")

    def on_test_epoch_start(self) -> None:
        if self.generation_rouge is not None:
            self.generation_rouge.start("test")

    def usable(self, sums: TokenSums, stage: str, batch_idx: int) -> bool:
        """The ``nonfinite`` policy: True when the batch may be used; ``raise`` stops with the step and batch."""
        problems = list(sums.problems)
        if not torch.isfinite(sums.loss.detach()):
            problems.append(f"non-finite loss ({(sums.loss.detach() / max(sums.tokens, 1)).item()})")
        if not problems:
            return True
        where = f"{stage} step {self.global_step}, batch {batch_idx}, epoch {self.current_epoch}"
        message = f"{', '.join(problems)} at {where}"
        if self.nonfinite == "raise":
            raise NonFiniteError(message + " (set model.nonfinite: skip to skip such batches)")
        self.skipped_batches += 1
        rank_zero_warn(f"skipping the batch: {message} ({self.skipped_batches} skipped so far)")
        return False

    def estimate_flops(self, batch: dict[str, Tensor], response_rows: int) -> float:
        """Training FLOPs of this batch: 6·P_student per token, plus 2·P_teacher per token for a live teacher or
        2·d·V per response row for a cached one (its LM head only)."""
        tokens = float(batch["attention_mask"].sum())
        flops = 6.0 * sum(p.numel() for p in self.student.parameters()) * tokens
        if isinstance(self.teacher_source, LiveTeacher):
            flops += 2.0 * sum(p.numel() for p in self.teacher_source.model.parameters()) * tokens
        elif isinstance(self.teacher_source, CachedTeacher):
            flops += 2.0 * self.teacher_source.head.weight.numel() * response_rows
        return flops

    # -- checkpoints and optimisation ---------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The module's arguments are stored as plain data under ``lit_kd_hyper_parameters`` (not Lightning's
        ``hyper_parameters``, which LightningCLI would parse back over an explicit ``--model.*`` on resume)."""
        checkpoint.pop("hyper_parameters", None)
        checkpoint.pop("hparams_name", None)
        checkpoint[HPARAMS_KEY] = plain(dict(self.hparams))
        checkpoint["lit_kd_skipped_batches"] = self.skipped_batches
        if self.student_policy is not None:
            checkpoint["lit_kd_policy"] = self.student_policy.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another student architecture with a clear error."""
        if "state_dict" not in checkpoint:
            raise CheckpointError("the checkpoint has no state_dict: not a lit_kd training checkpoint")
        check_student_state(self.state_dict(), checkpoint["state_dict"], "the checkpoint")
        self.skipped_batches = checkpoint.get("lit_kd_skipped_batches", 0)
        if self.student_policy is not None and "lit_kd_policy" in checkpoint:
            self.student_policy.load_state_dict(checkpoint["lit_kd_policy"])

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.student.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
