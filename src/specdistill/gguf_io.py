"""GGUF in: a `.gguf` file as a model spec, and `specdistill convert` to a plain Hugging Face folder (DESIGN 10).

A model spec ending in `.gguf` (any role: model.teacher, model.student, --model, --target, --draft, --teacher)
loads through transformers' GGUF support: the weights are dequantized into the configured dtype, the tokenizer
and its chat template are rebuilt from the file's metadata. What transformers leaves out is filled from the same
metadata, as llama.cpp reads it: every end id (eos, eot, eom) goes into the generation_config, and a Gemma-3
file's sliding-window pattern, sliding rope base, query scale and final logit softcapping into the config.

Loading dequantizes every tensor (slow for big files); `convert` does it once and writes a folder that loads in
seconds: safetensors, no quantization config, the tokenizer with its chat template, a generation_config with
every end id, and `gguf_source.json` (the file it came from and a hash of its token list) so that `export` can
copy the file's own tokenizer metadata back.

The `gguf` package is an optional extra (`pip install 'specdistill[gguf]'`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import warnings
from pathlib import Path

import numpy as np

from .errors import UserError
from .folders import check_new_folder, new_folder

GGUF_EXTRA = "pip install 'specdistill[gguf]'"
SOURCE_RECORD = "gguf_source.json"
_MAGIC = b"GGUF"
# GGUF metadata value types: fixed-width ones as struct formats; 8 = string, 9 = array
_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def is_gguf_spec(spec) -> bool:
    return isinstance(spec, str) and spec.strip().lower().endswith(".gguf")


def require_gguf(what: str):
    """The `gguf` package, or a UserError naming the extra that installs it."""
    try:
        import gguf
    except ImportError:
        raise UserError(f"{what}: GGUF files need the gguf package, an optional extra: {GGUF_EXTRA}") from None
    return gguf


# ---------------------------------------------------------------- reading the header (fast, no tensor data)
def _read_string(blob, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", blob, pos)
    return bytes(blob[pos + 8: pos + 8 + length]).decode("utf-8"), pos + 8 + length


def _read_value(blob, pos: int, kind: int, keep: bool):
    """(value, next offset); an array of strings is kept only when `keep` (else its length is returned)."""
    if kind in _FORMATS:
        return struct.unpack_from(_FORMATS[kind], blob, pos)[0], pos + struct.calcsize(_FORMATS[kind])
    if kind == 8:
        return _read_string(blob, pos)
    if kind != 9:
        raise ValueError(f"unknown metadata value type {kind}")
    item, count = struct.unpack_from("<IQ", blob, pos)
    pos += 12
    if item in _FORMATS:
        width = struct.calcsize(_FORMATS[item])
        return list(np.frombuffer(blob, _FORMATS[item], count, pos)) if keep else count, pos + count * width
    values = []
    for _ in range(count):
        if item == 8 and not keep:  # skip the text of strings nobody asked for (a 262,144-token vocabulary)
            pos += 8 + struct.unpack_from("<Q", blob, pos)[0]
            continue
        value, pos = _read_value(blob, pos, item, keep)
        values.append(value)
    return (values if keep else count), pos


@functools.lru_cache(maxsize=8)
def _header(path: str, mtime_ns: int, size: int, keep: tuple[str, ...]) -> tuple[dict, list, int]:
    """(metadata, [(name, ggml type, element count, offset)], data start) of a GGUF file; raises on damage."""
    import gguf

    blob = np.memmap(path, mode="r", dtype=np.uint8)
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", blob, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (llama.cpp writes 3)")
    metadata, pos = {}, 24
    for _ in range(n_kv):
        key, pos = _read_string(blob, pos)
        (kind,) = struct.unpack_from("<I", blob, pos)
        metadata[key], pos = _read_value(blob, pos + 4, kind, key in keep)
    tensors = []
    for _ in range(n_tensors):
        name, pos = _read_string(blob, pos)
        (dims,) = struct.unpack_from("<I", blob, pos)
        shape = struct.unpack_from(f"<{dims}Q", blob, pos + 4)
        kind, offset = struct.unpack_from("<IQ", blob, pos + 4 + 8 * dims)
        pos += 16 + 8 * dims
        tensors.append((name, kind, int(np.prod(shape)), offset))
    align = metadata.get("general.alignment", 32)
    start = (pos + align - 1) // align * align
    end = max((start + off + n // gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(k)][0]
               * gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(k)][1] for _, k, n, off in tensors), default=start)
    if end > size:
        raise ValueError(f"truncated: its tensors need {end:,} bytes, the file has {size:,}")
    return metadata, tensors, start


def read_header(path, role: str = "model", keep: tuple[str, ...] = ()) -> tuple[dict, list]:
    """(metadata, tensors) of a GGUF file; a file that is missing, not GGUF, or damaged is a UserError naming it."""
    require_gguf(f"{role}={path}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{role}={path}: no such file; give a .gguf file, a Hugging Face model folder, a hub id "
                        f"or a preset")
    with open(file, "rb") as handle:
        magic = handle.read(4)
    if magic != _MAGIC:
        raise UserError(f"{role}={path}: not a GGUF file (it starts with {magic!r}, a GGUF file with b'GGUF'); "
                        f"give a .gguf model file or a Hugging Face model folder")
    stat = file.stat()
    try:
        metadata, tensors, _ = _header(str(file.resolve()), stat.st_mtime_ns, stat.st_size, tuple(keep))
    except struct.error:
        raise UserError(f"{role}={path}: a damaged GGUF file (truncated: its header ends early); download or "
                        f"convert it again") from None
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise UserError(f"{role}={path}: a damaged GGUF file ({exc}); download or convert it again") from None
    return metadata, tensors


def loadable_architectures() -> list[str]:
    """The GGUF architectures this transformers can load."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        from transformers.integrations.gguf.utils import GGUF_ARCHS
    except ImportError:
        GGUF_ARCHS = {}
    return sorted({*GGUF_SUPPORTED_ARCHITECTURES, *GGUF_ARCHS} - {"general", "tokenizer"})


