"""Task quality: generate answers for records and score them (exact match, chrF, BLEU, ROUGE-L, perplexity)."""

from __future__ import annotations

import torch

from ..data.records import Record
from ..config import ViewConfig
from ..data.templates import end_token_ids
from ..data.prompt_views import check_positions, encode_example, encode_response, left_pad
from ..engine import Decoding, Sampling, sample
from ..engine.sampling import row_seeds
from ..models import max_positions
from ..progress import bar
from ..scoring import eval_mode
from .metrics import GENERATED, TEXT_SCORES, exact_match, perplexity, response_nll, select_metrics, top1_agreement


@torch.no_grad()
def generate_ids(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 64, batch_size: int = 32,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> list[list[int]]:
    """Decode each prompt (token ids) with the engine until EOS or max_new_tokens; temperature 0 = greedy.
    Prompt i draws its noise from (seed, i) (engine.sampling.row_seeds), so results do not depend on batch_size."""
    device = next(model.parameters()).device
    decoding = Decoding(draft_sampling=Sampling(temperature, top_p), max_new_tokens=max_new_tokens,  # 0 = greedy
                        eos_token_id=end_token_ids(tokenizer, model), pad_token_id=tokenizer.pad_token_id,
                        vocab_size=len(tokenizer))
    outputs = []
    with eval_mode(model), bar(len(prompts), "generating") as progress:
        for i in range(0, len(prompts), batch_size):
            ids, mask = left_pad(prompts[i : i + batch_size], tokenizer.pad_token_id)
            gen = sample(model, ids.to(device), mask.to(device), decoding,
                         seed=row_seeds(seed, ids.shape[0], first_row=i))
            outputs += gen.rows()
            progress.update(ids.shape[0])
    return outputs


def generate_texts(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 64, batch_size: int = 32,
                   temperature: float = 0.0, seed: int = 0) -> list[str]:
    """Like generate_ids, decoded without special tokens."""
    ids = generate_ids(model, tokenizer, prompts, max_new_tokens, batch_size, temperature, seed=seed)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def reference_ids(tokenizer, record: Record, views: ViewConfig | None = None) -> list[int]:
    """A reference response as the model should write it, untruncated: training's `encode_response` (the same
    end id, the same encoding after the prompt) without the cut to max_response_tokens."""
    return encode_response(record, tokenizer, views or ViewConfig(), cut=False)


def agreement_on_records(student, teacher, tokenizer, records: list[Record], views, batch_size: int = 32) -> float:
    """Top-1 agreement of a student/teacher pair on the records' reference responses (metrics.top1_agreement):
    the student reads its view, the teacher its own (with knowledge)."""
    examples = [encode_example(r, tokenizer, views) for r in records]
    agree, total = top1_agreement(student, teacher, [e.student_prompt for e in examples],
                                  [e.teacher_prompt for e in examples], [e.response for e in examples],
                                  tokenizer.pad_token_id, len(tokenizer), batch_size)
    return agree / total if total else float("nan")


def reference_text(tokenizer, record: Record) -> str | None:
    """The reference response as text, as generated answers are decoded: a pre-tokenized record's ids decoded
    (its `response` holds only the ids' numbers), else its response."""
    if record.response_ids is not None:
        return tokenizer.decode(record.response_ids, skip_special_tokens=True)
    return record.response


def evaluate_records(model, tokenizer, records: list[Record], views, scorer=None, view: str = "student",
                     max_new_tokens: int = 64, batch_size: int = 32, metrics=("exact_match",),
                     answers: bool = False) -> dict:
    """Score `records` with `metrics` (names of `metrics.METRICS`): {<metric>: value, "n", "samples"}.

    exact_match, chrf, bleu and rouge_l score greedy answers generated from the given view (scorer: the task's
    (prediction, record) -> 0/1 for exact_match; None = GSM8K `####`); perplexity scores the reference
    responses, untruncated and ending as training ends them (`reference_ids`), after the same view's prompt
    (views: the data.views settings the prompts are rendered with, as in training). A metric the records cannot
    support (see `metrics.missing_requirement`) is a ValueError. Each sample holds its per-record values.
    answers: generate the greedy answers (each sample's `prediction`) even when no metric needs them."""
    rows = [{**r.extra, "response": r.response} for r in records]
    select_metrics(list(metrics), rows, scorer is not None)  # raises before any model work
    examples = [encode_example(r, tokenizer, views) for r in records]
    prompts = [e.teacher_prompt if view == "teacher" else e.student_prompt for e in examples]
    budget = max([max_new_tokens if answers or any(m in GENERATED for m in metrics) else 0]
                 + [len(reference_ids(tokenizer, r, views)) for r in records if "perplexity" in metrics])
    positions = max_positions(model)  # the model reads the chosen view only
    check_positions(examples, budget, *((None, positions) if view == "teacher" else (positions, None)),
                    budget_name="max_new_tokens, or the longest reference response for perplexity")
    samples = [{"id": r.id, "query": r.query} for r in records]
    references = [reference_text(tokenizer, r) for r in records]
    result = {}
    if answers or any(m in GENERATED for m in metrics):
        texts = generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size)
        for s, t, ref in zip(samples, texts, references):
            s.update(prediction=t, reference=ref)
        if "exact_match" in metrics:
            result["exact_match"], scores = exact_match(texts, rows, scorer)
            for s, v in zip(samples, scores):
                s["score"] = v
        result.update({m: TEXT_SCORES[m](texts, references) for m in metrics if m in TEXT_SCORES})
    if "perplexity" in metrics:
        responses = [reference_ids(tokenizer, r, views) for r in records]
        sums, counts = response_nll(model, prompts, responses, tokenizer.pad_token_id, len(tokenizer), batch_size)
        result["perplexity"] = perplexity(sums, counts)
        for s, ref, nll, n in zip(samples, references, sums.tolist(), counts.tolist()):
            s.update(reference=ref, nll=nll, response_tokens=n)
    return {**{m: result[m] for m in metrics}, "n": len(records), "samples": samples}
