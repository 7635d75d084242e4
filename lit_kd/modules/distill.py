"""``DistillModule``: a frozen teacher, a trainable student and a τ-scaled objective from the registry.

    L = Σ_i [(1 − kd_ratio) · CE_i + kd_ratio · d_i(student, teacher; τ)] / N_step

over the response positions i (``response_mask``) of the whole optimizer step (every micro-batch, every process).
The module is the step; ``assemble`` builds the models and the ``TeacherSource`` (live, or a cache of its hidden
states), ``lit_kd.losses.chunked`` (or, across tokenizers, ``lit_kd.modules.cross_tokenizer``) the token sums,
``StepNormalizer`` divides by the step's tokens, ``NonFinitePolicy`` decides what a NaN does, and the callbacks
score ROUGE-L and adapt λ. The teacher is never a registered child (not in the optimizer, ``state_dict``, DDP or
FSDP). With ``teacher: null`` and ``kd_ratio: 0`` it fine-tunes with the LM loss only (the teacher-SFT stage).
"""

from __future__ import annotations

import os
from typing import Any, Literal, Optional, Union

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from transformers import PreTrainedModel

from lit_kd.data.rendering import pair_renderings
from lit_kd.data.tokenize import response_mask
from lit_kd.eval.val_rouge import GenerationRouge, ValidationRouge
from lit_kd.losses import LossConfig
from lit_kd.losses.chunked import TokenSums, chunked_token_sums, token_sums_from_logits
from lit_kd.models import ModelConfig, StudentConfig
from lit_kd.models.head import final_hidden_states, output_head
from lit_kd.models.pair import check_models
from lit_kd.modules.arguments import check_module_arguments
from lit_kd.modules.assembly import assemble
from lit_kd.modules.cross_tokenizer import CrossTokenizerConfig, cross_token_sums, pair_tokenizers
from lit_kd.modules.fsdp import check_teacher_sharding, shard_models
from lit_kd.modules.nonfinite import NonFinitePolicy
from lit_kd.modules.normalization import StepNormalizer
from lit_kd.modules.policy import AdaptivePolicy, PolicyConfig, StudentPolicy
from lit_kd.modules.schedule import WarmupCosineLR
from lit_kd.modules.state import CheckpointState
from lit_kd.modules.temperature import scheduled_loss
from lit_kd.teacher import TeacherCache, TeacherSource