def check_gguf_file(path, role: str = "model") -> dict:
    """Refuse a .gguf spec that cannot load (missing, not GGUF, truncated, or an architecture transformers does
    not load from GGUF); returns its metadata."""
    import transformers

    metadata, _ = read_header(path, role)
    arch = metadata.get("general.architecture")
    if arch not in loadable_architectures():
        raise UserError(f"{role}={path}: architecture {arch!r} cannot be loaded from GGUF by transformers "
                        f"{transformers.__version__}; it loads: {', '.join(loadable_architectures())}")
    return metadata


def gguf_end_ids(metadata: dict) -> list[int]:
    """Every end id the file names, as llama.cpp reads them: eos, then eot (end of turn), then eom."""
    found = [metadata.get(f"tokenizer.ggml.{role}_token_id") for role in ("eos", "eot", "eom")]
    return list(dict.fromkeys(int(i) for i in found if i is not None))


# ---------------------------------------------------------------- loading through transformers
def _split(path) -> tuple[str, str]:
    file = Path(path).expanduser().resolve()
    return str(file.parent), file.name


def gguf_config(path):
    """transformers' config of the file, with what its GGUF reader leaves out taken from the metadata."""
    from transformers import AutoConfig

    metadata = check_gguf_file(path)
    folder, name = _split(path)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    arch = metadata["general.architecture"]
    if config.model_type == "gemma3_text":
        pattern = metadata.get(f"{arch}.attention.sliding_window_pattern")
        if isinstance(pattern, list):  # one flag per layer: True = sliding
            config.layer_types = ["sliding_attention" if p else "full_attention" for p in pattern]
        elif isinstance(pattern, int) and pattern > 0:  # every pattern-th layer is full
            config.layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                                  for i in range(config.num_hidden_layers)]
        # llama.cpp scales queries by 1/sqrt(head_dim) (by 1/sqrt(hidden / heads) in the 62-layer 27B); transformers
        # keeps its default of 256, right only where head_dim is 256
        config.query_pre_attn_scalar = (config.hidden_size // config.num_attention_heads
                                        if config.num_hidden_layers == 62 else config.head_dim)
        swa_base = metadata.get(f"{arch}.rope.freq_base_swa")
        if swa_base is not None:
            config.rope_parameters["sliding_attention"]["rope_theta"] = float(swa_base)
    softcap = metadata.get(f"{arch}.final_logit_softcapping")
    if softcap and hasattr(config, "final_logit_softcapping"):
        config.final_logit_softcapping = float(softcap)
    ends = gguf_end_ids(metadata)
    if ends:
        config.eos_token_id = ends if len(ends) > 1 else ends[0]
    return config


def load_gguf_model(path, dtype):
    """The model of a GGUF file, dequantized into `dtype` (a torch dtype), its generation_config listing every
    end id of the file."""
    import transformers
    from transformers import AutoModelForCausalLM

    config = gguf_config(path)
    folder, name = _split(path)
    # transformers >= 5.24 can keep GGUF blocks packed (not trainable); ask for plain weights where it can
    packed = ({"quantization_config": transformers.GgufConfig(dequantize=True)}
              if hasattr(transformers, "GgufConfig") else {})
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config, dtype=dtype, **packed)
    model.generation_config.eos_token_id = config.eos_token_id
    return model


_WARNED: set[str] = set()


