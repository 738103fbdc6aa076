"""`specdistill export`: a Hugging Face model folder as one GGUF file that llama.cpp (and Ollama) run (DESIGN 10).

Architectures: `llama` and `mistral` (written as llama.cpp's `llama`) and `gemma3_text` (`gemma3`). Tensors get
llama.cpp's names (the `gguf` package's TensorNameMap) and layout:
- Llama-family q_proj/k_proj rows are permuted per head from Hugging Face's rotate-half order back to the
  interleaved pairs llama.cpp's rope reads (the inverse of transformers' GGUF loader);
- Gemma's RMSNorm multiplies by (1 + w), llama.cpp's by w: every Gemma-3 norm (attention, post-attention,
  pre/post feed-forward, q_norm, k_norm, final) is stored as w + 1;
- a tied LM head is not written (llama.cpp reuses token_embd); 1-D tensors (norms) stay f32.

Outtypes and their error on each weight w of a 2-D tensor (norms are exact in all three):
- `f32`: exact; the round trip HF -> GGUF -> transformers gives the same logits to float rounding (tested: 1e-4).
- `f16`: round to nearest half, |w' - w| <= 2^-11 |w| (for |w| >= 2^-14, f16's normal range; below it the
  absolute step 2^-24 applies).
- `q8_0`: blocks of 32 along each row share one scale d = max|w_block| / 127, stored as f16 (relative rounding
  <= 2^-11), and hold round(w / d) as int8 (|q| <= 127), so |w' - w| <= d/2 + 127 d 2^-11 = 0.562 d, i.e. within
  max|w_block| / 226 (0.44% of the block's largest weight). Rows whose length is not a multiple of 32 are stored
  as f16. For Gaussian-like weights the error is uniform, rms ~ d / sqrt(12) ~ 0.5% of the weights' rms, and the
  errors of the n quantized matrices on a token's path add in quadrature: the logits' rms error is ~ 0.5% x
  sqrt(n) of their rms (measured 0.9% and 2.1% on the 2-layer Llama and Gemma-3 test models; tests/test_gguf.py
  holds them to 5%). llama.cpp also rounds activations to 8 bits in q8_0 matmuls, so its greedy output on a q8_0
  file may leave transformers' only where two logits are that close.

The tokenizer goes into the file's metadata: copied from the GGUF file the folder was converted from (the
`gguf_source.json` that `specdistill convert` writes, when the file is still there and unchanged), or built from
the folder's tokenizer.json (byte-level BPE: llama.cpp's `gpt2` model). The chat template and every end id are
written too (eos, and the template's end of turn as eot).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .gguf_io import read_source_record, require_gguf, token_list_sha256

OUTTYPES = ("f32", "f16", "q8_0")
GEMMA_NORM_SHIFT = 1.0  # Gemma's RMSNorm scales by (1 + w); llama.cpp's by the stored weight
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "gemma3_text": "gemma3"}
# llama.cpp's pre-tokenizer names for the byte-level BPE splits specdistill recognises (tokenizer.ggml.pre).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")


def export_gguf(model_dir: str, out_path: str, outtype: str = "f16") -> dict:
    """Write the model of `model_dir` to `out_path` (written to a temporary file, then renamed into place; an
    existing file is refused). Returns a summary {path, architecture, outtype, tensors, bytes, tokenizer}."""
    gguf = require_gguf(model_dir)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, out = _check_paths(model_dir, out_path, outtype)
    config = AutoConfig.from_pretrained(folder).get_text_config()
    arch = _check_architecture(config, folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        rows = model.get_input_embeddings().weight.shape[0]
        _write_general(writer, gguf, folder, outtype)
        _write_hparams(writer, config, arch, rows)
        vocab = write_vocab(writer, gguf, folder, tokenizer, model.generation_config, rows)
        count = _write_tensors(writer, gguf, model, config, arch, outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(out), "architecture": arch, "outtype": outtype, "tensors": count,
            "bytes": out.stat().st_size, "tokenizer": vocab}


def _check_paths(model_dir: str, out_path: str, outtype: str) -> tuple[Path, Path]:
    folder, out = Path(model_dir).expanduser(), Path(out_path).expanduser()
    if outtype not in OUTTYPES:
        raise UserError(f"--outtype {outtype!r} is not allowed; allowed: {', '.join(OUTTYPES)}")
    if not (folder / "config.json").is_file():
        raise UserError(f"{model_dir}: not a Hugging Face model folder (no config.json); export takes a folder "
                        f"(a .gguf file is already GGUF)")
    if out.suffix.lower() != ".gguf":
        raise UserError(f"{out_path}: the output file must end in .gguf")
    if out.exists():
        raise UserError(f"{out_path} already exists; export never overwrites a file: remove it or give a new name")
    if not out.parent.is_dir():
        raise UserError(f"{out_path}: the folder {out.parent} does not exist; create it first")
    return folder, out


def _check_architecture(config, folder: Path) -> str:
    """llama.cpp's architecture name for `config`, or a UserError naming what it cannot represent."""
    kind = config.model_type
    if kind not in GGUF_ARCH:
        raise UserError(f"{folder}: model type {kind!r} cannot be exported; export supports "
                        f"{', '.join(GGUF_ARCH)} (llama.cpp's llama and gemma3)")
    problems = []
    if kind in ("llama", "mistral"):
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            problems.append("attention_bias/mlp_bias: biases are not written")
        if getattr(config, "hidden_act", "silu") != "silu":
            problems.append(f"hidden_act {config.hidden_act!r}: llama.cpp's llama uses silu")
        if getattr(config, "sliding_window", None):
            warnings.warn(f"{folder}: sliding_window={config.sliding_window} is not written: llama.cpp's llama "
                          f"attends to the whole context, so outputs differ past {config.sliding_window} tokens",
                          stacklevel=3)
    else:
        head_dim = _head_dim(config)
        scale = config.hidden_size // config.num_attention_heads if config.num_hidden_layers == 62 else head_dim
        if config.query_pre_attn_scalar != scale:
            problems.append(f"query_pre_attn_scalar {config.query_pre_attn_scalar}: llama.cpp's gemma3 scales "
                            f"queries by 1/sqrt({scale})")
        if getattr(config, "attn_logit_softcapping", None) is not None:
            problems.append("attn_logit_softcapping: llama.cpp's gemma3 has none")
        if getattr(config, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            problems.append(f"hidden_activation {config.hidden_activation!r}: llama.cpp's gemma3 uses tanh GELU")
        if getattr(config, "use_bidirectional_attention", False):
            problems.append("use_bidirectional_attention: llama.cpp's gemma3 is causal")
    for layer_type in ("full_attention", "sliding_attention", None):
        rope = _rope(config, layer_type)
        if rope.get("rope_type", "default") not in ("default", "linear"):
            problems.append(f"rope type {rope['rope_type']!r}: export writes default and linear rope scaling")
    if problems:
        raise UserError(f"{folder}: cannot be exported exactly: {'; '.join(dict.fromkeys(problems))}")
    return GGUF_ARCH[kind]


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _rope(config, layer_type: str | None = None) -> dict:
    """The rope parameters {rope_type, rope_theta, factor?} of one layer type (Gemma-3 keeps one per type)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if layer_type is not None:
        return dict(params.get(layer_type) or {}) if layer_type in params else {}
    if "full_attention" in params:
        return dict(params["full_attention"])
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


# ---------------------------------------------------------------- metadata
def _write_general(writer, gguf, folder: Path, outtype: str) -> None:
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(folder.resolve().name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_hparams(writer, config, arch: str, rows: int) -> None:
    """Every hyperparameter llama.cpp reads for `arch` (llama.cpp's defaults are never relied on)."""
    head_dim = _head_dim(config)
    writer.add_vocab_size(rows)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(_gguf().RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
        return
    # gemma3: which layers slide (llama.cpp's default is 5 sliding then 1 full), the window and its rope base
    writer.add_sliding_window(config.sliding_window)
    writer.add_sliding_window_pattern([t == "sliding_attention" for t in config.layer_types])
    writer.add_rope_freq_base_swa(float(_rope(config, "sliding_attention").get("rope_theta", 10000.0)))
    if getattr(config, "final_logit_softcapping", None) is not None:
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))


def _gguf():
    import gguf

    return gguf


# ---------------------------------------------------------------- tensors
def _permute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """[heads * head_dim, in] rows from HF's half-split rope order to llama.cpp's interleaved pairs: within each
    head, row i of the first half and row i of the second half become rows 2i and 2i + 1."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(model, config, arch: str):
    """(llama.cpp name, float32 array) of every tensor llama.cpp reads, in llama.cpp's layout."""
    gguf = _gguf()
    model_arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch)
    names = gguf.get_tensor_name_map(model_arch, config.num_hidden_layers)
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name.endswith("lm_head.weight"):
            continue  # llama.cpp ties an absent output.weight to token_embd
        stem, suffix = hf_name.rsplit(".", 1)
        name = names.get_name(stem)
        if name is None:
            raise UserError(f"tensor {hf_name} has no llama.cpp name for architecture {arch}; export cannot place it")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == "llama" and name.endswith(".attn_q"):
            data = _permute_rope(data, config.num_attention_heads)
        elif arch == "llama" and name.endswith(".attn_k"):
            data = _permute_rope(data, config.num_key_value_heads)
        elif arch == "gemma3" and name.endswith("norm"):
            data = data + GEMMA_NORM_SHIFT  # Gemma's (1 + w) RMSNorm as llama.cpp's plain w
        yield f"{name}.{suffix}", data