class DistillModule(CheckpointState, L.LightningModule):
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
        chunk_size: Union[int, Literal["auto"], None] = "auto",
        compile_loss: bool = False,
        policy: Optional[PolicyConfig] = None,
        max_length: Optional[int] = None,
        teacher_sharding: str = "replicate",
        cross_tokenizer: Optional[CrossTokenizerConfig] = None,
        prompt_format: Literal["dolly", "chat_template"] = "dolly",
    ) -> None:
        """
        Args:
            student: The trainable model: its own source, or ``layers`` kept from the teacher.
            teacher: The frozen teacher (``null`` for LM-only fine-tuning with ``kd_ratio: 0``).
            loss: The distillation objective, τ (with its schedule and per-token rule) and its hyperparameters.
            kd_ratio: Weight of the KD term; ``1 − kd_ratio`` weighs the label cross-entropy.
            optimizer: Optimizer factory over the student's parameters.
            lr_scheduler: LR schedule factory, stepped every optimizer step (``null``: constant LR).
            diagnostics: Log the KD diagnostics every ``log_every_n_steps`` (``diag/*``: teacher entropy and
                non-target mass at τ, top-1 agreement, KD gradient norms on the target and non-target logits).
            val_rouge: Generate on the validation/test split, log ROUGE-L (``val/rougeL``, ``test/rougeL``); or null.
            nonfinite: What a NaN or +inf in the logits or the loss does: ``raise`` (an error naming the step and
                batch) or ``skip`` (the batch is dropped, counted in ``train/skipped_batches``; under DDP it gives
                a zero gradient and the optimizer still steps: AdamW's moments decay, weight decay applies).
            teacher_cache: A teacher cache directory (``python -m lit_kd cache-teacher``) built for ``teacher``,
                the tokenizer and the data: the teacher's logits are recomputed exactly from its stored hidden
                states, and its body is never run (nor loaded, unless the student is cut from its layers).
            chunk_size: Response rows per chunk of the fused-head loss (a few ``[chunk_size, V]`` blocks at a
                time; ``auto``: from V and the student's hidden size, ``auto_chunk_size``); ``null``: full logits.
            compile_loss: Run the fused loss kernels through ``torch.compile`` (eager, with one line, if it fails).
            policy: Student-generated outputs (``lit_kd.modules.policy``): ``student_fraction`` λ of each batch
                gets responses sampled by the current student, scored by the live teacher; null: the data's.
            max_length: The longest sequence (the CLI links ``data.max_length``): the student's samples are cut to it.
            teacher_sharding: ``replicate`` (a whole teacher on every process) or ``shard`` (FSDP2 only: each
                process holds 1/W of the frozen teacher, gathered block by block for its forward).
            cross_tokenizer: Teacher and student read the text with tokenizers of their own, compared over aligned
                token groups (``lit_kd.modules.cross_tokenizer``); null: one shared tokenizer.
            prompt_format: How records become text (linked to ``data.prompt_format``): where generations stop.
        """
        super().__init__()
        check_module_arguments(student, teacher, kd_ratio, teacher_cache, chunk_size, policy, teacher_sharding, loss,
                               cross_tokenizer)  # fmt: skip
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"], logger=False)
        self.teacher_config, self.student_config, self.loss_config = teacher, student, loss
        self.kd_ratio, self.chunk_size, self.diagnostics = kd_ratio, chunk_size, diagnostics
        self.compile_loss, self.val_rouge, self.policy = compile_loss, val_rouge, policy
        self.teacher_cache_path, self.teacher_sharding = teacher_cache, teacher_sharding
        self.nonfinite, self.normalizer = NonFinitePolicy(nonfinite), StepNormalizer()
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.cross_tokenizer, self.strict_loading = cross_tokenizer, student.peft is None  # adapters: saved alone
        self.batch_size_seen: tuple[Tensor | int, int] = (0, 0)  # (tokens, response rows) of the last batch
        self.tokenizer, self.teacher_tokenizer, self.vocabulary = pair_tokenizers(student, teacher, cross_tokenizer)
        self.rendering, self.teacher_rendering = pair_renderings(self.tokenizer, self.teacher_tokenizer, prompt_format)
        check_models(student, teacher)  # before any data is tokenized
        self.student_policy = StudentPolicy.of(policy, self.tokenizer.pad_token_id, max_length)
        self.student: Optional[PreTrainedModel] = None  # built in configure_model
        self.teacher_source: Optional[TeacherSource] = None
        self.teacher_cache: Optional[TeacherCache] = None  # opened and checked by the builder, else configure_model
        self.vocab_size: Optional[int] = None
        self.student_parameters = 0  # counted once, for flops_per_batch

    @property
    def flops_per_batch(self) -> float:
        """FLOPs of the last batch for ThroughputMonitor (MFU): 6·P_student per token + the teacher's forward."""
        tokens, rows = self.batch_size_seen
        teacher = self.teacher_source.flops(float(tokens), rows) if self.teacher_source is not None else 0.0
        return 6.0 * self.student_parameters * float(tokens) + teacher

    @property
    def teacher(self) -> Optional[PreTrainedModel]:  # the live teacher (None when read from a cache, or absent)
        return self.teacher_source.model if self.teacher_source is not None else None

    def configure_model(self) -> None:
        """Load (or derive) the models and the teacher source, and shard them under FSDP2 (``device_mesh``, from
        ``ModelParallelStrategy``; the teacher with ``teacher_sharding: shard``); idempotent (called in every stage)."""
        if self.student is None:
            if self.teacher_cache_path is not None and self.teacher_cache is None:
                self.teacher_cache = TeacherCache.open(self.teacher_cache_path)
            built = assemble(self.student_config, self.teacher_config, self.tokenizer, self.teacher_cache,
                             self.chunk_size is not None, self.teacher_tokenizer, self.vocabulary)  # fmt: skip
            self.student, self.teacher_source, self.vocab_size = built.student, built.teacher_source, built.vocab_size
            self.student_parameters = built.student_parameters
            self.student.to(device=self.device)
            self.place_teacher()
            rank_zero_info(built.describe())
        if self.device_mesh is not None:
            shard_models(self.student, self.teacher if self.teacher_sharding == "shard" else None, self.device_mesh)

    def setup(self, stage: str) -> None:
        if self.student_policy is not None:  # a checkpoint may restore the generator's state later
            self.student_policy.reseed(int(os.environ.get("PL_GLOBAL_SEED", 0)))
        check_teacher_sharding(self.teacher_sharding, type(self.trainer.strategy).__name__, self.trainer.world_size)

    def place_teacher(self) -> None:
        """Move the teacher (or the cached teacher's head) to the module's device when a stage starts."""
        if self.teacher_source is not None:
            self.teacher_source.to(self.device)

    on_fit_start = on_validation_start = on_test_start = place_teacher

    def configure_callbacks(self) -> list[L.Callback]:
        """ROUGE-L of generations during validation and test (``val_rouge``), and the adaptive λ rule."""
        callbacks: list[L.Callback] = [GenerationRouge(self.val_rouge)] if self.val_rouge is not None else []
        if self.student_policy is not None and self.student_policy.config.adaptive is not None:
            callbacks.append(AdaptivePolicy(self.student_policy))
        return callbacks

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:  # student logits
        return self.student(input_ids=input_ids, attention_mask=attention_mask).logits

    def compute_losses(self, batch: dict[str, Tensor], stage: str = "train", diagnostics: bool = False) -> TokenSums:
        """Token sums of ℓ_i = (1 − r)·CE_i + r·d_i over the batch's response positions (``losses.chunked``),
        chunked through the LM heads (``chunk_size``) or from full logits (``chunk_size: null``)."""
        if self.cross_tokenizer is not None:
            return cross_token_sums(self, batch, stage, diagnostics)
        mask = response_mask(batch["labels"])
        targets = batch["labels"][:, 1:][mask]
        source, loss, ratio = self.teacher_source if self.kd_ratio > 0 else None, scheduled_loss(self), self.kd_ratio
        if self.chunk_size is None:
            student_rows = self(batch["input_ids"], batch["attention_mask"])[:, :-1, : self.vocab_size][mask]
            teacher_rows = source.logits_rows(batch, mask, stage) if source is not None else None
            sums = token_sums_from_logits(student_rows, teacher_rows, targets, loss, ratio, diagnostics)
        else:
            hidden = final_hidden_states(self.student, batch["input_ids"], batch["attention_mask"])[:, :-1][mask]
            teacher_hidden = source.hidden_rows(batch, mask, stage) if source is not None else None
            head, teacher_head = output_head(self.student, self.vocab_size), source and source.head
            sums = chunked_token_sums(hidden, head, targets, loss, ratio, self.chunk_size, teacher_hidden, teacher_head,
                                      diagnostics, self.compile_loss)  # fmt: skip
        if source is not None:
            source.release()
        return sums

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Optional[Tensor]:
        if self.student_policy is not None:  # on-/mixed-policy: a share of the responses sampled by the student
            batch, sampled = self.student_policy.mix(batch, self.student, self.rendering, self.teacher_rendering)
            policy = {"train/student_fraction": self.student_policy.fraction, "train/sampled_rows": float(sampled)}
            self.log_dict(policy, batch_size=batch["input_ids"].shape[0])
        logging = (self.trainer.global_step + 1) % max(self.trainer.log_every_n_steps, 1) == 0
        diagnostics = self.diagnostics and self.kd_ratio > 0 and self.teacher_source is not None and logging
        sums = self.compute_losses(batch, "train", diagnostics=diagnostics)
        self.batch_size_seen = (batch["attention_mask"].sum(), sums.tokens)
        size = batch["input_ids"].shape[0]
        if not self.nonfinite.usable(sums, "train", batch_idx, self):
            self.log("train/skipped_batches", float(self.nonfinite.skipped), batch_size=size)
            if self.trainer.world_size > 1:  # every rank must take part in the gradient all-reduce
                return sum(p.sum() for p in self.student.parameters() if p.requires_grad) * 0.0
            return None  # Lightning skips backward and the optimizer step
        self.normalizer.add(sums)
        for name, value in sums.step_logs().items():  # diag/* and the step's temperatures
            self.log(name, value, batch_size=size)
        return sums.loss  # the micro-batch's sum: on_before_optimizer_step divides the gradient by the step's tokens

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Token-exact normalization of the accumulated gradients; log the step's token means."""
        self.nonfinite.check_step(self)
        means = self.normalizer.finish(
            self.student.parameters(),
            reduce_sum=lambda tensor: self.trainer.strategy.reduce(tensor, reduce_op="sum"),
            grad_scale=self.trainer.accumulate_grad_batches * self.trainer.world_size,
            device=self.device,
        )
        for name, value in means.items():
            if name != "kd_loss" or (self.kd_ratio > 0 and self.teacher_source is not None):
                self.log(f"train/{name}", value, prog_bar=name == "loss")

    def on_train_epoch_start(self) -> None:
        self.normalizer.reset()  # a window never spans epochs

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """The loss terms' token means of a validation (or test: ``test_step`` is this step) split."""
        stage = "test" if self.trainer.testing else "val"
        sums = self.compute_losses(batch, stage)
        if not self.nonfinite.usable(sums, stage, batch_idx, self):
            return
        for name in ("loss", "kd_loss", "lm_loss"):
            value = sums.mean(name)
            if value is not None:
                # weighted by its tokens: the epoch value is a token mean (sync_dist: over processes too)
                self.log(f"{stage}/{name}", value, prog_bar=name == "loss", batch_size=sums.tokens, sync_dist=True)

    test_step = validation_step

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory([p for p in self.student.parameters() if p.requires_grad])
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
