"""Engine configuration: one dataclass, validated where it is built, with flag names as in vLLM."""

from __future__ import annotations

from dataclasses import dataclass

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

    def __post_init__(self) -> None:
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
        """auto: float32 on CPU (exact and fastest there); on GPU the checkpoint's 16-bit type, else bf16."""
        if self.dtype != "auto":
            return parse_dtype(self.dtype)
        if device.type == "cpu":
            return torch.float32
        stored = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
        stored = _DTYPES.get(stored, stored) if isinstance(stored, str) else stored
        return stored if stored in (torch.float16, torch.bfloat16) else torch.bfloat16
