"""Quality metrics of `specdistill eval`: exact match, chrF, BLEU, ROUGE-L and perplexity.

The text metrics are corpus-level and compare N predictions with N references (one reference each):
- chrF and BLEU through sacrebleu with its defaults, on sacrebleu's 0-100 scale;
- ROUGE-L through rouge-score: the mean over records of the rougeL F-measure, on a 0-1 scale;
- exact match: the mean of a 0/1 scorer, on a 0-1 scale; by default GSM8K's final `#### N` answer.
Perplexity scores the reference responses under the model (teacher forcing), not the generated text.
"""

from __future__ import annotations

import math
import re
from typing import Callable

import torch
import torch.nn.functional as F

from ..data.tasks import extract_final_number
from ..data.prompt_views import left_pad, right_pad
from ..scoring import eval_mode, paired_response_logits, response_logits

METRICS = ("exact_match", "chrf", "bleu", "rouge_l", "perplexity")
TEXT_METRICS = ("chrf", "bleu", "rouge_l")  # compare generated text with the reference response
GENERATED = ("exact_match",) + TEXT_METRICS  # the metrics that need the model's answers
_NUMBER = re.compile(r"-?\d*\.?\d+")


# ---------------------------------------------------------------- names
def parse_metrics(spec: str) -> list[str]:
    """'chrf,bleu' -> ['chrf', 'bleu'] (order kept, duplicates dropped); an unknown name is a ValueError."""
    names = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown)) or repr(spec)}; "
                         f"allowed: {', '.join(METRICS)} (comma-separated)")
    return names


def missing_requirement(name: str, records: list[dict], has_scorer: bool) -> str | None:
    """Why metric `name` cannot score `records` (raw rows, with their `response`), or None when it can.

    exact_match needs a task scorer or a GSM8K answer in every record; the others need a reference response."""
    if name == "exact_match":
        bad = [] if has_scorer else [r.get("id", i) for i, r in enumerate(records) if gsm8k_answer(r) is None]
        what = "a numeric `answer` field or a `#### N` final answer in `answer` or `response` (or use --task)"
    else:
        bad = [r.get("id", i) for i, r in enumerate(records) if r.get("response") is None]
        what = "a reference response"
    if not bad:
        return None
    return f"{name} needs {what} in every record; {len(bad)} of {len(records)} lack one (ids: {bad[:5]})"


def select_metrics(requested: list[str] | None, records: list[dict], has_scorer: bool
                   ) -> tuple[list[str], dict[str, str]]:
    """(metrics to compute, {skipped metric: reason}).

    requested None: every metric of METRICS that the records allow, the others skipped with their reason.
    requested names: all of them, or a ValueError naming the first one the records do not allow."""
    skipped = {}
    for name in requested or METRICS:
        reason = missing_requirement(name, records, has_scorer)
        if reason and requested:
            raise ValueError(reason)
        if reason:
            skipped[name] = reason
    return [n for n in requested or METRICS if n not in skipped], skipped


# ---------------------------------------------------------------- exact match
def gsm8k_answer(record: dict) -> str | None:
    """The gold number of a record: `answer` when it is a bare number, else the number after the last `####` in
    `answer` or `response` (GSM8K stores the worked solution there); commas dropped; None when there is none."""
    for key in ("answer", "response"):
        value = record.get(key)
        if value is None:
            continue
        text = str(value).strip().replace(",", "")
        if key == "answer" and _NUMBER.fullmatch(text):
            return text
        found = extract_final_number(str(value))
        if found is not None:
            return found
    return None


def score_gsm8k(prediction: str, record: dict) -> float:
    """1.0 when the number after the prediction's last `####` equals the record's gold number, else 0.0."""
    pred, gold = extract_final_number(prediction), gsm8k_answer(record)
    return float(pred is not None and gold is not None and float(pred) == float(gold))


def exact_match(predictions: list[str], records: list[dict], scorer: Callable[[str, dict], float] | None = None
                ) -> tuple[float, list[float]]:
    """(mean score, per-record scores): EM = (1/N) sum_i scorer(pred_i, record_i), in [0, 1].

    scorer: a task's (prediction, record) -> 0/1; None = GSM8K `####` matching (`score_gsm8k`)."""
    scorer = scorer or score_gsm8k
    scores = [scorer(p, r) for p, r in zip(predictions, records)]
    return sum(scores) / max(len(scores), 1), scores


