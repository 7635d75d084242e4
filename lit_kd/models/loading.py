"""Loading causal LMs and tokenizers from a hub id, a local directory, a GGUF file or a config."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lit_kd.errors import ModelLoadError
from lit_kd.models.config import ModelConfig
from lit_kd.utils.io import atomic_directory


def resolve_path(path: str, where: str = "") -> str:
    """Expand ``~`` and ``pkg://package/rest`` (a file or folder shipped inside an installed package); ``where``
    names the option in the error."""
    if path.startswith("pkg://"):
        package, _, rest = path[len("pkg://") :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(f"{where}{': ' if where else ''}{path}: Python package {package!r} is not installed")
        return str(Path(spec.submodule_search_locations[0]) / rest)
    return os.path.expanduser(path)


_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[\w.-]+)?")


def option(role: str, field: str) -> str:
    """How errors name a model's field: ``model.teacher.path`` for the teacher and the student, ``<role>.<field>``
    for another role."""
    return f"model.{role}.{field}" if role in ("teacher", "student") else f"{role}.{field}"


def _check_local(path: str, where: str, what: str) -> None:
    """Anything that cannot be a hub id (``name`` or ``org/name``) is a local path and must exist."""
    if not os.path.exists(path) and not _HUB_ID.fullmatch(path):
        raise ModelLoadError(f"{where}: {what} not found: {path}")


def gguf_location(config: ModelConfig, role: str = "model") -> tuple[str, str]:
    """(directory, file name) of the config's GGUF file; an error if the file is missing."""
    assert config.gguf_file is not None
    gguf = resolve_path(config.gguf_file, option(role, "gguf_file"))
    if config.path is not None and not os.path.isabs(gguf):
        gguf = os.path.join(resolve_path(config.path, option(role, "path")), gguf)
    if not os.path.isfile(gguf):
        raise ModelLoadError(f"{option(role, 'gguf_file')}: GGUF file not found: {gguf}")
    return os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)


def cache_root() -> Path:
    return Path(os.environ.get("LIT_KD_CACHE", Path.home() / ".cache" / "lit_kd"))