def _write_tensors(writer, gguf, model, config, arch: str, outtype: str) -> int:
    count = 0
    for name, data in gguf_tensors(model, config, arch):
        data, qtype = encode_tensor(gguf, data, outtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
        count += 1
    return count


def encode_tensor(gguf, data: np.ndarray, outtype: str):
    """(array, raw ggml type or None) of one float32 tensor in `outtype`; 1-D tensors stay f32 as llama.cpp
    writes them, and q8_0 needs rows of whole 32-value blocks (other rows are written as f16)."""
    if data.ndim == 1 or outtype == "f32":
        return data.astype(np.float32), None
    if outtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), None


# ---------------------------------------------------------------- vocabulary
def write_vocab(writer, gguf, folder: Path, tokenizer, generation_config, rows: int) -> str:
    """The tokenizer's metadata (copied from the source GGUF when there is one, else built from tokenizer.json),
    its chat template and end ids. Returns where the vocabulary came from."""
    source = _usable_source(gguf, folder, rows)
    if source is not None:
        _copy_tokenizer_fields(writer, gguf, source)
        origin = f"copied from {source}"
    else:
        _write_bpe_vocab(writer, gguf, folder, tokenizer, rows)
        origin = "built from tokenizer.json"
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    if source is None:
        _write_end_ids(writer, tokenizer, generation_config)
    return origin


