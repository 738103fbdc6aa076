"""Task quality: generate answers for records and score them with the task's scorer."""

from __future__ import annotations

import torch

from ..data.records import Record
from ..data.views import encode_example, left_pad
from ..engine import GREEDY, Sampling, sample


@torch.no_grad()
def generate_ids(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 64, batch_size: int = 32,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> list[list[int]]:
    """Decode each prompt (token ids) with the engine until EOS or max_new_tokens; temperature 0 = greedy.
    Row i draws its noise from seed + i, so results do not depend on batch_size."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sampling = Sampling(temperature, top_p) if temperature > 0 else GREEDY
    outputs = []
    for i in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[i : i + batch_size], tokenizer.pad_token_id)
        gen = sample(model, ids.to(device), mask.to(device), sampling=sampling, max_new_tokens=max_new_tokens,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     seed=torch.arange(i, i + ids.shape[0]) + seed)
        outputs += gen.rows()
    model.train(was_training)
    return outputs


def generate_texts(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 64, batch_size: int = 32,
                   temperature: float = 0.0, seed: int = 0) -> list[str]:
    """Like generate_ids, decoded without special tokens."""
    ids = generate_ids(model, tokenizer, prompts, max_new_tokens, batch_size, temperature, seed=seed)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def evaluate_records(model, tokenizer, records: list[Record], views, scorer, view: str = "student",
                     max_new_tokens: int = 64, batch_size: int = 32) -> dict:
    """Greedy answers for `records` from the given view, scored: {"exact_match", "n", "samples"}."""
    examples = [encode_example(r, tokenizer, views) for r in records]
    prompts = [e.teacher_prompt if view == "teacher" else e.student_prompt for e in examples]
    texts = generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size)
    scores = [scorer(t, {**r.extra, "response": r.response}) for t, r in zip(texts, records)]
    samples = [{"id": r.id, "query": r.query, "prediction": t, "reference": r.response, "score": s}
               for r, t, s in zip(records, texts, scores)]
    return {"exact_match": sum(scores) / max(len(scores), 1), "n": len(scores), "samples": samples}
