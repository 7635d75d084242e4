"""Adapters on a frozen student (``model.student.peft``), through the ``peft`` library: the student's base weights
stay as loaded (or cut from the teacher) and frozen, and only small added matrices train.

* ``lora`` (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models"): each targeted linear map
  W x becomes W x + (α/r)·B A x, A ``[r, d_in]`` (random), B ``[d_out, r]`` (zeros, so training starts from the
  base model), W frozen.
* ``dora`` (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"): the same low-rank update, with the
  weight's per-row magnitude learned apart (peft's ``use_dora``).

``quantize`` is QLoRA (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs"): the frozen base is
loaded in 4 bits by bitsandbytes (NF4 or FP4 blocks with double quantization, computing in the student's ``dtype``),
the adapters train in full precision on top. bitsandbytes' 4-bit kernels need CUDA, so it is one error on a machine
without it; and it needs a student loaded from its own ``path`` (``from_pretrained`` quantizes as it reads).

``modules_to_save`` trains whole modules beside the adapters (a norm, a block). The input embeddings and the LM
head are never among them: the chunked loss applies the head itself (``lit_kd.models.head``), and the students
lit_kd cuts (SmolLM2, GPT-2) tie the head to the input embeddings, which a trained copy would silently untie; a
frozen head costs the step no ``[V, d]`` gradient (``lit_kd.losses.chunked``).

Everything the config alone decides is checked before any weights load (``check_adapters``, on the model's
architecture built on the meta device): ``r``, ``alpha``, ``dropout``, ``target_modules`` that match no linear
layer, ``modules_to_save`` that name no module or name the embeddings or the head.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from lit_kd.errors import ConfigError
from lit_kd.utils.fields import check_field_types

ALL_LINEAR = "all-linear"
"""peft's name for every linear layer of the decoder (not the LM head)."""


@dataclass
class AdapterConfig:
    """``model.student.peft``: which adapters train on the frozen student (see the module docstring)."""

    method: Literal["lora", "dora"] = "lora"
    """``lora``, or ``dora`` (LoRA with a learned magnitude per output row)."""
    r: int = 16
    """The rank of each low-rank update."""
    alpha: float = 32.0
    """The update is scaled by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the adapters' input, in training."""
    target_modules: Union[str, list[str]] = ALL_LINEAR
    """The linear layers that get adapters: ``all-linear`` (every one in the decoder, not the head), or names
    (``q_proj``, ``v_proj``; GPT-2's ``c_attn``), each matched against the end of a module's path."""
    modules_to_save: Optional[list[str]] = None
    """Whole modules trained beside the adapters (a module path's last names, e.g. ``norm``)."""
    quantize: Optional[Literal["nf4", "fp4"]] = None
    """QLoRA: the frozen base in 4 bits (bitsandbytes ``nf4`` or ``fp4``; CUDA and a student ``path`` only)."""

    def __post_init__(self) -> None:
        check_field_types(self, "model.student.peft")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"model.student.peft.r must be a positive integer, got {self.r!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"model.student.peft.alpha must be finite and > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.student.peft.dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ConfigError("model.student.peft.target_modules must name at least one module (or be all-linear)")
        if isinstance(self.target_modules, str) and self.target_modules != ALL_LINEAR:
            self.target_modules = [self.target_modules]

    def describe(self) -> str:
        quantized = f" on a 4-bit ({self.quantize}) base" if self.quantize else ""
        return f"{self.method} r={self.r} alpha={self.alpha:g}{quantized}"


