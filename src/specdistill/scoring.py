"""Teacher-forced scoring of responses: the logits that predict each response token, top-1 agreement, eval mode.

Both the trainer (losses, validation, top-1 agreement) and evaluation (perplexity, top-1 agreement) score
responses this way, so it lives below both of them: train/ imports evaluate/, and neither imports the other back.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .engine.prefix import split_views
from .losses import teacher_argmax
from .data.prompt_views import left_pad, right_pad
from .models import position_ids_from_mask


def response_logits(model, ids: torch.Tensor, mask: torch.Tensor, length: int, vocab: int, prefix=None) -> torch.Tensor:
    """Logits predicting the last `length` tokens of each row: [B, P + T] ids and mask -> [B, T, V].

    ids is a left-padded prompt of width P followed by a right-padded response of width T = length. The logits
    that predict response token j sit at column P + j - 1, so the first response token (predicted from the last
    prompt position) is included. Only the last T + 1 positions are projected to the vocabulary (`logits_to_keep`);
    the logits are cut from the end, so a forward that ignores the argument and returns every position (remote
    code may) gives the same result. Columns at or beyond `vocab` (padded embedding rows) are dropped.

    prefix: an engine.prefix.SharedPrefix of this model that every row's real tokens start with (its keys and
    values, encoded once): the model then runs on each row's rest only, after a copy of the prefix's cache. model
    may then also be the model's compiled caller (engine.compiling.compiled_model).
    """
    if prefix is not None:
        return _after_prefix(model, ids, mask, length, vocab, prefix)
    out = model(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask),
                logits_to_keep=length + 1, use_cache=False)
    return _predicting_response(out.logits, length, vocab)


def _after_prefix(model, ids, mask, length, vocab, prefix):
    """response_logits with the shared prefix's cache in front: the rest of each row's prompt, left-padded (its
    padding masked as holes), then the response [B, W + T] after it, positions counted on from the prefix's end."""
    rest_ids, rest_mask = split_views(ids[:, :-length], mask[:, :-length], prefix.length)  # prompts' rests [B, W]
    rest_ids, rest_mask = torch.cat([rest_ids, ids[:, -length:]], 1), torch.cat([rest_mask, mask[:, -length:].bool()], 1)
    P, B = prefix.length, ids.shape[0]
    full_mask = torch.cat([rest_mask.new_ones(B, P), rest_mask], 1).long()  # [B, P + W]
    positions = P + (rest_mask.long().cumsum(1) - 1).clamp_min(0)
    kwargs = {prefix.cache_arg: prefix.cache(B)}
    out = model(input_ids=rest_ids, attention_mask=full_mask, position_ids=positions, logits_to_keep=length + 1,
                use_cache=True, **kwargs)
    return _predicting_response(out.logits, length, vocab)


def _predicting_response(logits: torch.Tensor, length: int, vocab: int) -> torch.Tensor:
    """[B, >= T + 1, V'] logits of a forward's last positions -> [B, T, vocab]: the T that predict the response
    (the last position, which predicts past the response, is dropped). Counted from the end: whether the forward
    kept T + 1 positions or all of them."""
    return logits[:, -length - 1 : -1, :vocab]


@torch.no_grad()
def top1_agreements(student_logits: torch.Tensor, teacher_logits, mask: torch.Tensor) -> torch.Tensor:
    """The masked positions where the two models' argmax tokens are the same: logits [B, T, V] over the same
    vocabulary and on one device (the teacher's may be a losses.TopKLogits, whose first id is its argmax), mask [B, T] bool -> a long scalar. Divided by mask.sum() it is top-1 agreement,
    the cheapest predictor of greedy acceptance. The trainer counts it on the logits its loss already has
    (train/top1_agreement); `specdistill eval --teacher` reports it on reference responses (evaluate.metrics)."""
    return ((student_logits.argmax(-1) == teacher_argmax(teacher_logits)) & mask).sum()


def paired_response_logits(pairs, responses: list[list[int]], pad_id: int, vocab: int, batch_size: int):
    """Teacher-forced logits of several models on the same responses, batch by batch: yields ([logits [B, T, V]
    per (model, prompts) of `pairs`], response mask [B, T]). Each model reads its own prompts (left-padded, on its
    own device, in eval mode) followed by the same right-padded responses."""
    for i in range(0, len(responses), batch_size):
        r_ids, r_mask = right_pad(responses[i : i + batch_size], pad_id)  # [B, T]
        logits = []
        for model, prompts in pairs:
            device = next(model.parameters()).device
            p_ids, p_mask = left_pad(prompts[i : i + batch_size], pad_id)  # [B, P]
            ids, mask = torch.cat([p_ids, r_ids], 1).to(device), torch.cat([p_mask, r_mask], 1).to(device)
            with eval_mode(model):
                logits.append(response_logits(model, ids, mask, r_ids.shape[1], vocab))
        yield logits, r_mask


@contextmanager
def eval_mode(model):
    """Run a block with `model` in eval mode (no dropout; gradient checkpointing, active only in training mode,
    would otherwise turn the KV cache off), then restore its mode, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