def _gguf_cache_dir(directory: str, filename: str) -> Path:
    stat = os.stat(os.path.join(directory, filename))
    key = hashlib.sha1(f"{os.path.join(directory, filename)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_root() / "gguf" / f"{Path(filename).stem}-{key[:12]}"


def _load_gguf(config: ModelConfig, role: str) -> PreTrainedModel:
    directory, filename = gguf_location(config, role)
    cached = _gguf_cache_dir(directory, filename)
    if config.cache_gguf_conversion and (cached / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(cached, dtype=config.torch_dtype)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    # The weights are de-quantized now: drop the GGUF quantizer so the model saves and derives as a plain one.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if config.cache_gguf_conversion:
        _save_atomically(model, AutoTokenizer.from_pretrained(directory, gguf_file=filename), cached)
    return model.to(config.torch_dtype)


def _save_atomically(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """A crash never leaves a half-written cache; a concurrent process that wins the race is fine."""
    try:
        with atomic_directory(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except OSError:
        if not (target / "config.json").is_file():
            raise


def load_model(config: ModelConfig, role: str = "model", quantization: Optional[Any] = None) -> PreTrainedModel:
    """Build the causal LM a ``ModelConfig`` describes (``role`` names it in errors: teacher, student), with its
    ``adapter`` merged into it when it names one. ``quantization`` (a ``BitsAndBytesConfig``, for a ``path``) loads
    it quantized onto this process's CUDA device (``LOCAL_RANK``)."""
    model = _load_base(config, role, quantization)
    return merge_adapter(model, config, role) if config.adapter is not None else model


def merge_adapter(model: PreTrainedModel, config: ModelConfig, role: str) -> PreTrainedModel:
    """``model`` with the ``peft`` adapter directory ``config.adapter`` merged into its weights. An adapter saved for
    another local base directory than ``config.path``, or whose tensors do not fit the model, is one error."""
    from peft import PeftConfig, PeftModel

    directory = adapter_directory(config, role)
    named = PeftConfig.from_pretrained(directory).base_model_name_or_path
    if named and config.path is not None and os.path.isdir(named) and os.path.isdir(resolve_path(config.path)):
        if os.path.realpath(named) != os.path.realpath(resolve_path(config.path)):
            raise ModelLoadError(
                f"{role}: the adapter {config.adapter} was trained on {named}, not on {config.path}; give the base it "
                "was trained on (model.*.path)"
            )
    try:
        return PeftModel.from_pretrained(model, directory).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as err:  # shapes or module names that do not fit the base
        raise ModelLoadError(
            f"{role}: the adapter {config.adapter} does not fit {config.describe()} (trained on another base?): "
            f"{str(err).splitlines()[0]}"
        ) from None


def adapter_directory(config: ModelConfig, role: str) -> str:
    """``config.adapter`` resolved, or one error when it holds no ``adapter_config.json``."""
    directory = resolve_path(config.adapter or "", option(role, "adapter"))
    if not os.path.isfile(os.path.join(directory, "adapter_config.json")):
        raise ModelLoadError(
            f"{option(role, 'adapter')}: adapter directory not found (no adapter_config.json): {directory}"
        )
    return directory


def _load_base(config: ModelConfig, role: str, quantization: Optional[Any] = None) -> PreTrainedModel:
    if not config.has_source:
        raise ModelLoadError(f"{role} has no source: set `path`, `gguf_file` or `config`")
    try:
        if config.config is not None:
            fields = dict(config.config)
            hf_config = AutoConfig.for_model(fields.pop("model_type"), **fields)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.init_seed)
                return AutoModelForCausalLM.from_config(hf_config, dtype=config.torch_dtype)
        if config.gguf_file is not None:
            return _load_gguf(config, role)
        path = resolve_path(config.path, option(role, "path"))
        _check_local(path, option(role, "path"), "model path")
        placed = {} if quantization is None else {"device_map": {"": int(os.environ.get("LOCAL_RANK", 0))}}
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=config.torch_dtype, revision=config.revision, quantization_config=quantization, **placed
        )
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as err:
        field = "config" if config.config is not None else "gguf_file" if config.gguf_file is not None else "path"
        raise ModelLoadError(f"{option(role, field)}: could not load the {role} model from {config.describe()!r}: "
                             f"{err}") from err  # fmt: skip


def load_hf_config(config: ModelConfig, role: str = "model") -> PretrainedConfig:
    """The Hugging Face config of a model source, without its weights (cheap: a JSON file or a GGUF header),
    so that settings depending on the architecture are checked before any data or weights are loaded."""
    if not config.has_source:
        raise ModelLoadError(f"{role} has no source: set `path`, `gguf_file` or `config`")
    try:
        if config.config is not None:
            fields = dict(config.config)
            return AutoConfig.for_model(fields.pop("model_type"), **fields)
        if config.gguf_file is not None:
            directory, filename = gguf_location(config, role)
            cached = _gguf_cache_dir(directory, filename)
            if config.cache_gguf_conversion and (cached / "config.json").is_file():
                return AutoConfig.from_pretrained(cached)
            return AutoConfig.from_pretrained(directory, gguf_file=filename)
        path = resolve_path(config.path, option(role, "path"))
        _check_local(path, option(role, "path"), "model path")
        return AutoConfig.from_pretrained(path, revision=config.revision)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as err:
        field = "gguf_file" if config.gguf_file is not None else "path"
        raise ModelLoadError(f"{option(role, field)}: could not load the {role} model's config from "
                             f"{config.describe()!r}: {err}") from err  # fmt: skip


def load_tokenizer(config: ModelConfig, role: str = "model") -> PreTrainedTokenizerBase:
    """The tokenizer of a model source; a missing pad token falls back to EOS."""
    try:
        if config.tokenizer is not None:
            source = resolve_path(config.tokenizer, option(role, "tokenizer"))
            _check_local(source, option(role, "tokenizer"), "tokenizer path")
            tokenizer = AutoTokenizer.from_pretrained(source)
        elif config.gguf_file is not None:
            directory, filename = gguf_location(config, role)
            cached = _gguf_cache_dir(directory, filename)
            if config.cache_gguf_conversion and (cached / "tokenizer_config.json").is_file():
                tokenizer = AutoTokenizer.from_pretrained(cached)
            else:
                tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
        elif config.path is not None:
            source = resolve_path(config.path, option(role, "path"))
            _check_local(source, option(role, "path"), "model path")
            tokenizer = AutoTokenizer.from_pretrained(source, revision=config.revision)
        else:
            raise ModelLoadError(f"{option(role, 'tokenizer')}: needed (a model built from `config` has no tokenizer)")
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as err:
        field = "tokenizer" if config.tokenizer is not None else "gguf_file" if config.gguf_file is not None else "path"
        raise ModelLoadError(f"{option(role, field)}: could not load the {role} tokenizer from {config.describe()!r}: "
                             f"{err}") from err  # fmt: skip
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"{role} tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token is None:
        raise ModelLoadError(f"{role} tokenizer has no EOS token: responses could not be terminated")
    return tokenizer
