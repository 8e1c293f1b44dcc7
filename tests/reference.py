"""HF transformers as the reference in tests: its greedy continuation, and tiny random models saved
as HF folders for architectures we have no real checkpoint of."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig


def hf_greedy(model, prompt_ids: list[int], num_new: int) -> list[int]:
    """HF `generate`'s greedy continuation of one unpadded prompt, exactly num_new tokens (EOS ignored)."""
    ids = torch.tensor([prompt_ids], device=model.device)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=num_new,
            min_new_tokens=num_new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=None,
        )
    return out[0, len(prompt_ids) :].tolist()


def save_tiny_model(config: PretrainedConfig, path, tokenizer):
    """A random fp32 model for `config` with weights scaled up (so logits are far from uniform),
    saved with `tokenizer` into `path`; returns the model."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model
