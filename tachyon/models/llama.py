"""Llama-family decoder (Llama 2/3.x, Mistral, SmolLM2, Qwen2 with qkv bias, Qwen3 with q/k RMSNorm).

One flat batch of tokens goes through: embed -> N x (RMSNorm, attention over the paged KV cache,
RMSNorm, SwiGLU MLP) -> final norm. Logits are computed separately, only for rows that need them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from itertools import islice

import torch
from torch import nn

from tachyon.distributed.parallel_state import shard_range
from tachyon.layers.attention.layer import PagedAttention
from tachyon.layers.attention.metadata import AttentionMetadata
from tachyon.layers.linear import Linear, finish_loading
from tachyon.layers.norm import RMSNorm
from tachyon.layers.quantized_linear import make_linear
from tachyon.layers.rotary import RotaryEmbedding, rope_settings
from tachyon.layers.vocab_embedding import VocabParallelEmbedding
from tachyon.quantization.compressed_tensors import CheckpointQuantization

logger = logging.getLogger(__name__)

# checkpoint module name -> (our fused module name, shard id)
FUSED_MODULES = {
    "q_proj": ("qkv_proj", "q"),
    "k_proj": ("qkv_proj", "k"),
    "v_proj": ("qkv_proj", "v"),
    "gate_proj": ("gate_up_proj", "gate"),
    "up_proj": ("gate_up_proj", "up"),
}


def _checkpoint_names(shards: dict[str, int]) -> list[str]:
    """Shard ids of a fused Linear -> the checkpoint's module names (q -> q_proj)."""
    by_shard = {shard: name for name, (_, shard) in FUSED_MODULES.items()}
    return [by_shard[shard] for shard in shards]


def head_dim_of(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


class LlamaAttention(nn.Module):
    def __init__(
        self, cfg, rotary: RotaryEmbedding, qkv_bias: bool, qk_norm: bool, dtype: torch.dtype, quant, prefix: str
    ) -> None:
        super().__init__()
        self.head_dim = head_dim_of(cfg)
        q_size, kv_size = cfg.num_attention_heads * self.head_dim, cfg.num_key_value_heads * self.head_dim
        shards = {"q": q_size, "k": kv_size, "v": kv_size}
        names = _checkpoint_names(shards)
        self.qkv_proj = make_linear(quant, prefix, names, cfg.hidden_size, shards, qkv_bias, dtype, "column")
        o_bias = getattr(cfg, "attention_bias", False)
        self.o_proj = make_linear(quant, prefix, ["o_proj"], q_size, {"": cfg.hidden_size}, o_bias, dtype, "row")
        # this rank's heads (all of them without tensor parallelism)
        self.num_heads = shard_range(cfg.num_attention_heads, "num_attention_heads")[1]
        self.num_kv_heads = shard_range(cfg.num_key_value_heads, "num_key_value_heads")[1]
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, dtype) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, dtype) if qk_norm else None
        self.rotary = rotary
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim**-0.5)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(x).view(x.shape[0], -1, self.head_dim)  # [T, H + 2 H_kv, D]
        q = qkv[:, : self.num_heads]  # [T, H, D]
        k = qkv[:, self.num_heads : self.num_heads + self.num_kv_heads]  # [T, H_kv, D]
        v = qkv[:, self.num_heads + self.num_kv_heads :]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        return self.o_proj(self.attn(q, k, v, meta))


class LlamaMLP(nn.Module):
    def __init__(self, cfg, dtype: torch.dtype, quant, prefix: str) -> None:
        super().__init__()
        bias = getattr(cfg, "mlp_bias", False)
        size = cfg.intermediate_size
        shards = {"gate": size, "up": size}
        names = _checkpoint_names(shards)
        self.gate_up_proj = make_linear(quant, prefix, names, cfg.hidden_size, shards, bias, dtype, "column")
        self.down_proj = make_linear(quant, prefix, ["down_proj"], size, {"": cfg.hidden_size}, bias, dtype, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj.silu_and_mul(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self, cfg, rotary: RotaryEmbedding, qkv_bias: bool, qk_norm: bool, dtype: torch.dtype, quant, prefix: str
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg, rotary, qkv_bias, qk_norm, dtype, quant, f"{prefix}.self_attn")
        self.mlp = LlamaMLP(cfg, dtype, quant, f"{prefix}.mlp")
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)

    def forward(self, positions, x, residual, meta):
        x, residual = (self.input_layernorm(x), x) if residual is None else self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg, qkv_bias: bool, qk_norm: bool, dtype: torch.dtype, quant) -> None:
        super().__init__()
        theta, scaling = rope_settings(cfg)
        rotary = RotaryEmbedding(head_dim_of(cfg), cfg.max_position_embeddings, theta, scaling)
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(cfg, rotary, qkv_bias, qk_norm, dtype, quant, f"model.layers.{i}")
            for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, num_layers: int | None = None
    ) -> torch.Tensor:
        x, residual = self.embed_tokens(input_ids), None  # [T, hidden]
        for layer in islice(self.layers, num_layers):
            x, residual = layer(positions, x, residual, meta)
        x, _ = self.norm(x, residual)
        return x