def peft_config(settings: AdapterConfig) -> Any:
    """The ``peft.LoraConfig`` of ``settings``."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        modules_to_save=settings.modules_to_save,
        use_dora=settings.method == "dora",
        task_type="CAUSAL_LM",
    )


def check_quantization(settings: AdapterConfig, loads_own_path: bool) -> None:
    """QLoRA's requirements that the config and the machine show, before any weights load: a CUDA device,
    bitsandbytes installed, and a student read from its own ``path`` (quantized as ``from_pretrained`` reads it)."""
    if settings.quantize is None:
        return
    if not loads_own_path:
        raise ConfigError(
            "model.student.peft.quantize needs a student loaded from its own model.student.path, with no `layers` "
            "(a 4-bit base is quantized as from_pretrained reads it; a student cut from the teacher, a random config "
            "or a GGUF file is built in full precision)"
        )
    if not torch.cuda.is_available():
        raise ConfigError(
            f"model.student.peft.quantize: {settings.quantize} (QLoRA's 4-bit base) needs a CUDA device: "
            "bitsandbytes' 4-bit kernels run on CUDA, and this machine has none; drop quantize to train the adapters "
            "on the full-precision base"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "model.student.peft.quantize needs bitsandbytes, which is not installed: pip install 'lit_kd[qlora]'"
        )


def quantization_config(settings: AdapterConfig, compute_dtype: torch.dtype) -> Any:
    """The ``transformers.BitsAndBytesConfig`` of QLoRA's 4-bit base (the paper's settings: double quantization,
    the matmuls in ``compute_dtype``)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=settings.quantize,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def check_adapters(settings: AdapterConfig, architecture: PretrainedConfig) -> None:
    """``target_modules`` and ``modules_to_save`` against the student's architecture (its parent's, for a student cut
    from it: the same module names), built on the meta device (no weights): one ``ConfigError`` for a name that
    matches nothing, or for the embeddings or the head."""
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(architecture)
    names = {name for name, _ in model.named_modules() if name}
    linear = {name for name, module in model.named_modules() if isinstance(module, (nn.Linear, Conv1D))}  # GPT-2's
    head = {name for name, module in model.named_modules() if module is model.get_output_embeddings()}
    if isinstance(settings.target_modules, list):
        unmatched = [t for t in settings.target_modules if not any(_matches(n, t) for n in linear - head)]
        if unmatched:
            examples = sorted({n.rsplit(".", 1)[-1] for n in linear - head})
            raise ConfigError(
                f"model.student.peft.target_modules {unmatched} match no linear layer of the student "
                f"({type(model).__name__}); its linear layers are named {', '.join(examples)} (or use all-linear)"
            )
    protected = head | {n for n, m in model.named_modules() if m is model.get_input_embeddings()}
    for name in settings.modules_to_save or []:
        found = [n for n in names if _matches(n, name)]
        if not found:
            raise ConfigError(f"model.student.peft.modules_to_save: {name!r} names no module of the student")
        if any(n in protected for n in found):
            raise ConfigError(
                f"model.student.peft.modules_to_save: {name!r} is the student's input embeddings or LM head, which "
                "stay frozen under adapters (the chunked loss applies the head itself, and a trained copy would untie "
                "a head tied to the embeddings); train the full student for them (drop model.student.peft)"
            )


def _matches(path: str, name: str) -> bool:
    return path == name or path.endswith("." + name)


def add_adapters(model: PreTrainedModel, settings: AdapterConfig, seed: int = 0) -> nn.Module:
    """``model`` with ``settings``' adapters (a ``peft.PeftModel``): its base frozen, the adapters trainable, their
    random matrices drawn from ``seed`` (the same in every process: FSDP2 shards each process's own copy)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if settings.quantize is not None:  # norms in float32, input gradients on (peft's QLoRA preparation)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_peft_model(model, peft_config(settings))
    except ValueError as err:  # peft's errors for targets that match nothing or are not supported
        raise ConfigError(f"model.student.peft: {err}") from None


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under adapters (the model itself when it has none): its ``forward`` signature and
    ``generation_config`` are the ones that matter."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def has_adapters(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def trainable_names(model: nn.Module, prefix: str = "") -> set[str]:
    """The state-dict names of ``model``'s trainable parameters (the adapters and ``modules_to_save``)."""
    return {prefix + name for name, parameter in model.named_parameters() if parameter.requires_grad}
