"""Rollout strategies: which response tokens the student is trained on.

| strategy  | response comes from                                         | known as               |
|-----------|-------------------------------------------------------------|------------------------|
| dataset   | the dataset's reference answer                              | supervised KD, SFT     |
| teacher   | teacher samples                                             | SeqKD                  |
| student   | student samples                                             | on-policy KD, GKD l=1  |
| mixed     | per sequence, the student with probability lam, else dataset | GKD lam, ImitKD        |
| skd       | the engine with the top_k / adaptive_top_k policy           | SKD, LUPI-SKD          |

Every strategy returns the same `RolloutBatch`: each view's own prompt followed by the same response.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .data.views import PromptBatch, right_pad


@dataclass
class RolloutBatch:
    """Both views of B sequences: prompt (left-padded) then the shared response (right-padded).

    student_ids [B, Ls + T], student_mask [B, Ls + T] (bool); teacher_ids [B, Lt + T], teacher_mask alike.
    response [B, T]; response_mask [B, T] marks the trained tokens; teacher_written [B, T] marks tokens the
    teacher wrote. The logits that predict response token j sit at column prompt_len + j - 1 of each view.
    """

    student_ids: torch.Tensor
    student_mask: torch.Tensor
    teacher_ids: torch.Tensor
    teacher_mask: torch.Tensor
    response: torch.Tensor
    response_mask: torch.Tensor
    teacher_written: torch.Tensor
    student_prompt_len: int
    teacher_prompt_len: int
    stats: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())


def assemble(prompts: PromptBatch, response: torch.Tensor, response_mask: torch.Tensor,
             teacher_written: torch.Tensor | None = None, stats: dict | None = None) -> RolloutBatch:
    """Append one response [B, T] to both views' left-padded prompts."""
    resp = response.masked_fill(~response_mask, 0)  # pad id is irrelevant: masked everywhere

    def join(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([ids, resp.to(ids.device)], 1), torch.cat([mask, response_mask.to(mask.device)], 1)

    s_ids, s_mask = join(prompts.student_ids, prompts.student_mask)
    t_ids, t_mask = join(prompts.teacher_ids, prompts.teacher_mask)
    written = teacher_written if teacher_written is not None else torch.zeros_like(response_mask)
    return RolloutBatch(s_ids, s_mask, t_ids, t_mask, resp, response_mask, written & response_mask,
                        prompts.student_ids.shape[1], prompts.teacher_ids.shape[1], stats or {})


def dataset_rollout(prompts: PromptBatch, pad_id: int) -> RolloutBatch:
    """The dataset's reference responses (supervised KD; SFT when the loss is CE)."""
    responses = [e.response for e in prompts.examples]
    missing = [e.record.id for e, r in zip(prompts.examples, responses) if r is None]
    if missing:
        raise ValueError(f"rollout 'dataset' needs reference responses; records without one: {missing[:5]}")
    response, mask = right_pad(responses, pad_id)
    return assemble(prompts, response, mask, stats={"tokens/generated": 0})


def rates_from_counts(counts: dict) -> dict:
    """Rates from summed counters (so that they are exact over micro-batches and processes)."""
    out = {}
    drafted = counts.get("tokens/drafted", 0.0)
    if drafted:
        out["rollout/acceptance_rate"] = counts.get("tokens/accepted", 0.0) / drafted
    blocks = counts.get("count/blocks", 0.0)
    if blocks:
        out["rollout/first_token_acceptance"] = counts.get("count/first_accepted", 0.0) / blocks
        out["rollout/full_match_rate"] = counts.get("count/full_match", 0.0) / blocks
    return out


def make_rollout(cfg, prompts: PromptBatch, student, teacher, tokenizer, seeds: list[int]) -> RolloutBatch:
    """Run the configured strategy (`cfg` is a RolloutConfig) on one micro-batch of prompts."""
    if cfg.strategy == "dataset":
        return dataset_rollout(prompts, tokenizer.pad_token_id)
    raise ValueError(f"rollout strategy {cfg.strategy!r} needs the engine, which is not wired in yet")