def load_gguf_tokenizer(path):
    """The tokenizer transformers rebuilds from the file, its chat template included; a file without one uses
    the plain template, said once per file."""
    from transformers import AutoTokenizer

    check_gguf_file(path, "tokenizer")
    folder, name = _split(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    size = _vocabulary_size(path)
    if len(tokenizer) > size:
        tokenizer = _only_ids_below(tokenizer, size)
    tokenizer.name_or_path = str(path)
    if not getattr(tokenizer, "chat_template", None) and str(path) not in _WARNED:
        _WARNED.add(str(path))
        warnings.warn(f"{path} has no chat template (tokenizer.chat_template): prompts use the plain template "
                      f"(Question: ...\\nAnswer: )", stacklevel=3)
    return tokenizer


def _vocabulary_size(path) -> int:
    """The file's token count without its trailing unused `[PADi]` tokens (embedding rows past the tokenizer,
    as `export` writes them; the model keeps those rows, as a padded checkpoint does)."""
    metadata, _ = read_header(path, "tokenizer", keep=("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"))
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    types = metadata.get("tokenizer.ggml.token_type") or []
    size = len(tokens)
    while size and len(types) == len(tokens) and types[size - 1] == 5 and tokens[size - 1] == f"[PAD{size - 1}]":
        size -= 1  # 5: llama.cpp's unused token type
    return size


def _only_ids_below(tokenizer, size: int):
    """The tokenizer without ids from `size` on: the added tokens transformers appends past the file's ids (a
    default `<|endoftext|>` unk, Gemma's `<mask>`), which have no embedding row and which llama.cpp does not
    know, and the file's unused [PADi] rows."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    dropped = {t["content"] for t in spec["added_tokens"] if t["id"] >= size}
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < size]
    if isinstance(spec["model"].get("vocab"), dict):  # BPE / WordPiece: a text -> id map
        spec["model"]["vocab"] = {text: i for text, i in spec["model"]["vocab"].items() if i < size}
    roles = {f"{role}_token": getattr(tokenizer, f"{role}_token") for role in ("bos", "eos", "unk", "pad")}
    roles = {key: value for key, value in roles.items() if value is not None and value not in dropped}
    flags = {key: tokenizer.init_kwargs[key] for key in ("add_bos_token", "add_eos_token")
             if key in tokenizer.init_kwargs}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                   chat_template=tokenizer.chat_template, clean_up_tokenization_spaces=False,
                                   **roles, **flags)


# ---------------------------------------------------------------- convert
def token_list_sha256(tokens) -> str:
    """A hash of a vocabulary's token texts in id order (identifies the vocabulary a folder was converted from)."""
    return hashlib.sha256("\x00".join(tokens).encode("utf-8")).hexdigest()


def read_source_record(folder) -> dict | None:
    """The GGUF file a folder was converted from ({gguf, tokens_sha256, architecture}), or None."""
    record = Path(folder) / SOURCE_RECORD
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and {"gguf", "tokens_sha256"} <= set(data) else None


def carry_source_record(spec: str, dest: Path) -> None:
    """Give folder `dest`, a model written from `spec` (a trained student, a cut draft), the record of the GGUF
    file its vocabulary came from: copied from a folder that has one, written for a .gguf spec; nothing else."""
    path = Path(str(spec)).expanduser()
    if path.is_dir() and read_source_record(path) is not None:
        (dest / SOURCE_RECORD).write_bytes((path / SOURCE_RECORD).read_bytes())
    elif is_gguf_spec(str(spec)) and path.is_file():
        write_source_record(str(path), dest, str(spec))


def write_source_record(gguf_file: str, dest: Path, role: str = "IN.gguf") -> None:
    """Record in folder `dest` the GGUF file its vocabulary came from (SOURCE_RECORD: the file, its architecture
    and a hash of its token list), so that `export` can copy the file's own vocabulary metadata."""
    metadata, _ = read_header(gguf_file, role, keep=("tokenizer.ggml.tokens",))
    record = {"gguf": str(Path(gguf_file).expanduser().resolve()), "architecture": metadata["general.architecture"],
              "tokens_sha256": token_list_sha256(metadata["tokenizer.ggml.tokens"])}
    (dest / SOURCE_RECORD).write_text(json.dumps(record, indent=1))


def convert_gguf(src: str, out_dir: str, dtype=None) -> dict:
    """Write the GGUF file `src` as a plain Hugging Face folder `out_dir` (new or empty; written to a temporary
    folder and renamed into place) with weights in `dtype` (a torch dtype; default float32). Returns {path,
    architecture, parameters, end_ids}."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    out = check_new_folder(out_dir, out_dir, "convert")
    metadata, _ = read_header(src, "IN.gguf")
    check_gguf_file(src, "IN.gguf")
    loaded = load_gguf_model(src, dtype)
    tokenizer = load_gguf_tokenizer(src)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the folder holds plain weights
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.load_state_dict(loaded.state_dict(), assign=True)
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    with new_folder(out) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_source_record(src, tmp)
    return {"path": str(out), "architecture": config.model_type,
            "parameters": sum(p.numel() for p in fresh.parameters()),
            "end_ids": gguf_end_ids(metadata)}