# ---------------------------------------------------------------- text overlap
def chrf(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF (sacrebleu `CHRF()`: character 6-grams, no word n-grams, beta = 2), 0-100.

    chrF = (1 + b^2) chrP chrR / (b^2 chrP + chrR), with chrP and chrR the character n-gram precision and
    recall averaged over n = 1..6, from n-gram counts summed over the corpus."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().corpus_score(predictions, [references]).score)


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu `BLEU()`: 13a tokenisation, mixed case, exp smoothing), 0-100.

    BLEU = 100 * BP * exp((1/4) sum_{n=1..4} log p_n), p_n the clipped n-gram precision over the corpus,
    BP = min(1, exp(1 - r / c)) with r and c the reference and prediction lengths in tokens."""
    from sacrebleu.metrics import BLEU

    return float(BLEU().corpus_score(predictions, [references]).score)


def sacrebleu_signatures() -> dict[str, str]:
    """sacrebleu's version strings of `chrf` and `bleu` (tokeniser, smoothing, version), for reports."""
    from sacrebleu.metrics import BLEU, CHRF

    sigs = {}
    for name, metric in (("chrf", CHRF()), ("bleu", BLEU())):
        metric.corpus_score(["x"], [["x"]])  # sacrebleu fills in the reference count on first use
        sigs[name] = str(metric.get_signature())
    return sigs


def rouge_l(predictions: list[str], references: list[str], use_stemmer: bool = False) -> float:
    """Mean rouge-score rougeL F-measure, 0-1 (no stemming by default, rouge-score's own default).

    Per record: P = LCS / len(pred), R = LCS / len(ref), F = 2PR / (P + R), with LCS the longest common
    subsequence of lower-cased alphanumeric tokens; ROUGE-L = (1/N) sum_i F_i."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    scores = [scorer.score(target=r, prediction=p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    return sum(scores) / max(len(scores), 1)


TEXT_SCORES = {"chrf": chrf, "bleu": bleu, "rouge_l": rouge_l}  # (predictions, references) -> float


# ---------------------------------------------------------------- perplexity
@torch.no_grad()
def response_nll(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int, vocab: int,
                 batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL (nats) of each response given its prompt, and its token count: two [N] tensors (float64, long).

    nll_i = -sum_j log softmax(z_ij[:vocab])[y_ij] over the response tokens y_i (EOS included, if present),
    z_ij the logits after prompt_i + y_i,<j. Prompts are left-padded and responses right-padded, so each batch
    is one forward pass; logits are sliced to the tokenizer's `vocab` (padded embedding rows excluded)."""
    if not prompts:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    device = next(model.parameters()).device
    sums, counts = [], []
    with eval_mode(model):
        for i in range(0, len(prompts), batch_size):
            p_ids, p_mask = left_pad(prompts[i : i + batch_size], pad_id)  # [B, P]
            r_ids, r_mask = right_pad(responses[i : i + batch_size], pad_id)  # [B, T]
            ids, mask = torch.cat([p_ids, r_ids], 1).to(device), torch.cat([p_mask, r_mask], 1).to(device)
            logits = response_logits(model, ids, mask, r_ids.shape[1], vocab)  # [B, T, V]
            for row, labels, keep in zip(logits, r_ids.to(device), r_mask.to(device)):  # one fp32 [T, V] at a time
                nll = F.cross_entropy(row.float(), labels, reduction="none")  # [T]
                sums.append(nll[keep].sum().cpu().double())  # mps has no float64
            counts.append(r_mask.sum(1))
    return torch.stack(sums), torch.cat(counts).long()


def perplexity(nll_sums: torch.Tensor, counts: torch.Tensor) -> float:
    """Corpus perplexity exp(sum_i nll_i / sum_i T_i): exp of the mean NLL per response token (>= 1).

    nll_sums [N] and counts [N] come from `response_nll`; inf when exp overflows, nan with no tokens."""
    tokens = int(counts.sum())
    if tokens == 0:
        return math.nan
    mean = float(nll_sums.sum()) / tokens
    return math.exp(mean) if mean < 700 else math.inf


# ---------------------------------------------------------------- agreement of a pair
@torch.no_grad()
def top1_agreement(student, teacher, student_prompts: list[list[int]], teacher_prompts: list[list[int]],
                   responses: list[list[int]], pad_id: int, vocab: int, batch_size: int = 32) -> tuple[int, int]:
    """(positions where the two models' argmax tokens agree, response positions), each model reading its own view
    followed by the same reference response (teacher forcing). Argmaxes are over the tokenizer's ids [:vocab].
    The share agree / positions is the cheapest predictor of greedy acceptance."""
    agree = total = 0
    pairs = ((student, student_prompts), (teacher, teacher_prompts))
    for (s_logits, t_logits), r_mask in paired_response_logits(pairs, responses, pad_id, vocab, batch_size):
        agree += int(((s_logits.argmax(-1).cpu() == t_logits.argmax(-1).cpu()) & r_mask).sum())
        total += int(r_mask.sum())
    return agree, total
