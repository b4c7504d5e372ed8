"""Tiny Llama models with SmolLM2's tokenizer, for fast training and reward-model tests.

Two layers, hidden size 64: a training step takes about 0.1 s on a laptop CPU, and the
folders they write load back like any HF model (``hf/DIR``, ``rm/DIR``, ``--model DIR``).
Weights are random (seeded): these models test mechanics, never judgement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from charter.backends.hf import import_torch
from charter.backends.smollm2 import converted_dir


def _config(transformers: Any, tokenizer: Any, **extra: Any) -> Any:
    return transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        tie_word_embeddings=True,
        **extra,
    )


def _tokenizer(transformers: Any) -> Any:
    return transformers.AutoTokenizer.from_pretrained(str(converted_dir()))


def tiny_causal_lm(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny causal LM (with SmolLM2's tokenizer and chat template) to ``folder``."""
    torch, transformers = import_torch()
    torch.manual_seed(seed)
    tok = _tokenizer(transformers)
    model = transformers.LlamaForCausalLM(_config(transformers, tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


def tiny_reward_model(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny sequence-classification model with one output (a reward head)."""
    torch, transformers = import_torch()
    torch.manual_seed(seed)
    tok = _tokenizer(transformers)
    model = transformers.LlamaForSequenceClassification(_config(transformers, tok, num_labels=1))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)