def _usable_source(gguf, folder: Path, rows: int) -> Path | None:
    """The GGUF file recorded at convert time, if it still holds the same token list and as many ids as rows."""
    record = read_source_record(folder)
    if record is None:
        return None
    path = Path(record["gguf"])
    if not path.is_file():
        warnings.warn(f"{folder}: its source {path} is gone; the vocabulary is rebuilt from tokenizer.json",
                      stacklevel=4)
        return None
    tokens = gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"].contents()
    if token_list_sha256(tokens) != record["tokens_sha256"] or len(tokens) != rows:
        warnings.warn(f"{folder}: {path} no longer holds the vocabulary it was converted from (or the model has "
                      f"{rows} rows); the vocabulary is rebuilt from tokenizer.json", stacklevel=4)
        return None
    return path


def _copy_tokenizer_fields(writer, gguf, source: Path) -> None:
    """Every tokenizer.* field of `source` but its chat template (the folder's own is written)."""
    reader = gguf.GGUFReader(source)
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.") or key.startswith("tokenizer.chat_template"):
            continue
        types = field.types
        sub_type = types[-1] if types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), types[0], sub_type=sub_type)


def _write_bpe_vocab(writer, gguf, folder: Path, tokenizer, rows: int) -> None:
    """llama.cpp's `gpt2` vocabulary from a byte-level BPE tokenizer.json: tokens by id (rows past the
    tokenizer as unused [PADi]), token types (special added -> control, other added -> user-defined), merges."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError(f"{folder}: its tokenizer ({model.get('type')}{', byte fallback' if model.get('byte_fallback') else ''}) "
                        f"is exported only from the GGUF it was converted from (specdistill convert records it); "
                        f"a byte-level BPE tokenizer.json is built directly")
    tokens = [f"[PAD{i}]" for i in range(rows)]
    types = [gguf.TokenType.UNUSED] * rows
    added = tokenizer.added_tokens_decoder
    for text, i in tokenizer.get_vocab().items():
        if i < rows:
            tokens[i] = text
            types[i] = (gguf.TokenType.NORMAL if i not in added else
                        gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(spec, folder))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    vocab_log = logging.getLogger("gguf.vocab")
    level = vocab_log.level
    vocab_log.setLevel(logging.ERROR)  # its notes on post-processor templates are about ids written elsewhere here
    try:
        merges = gguf.SpecialVocab(folder, load_merges=True).merges
    finally:
        vocab_log.setLevel(level)
    writer.add_token_merges(merges)


def _pre_tokenizer_name(spec: dict, folder: Path) -> str:
    """llama.cpp's name for the tokenizer.json pre-tokenizer: GPT-2's byte-level split, Llama-3's regex split,
    or SmolLM's single digits before GPT-2's split; anything else is refused (llama.cpp would split differently)."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and parts[0].get("pattern", {}).get("Regex") == _LLAMA3_SPLIT:
        return "llama-bpe"
    raise UserError(f"{folder}: its pre-tokenizer ({', '.join(map(str, kinds)) or 'none'}) has no llama.cpp "
                    f"counterpart that export knows; known: GPT-2's byte-level split, Llama-3's split, SmolLM's digits")


def _write_end_ids(writer, tokenizer, generation_config) -> None:
    """bos/eos/pad/unk, whether BOS is prepended, and the end ids: the template's end of turn as eot, one more
    generation_config end id as eom (llama.cpp also ends at tokens it recognises by text, e.g. <|eot_id|>)."""
    from .data.templates import turn_end_id

    for role in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{role}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{role}_token_id")(token_id)
    probe = tokenizer("a").input_ids
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id)
    eos = tokenizer.eos_token_id
    turn_end = turn_end_id(tokenizer)
    if turn_end is not None and turn_end != eos:
        writer.add_eot_token_id(turn_end)
    listed = getattr(generation_config, "eos_token_id", None)
    listed = listed if isinstance(listed, (list, tuple)) else [listed]
    extra = [i for i in listed if i is not None and i not in (eos, turn_end)]
    if extra:
        writer.add_eom_token_id(int(extra[0]))
