"""The student as Hugging Face folders: final/ (the draft a run delivers) and a checkpoint's model/ and adapter/,
and the weights a resume loads back from them.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

from .. import checkpoint
from ..data.templates import end_token_ids
from ..gguf_io import carry_source_record
from ..models import embedding_rows
from .state import TrainState


def save_model(run: TrainState, path: Path, draft: bool = True) -> None:
    """The student (merged LoRA when used) and the tokenizer as a Hugging Face folder; its generation_config ends
    rows at every end id (EOS, end of turn, the models' own). draft=True (final/): the folder serves as the
    teacher's draft unchanged, its embedding matrices at the teacher's row count (zero rows past the tokenizer),
    which transformers' assisted generation requires. draft=False (a checkpoint's model/): the student's own row
    count, which a resume loads back into the student. Every rank calls this (gathering sharded weights is a
    collective); the main process writes."""
    acc = run.accelerator
    model = acc.unwrap_model(run.student)
    if run.cfg.model.lora.enabled:  # a plain folder that from_pretrained / assistant_model= / vLLM load as-is
        state = None
        model = _merged_copy(model) if acc.is_main_process else None
    else:
        state = acc.get_state_dict(run.student)
    if acc.is_main_process:
        rows = embedding_rows(run.teacher) if draft and run.teacher is not None else None
        with _saved_with_rows(model, state, rows) as (to_save, state):
            to_save.save_pretrained(path, state_dict=state, safe_serialization=True)
        run.tokenizer.save_pretrained(path)
        carry_source_record(run.cfg.model.student, path)  # so that `export` copies a GGUF source's vocabulary
        generation = copy.deepcopy(model.generation_config)
        generation.eos_token_id = end_token_ids(run.tokenizer, model, *([run.teacher] if run.teacher else []))
        generation.pad_token_id = run.tokenizer.pad_token_id
        generation.save_pretrained(path)


@contextmanager
def _saved_with_rows(model, state: dict | None, rows: int | None):
    """(model, state dict) to save with `rows` embedding rows: the input and output embeddings zero-padded (or
    cut back to their padding) and config.vocab_size set while saving. rows None or equal: as they are."""
    own = embedding_rows(model)
    if rows is None or rows == own:  # rows >= the tokenizer's size (check_vocab): only padding is added or cut
        yield model, state
        return
    state = dict(model.state_dict() if state is None else state)
    weights = {id(model.get_input_embeddings().weight)}
    if model.get_output_embeddings() is not None:
        weights.add(id(model.get_output_embeddings().weight))
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in weights and name in state:
            old = state[name]  # [own, d]
            new = old.new_zeros(rows, old.shape[1])
            new[: min(rows, own)] = old[: min(rows, own)]
            state[name] = new
    config = model.config
    saved = config.vocab_size
    config.vocab_size = rows
    try:
        yield model, state
    finally:
        config.vocab_size = saved


def _merged_copy(peft_model):
    """The LoRA weights merged into a copy of the base model (the training model is left as it is)."""
    return copy.deepcopy(peft_model).merge_and_unload()


def write_student(run: TrainState, folder: Path) -> None:
    """A checkpoint's student: `model/` (Hugging Face folder at the student's own embedding row count, what a
    resume loads) and, with LoRA, `adapter/` (what a LoRA resume loads)."""
    save_model(run, folder / "model", draft=False)
    if run.cfg.model.lora.enabled and run.accelerator.is_main_process:
        run.accelerator.unwrap_model(run.student).save_pretrained(folder / "adapter", safe_serialization=True)


def save_final(run: TrainState) -> Path:
    """The trained student in <output_dir>/final, written to a temporary folder and renamed into place."""
    acc, final = run.accelerator, run.out / "final"
    tmp = run.out / f"{checkpoint.TMP_PREFIX}final"
    save_model(run, tmp)
    if acc.is_main_process:
        checkpoint.replace_dir(tmp, final)
    acc.wait_for_everyone()
    return final


def load_student_weights(student, path: Path, lora: bool) -> None:
    """Checkpoint weights into the (not yet prepared) student: the full model, or with LoRA the adapter on top
    of the base model, which setup has loaded from model.student as in the original run."""
    if not lora:
        checkpoint.load_model_weights(student, path / "model")
        return
    from peft import set_peft_model_state_dict

    adapter = path / "adapter"
    if not adapter.exists():
        raise checkpoint.CheckpointError(f"cannot resume a LoRA run from {path}: it has no adapter/ folder (it was "
                                         f"saved without LoRA; start from its model/ folder with model.student "
                                         f"instead)")
    result = set_peft_model_state_dict(student, checkpoint.read_safetensors(adapter))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise checkpoint.CheckpointError(f"the adapter in {adapter} does not match model.lora: missing "
                                         f"{missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}")

