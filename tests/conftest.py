"""Shared fixtures: tiny random models of real architectures, saved and loaded through from_pretrained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from specdistill.data.tokenizer import build_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"shared data folder {SHARED_DATA} is absent")

ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "gemma": (GemmaConfig, GemmaForCausalLM),
}


def tiny_config(arch: str, vocab_size: int, layers: int = 2, hidden: int = 32, **extra):
    cfg_cls, _ = ARCHS[arch]
    tok = build_tokenizer()
    kwargs = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    if arch == "gemma":
        kwargs["head_dim"] = hidden // 4
    kwargs.update(extra)
    return cfg_cls(**kwargs)


def save_tiny_model(path: Path, arch: str = "llama", vocab_pad: int = 0, seed: int = 0, **extra) -> Path:
    """A randomly initialised model of `arch` with the built-in tokenizer (and its chat template) in `path`."""
    tok = build_tokenizer()
    torch.manual_seed(seed)
    model = ARCHS[arch][1](tiny_config(arch, len(tok) + vocab_pad, **extra))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: save_tiny_model(root / arch, arch) for arch in ARCHS}
