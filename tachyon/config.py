"""Engine configuration: one dataclass, validated where it is built, with flag names as in vLLM."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(name: str) -> torch.dtype:
    """A dtype flag value (float32, bfloat16, float16 and their short names) as a torch dtype."""
    if name not in _DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def parse_json_object(text: str, flag: str) -> dict:
    """A flag's JSON object value, or a ValueError that names the flag."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object")
    return value


SPECULATIVE_METHODS = ("ngram", "draft_model", "self_spec")


@dataclass
class SpeculativeConfig:
    """`--speculative-config` in vLLM's spelling, e.g. {"method": "ngram", "num_speculative_tokens": 5}.

    ngram: copy the continuation of the longest recent n-gram match (prompt_lookup_max..min tokens).
    draft_model: a smaller model with the same tokenizer (`model`) proposes, with its own KV cache.
    self_spec: the target's first `num_draft_layers` layers and its own LM head propose.
    The engine lowers the number of draft tokens per step (down to none) when verifying them would
    cost more than they save: large batches, low acceptance (unless `adaptive` is false);
    `disable_by_batch_size` is a hard limit.
    """

    method: str = "ngram"
    num_speculative_tokens: int = 5
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 1
    model: str | None = None
    num_draft_layers: int | None = None  # self_spec; default: a quarter of the target's layers
    disable_by_batch_size: int | None = None  # no speculation once this many requests run
    adaptive: bool = True  # False: always num_speculative_tokens (a seed then samples the same under any load)

    def __post_init__(self) -> None:
        if self.model is not None and self.method == "ngram" and self.num_draft_layers is None:
            self.method = "draft_model"  # vLLM: giving a draft model implies the method
        if self.method not in SPECULATIVE_METHODS:
            raise ValueError(f"speculative method must be one of {SPECULATIVE_METHODS}, got {self.method!r}")
        if self.num_speculative_tokens < 1:
            raise ValueError(f"num_speculative_tokens must be at least 1, got {self.num_speculative_tokens}")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError("need 1 <= prompt_lookup_min <= prompt_lookup_max")
        if self.method == "draft_model" and not self.model:
            raise ValueError('speculative method draft_model needs "model": the draft model to load')
        if self.num_draft_layers is not None and self.num_draft_layers < 1:
            raise ValueError(f"num_draft_layers must be at least 1, got {self.num_draft_layers}")

    @classmethod
    def parse(cls, value: SpeculativeConfig | dict | str | None) -> SpeculativeConfig | None:
        """A config, a dict, or the JSON text of `--speculative-config`; None stays None."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if isinstance(value, str):
            value = parse_json_object(value, "--speculative-config")
        if not isinstance(value, dict):
            raise ValueError("--speculative-config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown --speculative-config keys {unknown}; known: {sorted(known)}")
        return cls(**value)


@dataclass
class EngineConfig:
    model: str | None = None  # HF folder, .gguf file or hub id; None: the embedded default model
    tokenizer: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    kv_cache_memory: int | None = None  # bytes for the KV pool on CPU (default 2 GiB)
    gpu_memory_utilization: float = 0.9
    attention_backend: str = "auto"
    kv_cache_dtype: str = "auto"  # "fp8" | "int8": 8-bit keys/values with per-(token, head) scales
    enforce_eager: bool = False  # no CUDA graphs (GPU only)
    load_format: str = "auto"  # "dummy": random weights of the model's shape (benchmarks)
    scheduling_policy: str = "fcfs"
    seed: int = 0
    speculative_config: SpeculativeConfig | dict | str | None = None
    tensor_parallel_size: int = 1  # ranks (processes, one GPU each on CUDA) that split every layer
    kv_transfer_timeout: float = 60.0  # seconds a finished prefill's KV waits for a decode instance to fetch it
    deterministic: bool = False  # batch-invariant: a request's output does not depend on what it is batched with

    def __post_init__(self) -> None:
        self.speculative_config = SpeculativeConfig.parse(self.speculative_config)
        if self.kv_transfer_timeout <= 0:
            raise ValueError(f"--kv-transfer-timeout must be positive seconds, got {self.kv_transfer_timeout}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"--tensor-parallel-size must be at least 1, got {self.tensor_parallel_size}")
        spec = self.speculative_config
        if self.tensor_parallel_size > 1 and spec is not None and spec.method == "draft_model":
            raise ValueError(
                "a separate draft model does not run with --tensor-parallel-size > 1 yet; use ngram or self_spec"
            )
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(f"--dtype must be auto or one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be auto, cpu or cuda[:N], got {self.device!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"--block-size must be a power of two, got {self.block_size}")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(f"--kv-cache-memory must be positive bytes, got {self.kv_cache_memory}")
        if self.kv_cache_dtype not in ("auto", "fp8", "int8"):
            raise ValueError(f"--kv-cache-dtype must be auto, fp8 or int8, got {self.kv_cache_dtype!r}")
        if self.deterministic and (self.kv_cache_dtype != "auto" or self.attention_backend not in ("auto", "cpu")):
            raise ValueError(
                "--deterministic runs the native CPU attention kernel on a model-dtype KV cache; drop "
                f"--kv-cache-dtype {self.kv_cache_dtype} / --attention-backend {self.attention_backend}"
            )
        if self.load_format not in ("auto", "dummy"):
            raise ValueError(f"--load-format must be auto or dummy, got {self.load_format!r}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"--max-model-len must be at least 2, got {self.max_model_len}")

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device} asked for, but torch sees no CUDA device")
        return torch.device(self.device)

    def resolve_dtype(self, hf_config, device: torch.device) -> torch.dtype:
        """auto: float32 on CPU (greedy outputs equal HF's token for token; bf16 runs about twice as fast
        on CPUs with AVX512_BF16); on GPU the checkpoint's 16-bit type, else bf16."""
        if self.dtype != "auto":
            return parse_dtype(self.dtype)
        if device.type == "cpu":
            return torch.float32
        stored = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
        stored = _DTYPES.get(stored, stored) if isinstance(stored, str) else stored
        return stored if stored in (torch.float16, torch.bfloat16) else torch.bfloat16