class LlamaForCausalLM(nn.Module):
    qkv_bias = False
    qk_norm = False

    def __init__(self, hf_config, dtype: torch.dtype) -> None:
        super().__init__()
        self.config = hf_config
        qkv_bias = self.qkv_bias or getattr(hf_config, "attention_bias", False)
        quant = CheckpointQuantization.from_config(getattr(hf_config, "quantization_config", None))
        self.model = LlamaModel(hf_config, qkv_bias, self.qk_norm, dtype, quant)
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        if not self.tie_word_embeddings:
            if quant is not None and quant.for_modules(["lm_head"]) is not None:
                raise ValueError("a quantized lm_head is not supported; keep it in the checkpoint's `ignore` list")
            self.lm_head = VocabParallelEmbedding(hf_config.vocab_size, hf_config.hidden_size, dtype)

    @staticmethod
    def check_tensor_parallel(cfg, size: int) -> None:
        """Before any process starts: a clear error when the heads or the MLP do not split into `size` ranks."""
        for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
            if getattr(cfg, name) % size:
                raise ValueError(f"{name} ({getattr(cfg, name)}) is not divisible by --tensor-parallel-size {size}")

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, num_layers: int | None = None
    ) -> torch.Tensor:
        """input_ids, positions [T] -> hidden states [T, hidden]. `num_layers`: run only the first layers
        (then the final norm), which is how self-speculative decoding drafts."""
        return self.model(input_ids, positions, meta, num_layers)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> logits [N, vocab] in the model's dtype"""
        return (self.model.embed_tokens if self.tie_word_embeddings else self.lm_head).logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named checkpoint tensors (quantized ones included), fusing q/k/v and gate/up; fail loudly
        on anything missing. Then let each Linear's method repack what it loaded."""
        modules = dict(self.named_modules())
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        num_kv_scales = 0
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name or (self.tie_word_embeddings and name == "lm_head.weight"):
                continue
            if name.endswith((".k_scale", ".v_scale")):
                num_kv_scales += 1
                continue
            module_path, _, param_name = name.rpartition(".")
            parent, _, leaf = module_path.rpartition(".")
            if leaf in FUSED_MODULES:
                fused, shard_id = FUSED_MODULES[leaf]
                modules[f"{parent}.{fused}"].load_shard(param_name, tensor, shard_id)
                loaded.add(f"{parent}.{fused}.{param_name}")
            elif isinstance(modules.get(module_path), Linear):
                modules[module_path].load_shard(param_name, tensor)
                loaded.add(name)
            elif isinstance(modules.get(module_path), VocabParallelEmbedding) and param_name == "weight":
                modules[module_path].load_weight(tensor)
                loaded.add(name)
            elif name in params:
                if params[name].shape != tensor.shape:
                    raise ValueError(
                        f"shape mismatch for {name}: checkpoint {tuple(tensor.shape)}, "
                        f"model {tuple(params[name].shape)}"
                    )
                params[name].copy_(tensor)
                loaded.add(name)
            else:
                raise ValueError(f"checkpoint tensor {name} has no place in {type(self).__name__}")
        missing = sorted(set(params) - loaded)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} weights, e.g. {missing[:3]}")
        if num_kv_scales:
            logger.info(
                "checkpoint has %d static KV-cache scales (k_scale/v_scale); not used: --kv-cache-dtype fp8/int8 "
                "scales every cached token and head itself",
                num_kv_scales,
            )
        self.finish_loading()

    def finish_loading(self) -> None:
        """Once every weight is in: each Linear repacks for its kernel, and the LM head for the logits GEMM."""
        finish_loading(self)
        head = self.model.embed_tokens if self.tie_word_embeddings else self.lm_head
        head.pack_head(embeds_too=self.tie_word_embeddings)


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = True
