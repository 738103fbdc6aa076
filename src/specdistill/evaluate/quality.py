"""Task quality: generate answers for records and score them with the task's scorer."""

from __future__ import annotations

import torch

from ..data.records import Record
from ..data.views import encode_example, left_pad


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 64, batch_size: int = 32,
                   temperature: float = 0.0, seed: int = 0) -> list[str]:
    """Decode a continuation of each prompt (token ids) until EOS; temperature 0 = greedy."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    texts = []
    torch.manual_seed(seed)
    for i in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[i : i + batch_size], tokenizer.pad_token_id)
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.long().to(device), max_new_tokens=max_new_tokens,
            do_sample=temperature > 0, temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        texts += tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    model.train(was_training)
    return texts


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
