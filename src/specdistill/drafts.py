"""Drafts cut from the target: a model of the source's own embeddings, a subset of its decoder layers (in
order), its final norm and its LM head (`specdistill init-draft`, docs/models.md).

Many families have no small sibling (Gemma-3-270M is the smallest Gemma), so a draft that shares the target's
tokenizer exactly is made from the target itself. Before training such a draft is accepted almost never (the
kept layers were trained to read the outputs of the layers that are gone); it is a starting point that keeps
the target's token embeddings and output head, for distillation to train.

The draft is built fresh from a config derived from the source's (so every layer's own index, attention type and
sliding window come from the new config, as transformers builds them), then given the source's tensors under
their new layer indices; a strict load makes a missing or extra tensor an error.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import torch

from .errors import UserError
from .folders import check_new_folder, new_folder

# Files of a model folder that the draft does not copy: weights (the draft writes its own), the configs the draft
# writes itself, and the index of sharded weights. Everything else (tokenizer, chat template, licence) is copied.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")
WRITTEN = ("config.json", "generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def count_rule(n: int, total: int) -> list[int]:
    """The layers a draft of `n` of `total` layers keeps: the first n - 1, then the last.

    Why: the first layers build the representations every later layer reads (so they are kept as a contiguous
    run, each reading what it was trained to read), and the last layer is the one trained to write into the
    final norm and LM head's input space, so keeping it gives the head inputs of the kind it was trained on.
    This is the cut the issue's measured SmolLM2 drafts used ("its first layers plus its last")."""
    return [*range(n - 1), total - 1]


def parse_layers(spec: str, total: int) -> list[int]:
    """--layers N (a count: `count_rule`) or i,j,...,k (0-based indices, strictly increasing, each < total) ->
    the kept layers' indices. A count must be in 1..total-1 (a copy of every layer is the list 0,...,total-1)."""
    text = str(spec).strip()
    allowed = (f"give a count N in 1..{total - 1} (keeps the first N-1 layers and the last) or 0-based layer "
               f"indices in increasing order, comma-separated, each in 0..{total - 1}")
    items = [t.strip() for t in text.split(",")]
    if not text or any(not re.fullmatch(r"-?\d+", t) for t in items):
        raise UserError(f"--layers {spec!r}: not a whole number or a comma-separated list of them; {allowed}")
    values = [int(t) for t in items]
    if "," not in text:
        n = values[0]
        if not 1 <= n < total:
            raise UserError(f"--layers {n}: the source has {total} layers, so a count must be in 1..{total - 1}; "
                            f"{allowed}")
        return count_rule(n, total)
    for a, b in zip(values, values[1:]):
        if b == a:
            raise UserError(f"--layers {text}: layer {a} is repeated; {allowed}")
        if b < a:
            raise UserError(f"--layers {text}: {b} comes after {a}, not in increasing order; {allowed}")
    bad = next((v for v in values if not 0 <= v < total), None)
    if bad is not None:
        raise UserError(f"--layers {text}: layer {bad} is out of range, the source has layers 0..{total - 1}; "
                        f"{allowed}")
    return values


# Config fields that hold one entry per decoder layer: the draft keeps the kept layers' entries. (A list field
# whose name says "layer" and whose length is the layer count is taken as one too, e.g. SmolLM3's no_rope_layers.)
PER_LAYER = ("layer_types", "no_rope_layers", "activation_sparsity_pattern")
# Config fields that count the first layers of a kind (Qwen2/3: layers >= max_window_layers use the sliding window
# when use_sliding_window is on): the draft counts its kept layers below the source's value.
FIRST_LAYERS = ("max_window_layers",)


def draft_config(config, keep: list[int]):
    """The source's config for a model of only the layers `keep` (increasing): num_hidden_layers, every per-layer
    field (PER_LAYER, attention types and with them which layers use the sliding window) and FIRST_LAYERS
    renumbered; the sliding window size itself is shared by all layers and stays. A quantization config is
    dropped: the draft is written dequantized, in the dtype it was loaded in."""
    total = config.num_hidden_layers
    fields = config.to_dict()
    fields.pop("quantization_config", None)
    for key, value in list(fields.items()):
        per_layer = key in PER_LAYER or ("layer" in key and isinstance(value, list) and len(value) == total)
        if per_layer and isinstance(value, list):
            if len(value) != total:
                raise ValueError(f"config.{key} has {len(value)} entries for {total} layers")
            fields[key] = [value[i] for i in keep]
        elif key in FIRST_LAYERS and isinstance(value, int):
            fields[key] = sum(i < value for i in keep)
    fields["num_hidden_layers"] = len(keep)
    return type(config).from_dict(fields)


def decoder_layers_name(model) -> str:
    """The qualified name of the model's ModuleList of decoder layers (`model.layers` in Llama, Qwen, Gemma)."""
    total = model.config.num_hidden_layers
    names = [name for name, m in model.named_modules()
             if isinstance(m, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers" and len(m) == total]
    if len(names) != 1:
        raise UserError(f"init-draft: cannot find the decoder layers of this {type(model).__name__} (found "
                        f"{len(names)} lists of {total} layers named `layers`); it cuts decoder-only causal LMs "
                        f"such as Llama, Qwen, Gemma and Mistral")
    return names[0]


def cut_layers(model, keep: list[int]):
    """A new model of `model`'s embeddings, its layers `keep` in order (layer keep[j] becomes layer j), its final
    norm and LM head, in the same dtype and device. Tied embeddings stay tied (the new model ties them as its
    config says); an untied head is copied."""
    if model.config.get_text_config() is not model.config:
        raise UserError(f"init-draft: {type(model).__name__} is a multimodal model; give its text-only causal LM "
                        f"(a text config such as gemma3_text)")
    from transformers import AutoModelForCausalLM

    prefix = decoder_layers_name(model) + "."
    new_index = {old: new for new, old in enumerate(keep)}
    weights = {}
    for key, tensor in model.state_dict().items():
        if key.startswith(prefix):
            layer, rest = key[len(prefix):].split(".", 1)
            if int(layer) in new_index:
                weights[f"{prefix}{new_index[int(layer)]}.{rest}"] = tensor
        else:
            weights[key] = tensor  # embeddings, final norm, LM head (the same tensor as the embedding when tied)
    dtype = next(model.parameters()).dtype
    draft = AutoModelForCausalLM.from_config(draft_config(model.config, keep), dtype=dtype)
    draft.load_state_dict(weights, strict=True)  # a tensor the draft lacks or leaves out is an error
    draft.generation_config = copy.deepcopy(model.generation_config)
    return draft.to(next(model.parameters()).device).eval()


def copy_tokenizer_files(spec: str, dest: Path) -> None:
    """The source's tokenizer, chat template and other non-weight files (a licence, a README, the record of the
    GGUF file a converted folder came from) into dest: copied byte for byte from a folder; saved from the loaded
    tokenizer for a preset or a hub id; for a .gguf file, its tokenizer as transformers rebuilds it and the record
    `specdistill convert` writes (so that `export` copies the file's own vocabulary into the draft's GGUF)."""
    from .gguf_io import is_gguf_spec, load_gguf_tokenizer, write_source_record
    from .models import _builtin_path, load_tokenizer

    folder = Path(_builtin_path(spec)).expanduser()
    if folder.is_dir():
        for f in sorted(folder.iterdir()):
            if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name not in WRITTEN:
                shutil.copy2(f, dest / f.name)
    elif is_gguf_spec(spec):
        load_gguf_tokenizer(spec).save_pretrained(dest)
        write_source_record(spec, dest, "--from")
    else:
        load_tokenizer(spec).save_pretrained(dest)


def source_layer_count(spec: str) -> int:
    """The decoder layer count of a model spec, from its config alone (no weights are read)."""
    from transformers import AutoConfig

    from .gguf_io import gguf_config, is_gguf_spec
    from .models import PRESETS, _from_pretrained

    if spec in PRESETS:
        return PRESETS[spec]["num_hidden_layers"]
    if is_gguf_spec(spec) and Path(spec).expanduser().is_file():
        return gguf_config(spec).num_hidden_layers
    return _from_pretrained(AutoConfig.from_pretrained, spec, "config").get_text_config().num_hidden_layers


def init_draft(source: str, layers: str, out: str, dtype: str = "float32") -> dict:
    """`specdistill init-draft`: cut a draft of `layers` (parse_layers) from the model `source` and write it to the
    new folder `out` (atomically: built in a hidden folder beside it, then renamed). Returns a summary: source,
    out, the kept layers, their attention types, the parameter counts."""
    from .models import check_model_spec, load_model

    path = check_new_folder(out, f"--out {out}", "init-draft")
    check_model_spec(source, "--from")
    keep = parse_layers(layers, source_layer_count(source))  # checked before the weights load
    model = load_model(source, dtype).eval()
    draft = cut_layers(model, keep)
    with new_folder(path) as tmp:
        draft.save_pretrained(tmp)
        copy_tokenizer_files(source, tmp)
    return {"from": source, "out": str(path), "layers": keep, "num_hidden_layers": len(keep),
            "source_layers": model.config.num_hidden_layers,
            "layer_types": getattr(draft.config, "layer_types", None),
            "parameters": sum(p.numel() for p in draft.parameters()),
            "source_parameters": sum(p.numel() for p in model.parameters())}
