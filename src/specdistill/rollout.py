"""Rollout strategies: which response tokens the student is trained on.

| strategy  | response comes from                                         | known as                   |
|-----------|-------------------------------------------------------------|----------------------------|
| dataset   | the dataset's reference answer                              | supervised KD, SFT         |
| teacher   | teacher samples                                             | SeqKD                      |
| student   | student samples                                             | on-policy KD, GKD l=1      |
| mixed     | per sequence, mix[0] with probability lam, else mix[1]      | GKD lam, ImitKD, mixed_skd |
| skd       | the engine with the top_k / adaptive_top_k policy           | SKD, LUPI-SKD              |

Every strategy returns the same `RolloutBatch`: each view's own prompt followed by the same response.
`rollout.schedule` changes the strategy and its settings during training (config.rollout_at; mixed_train): a
training step rolls out with one `RolloutPlan`, its stage's settings and the run's `RolloutTokens`.

Teacher once: an SKD rollout may keep the teacher's logits at the response positions (keep_teacher_logits), a
mixed rollout merges them over its rows (merge_rows), and `fill_teacher_logits` completes them for the loss with
one teacher forward over the rows that kept none.
"""

from __future__ import annotations

import random
from dataclasses import MISSING, dataclass, field, fields, replace

import torch

from .data.prompt_views import PromptBatch, right_pad
from .engine import Decoding, Generation, GenerationStats, Sampling, generate, make_policy, make_schedule, sample
from .engine.prefix import shared_prefix
from .data.templates import end_token_ids


@dataclass(frozen=True)
class RolloutTokens:
    """The token ids a run's rollouts need, found once from the tokenizer and the models (not per micro-batch).

    student_end / teacher_end / pair_end: the ids that end a row of the student's samples, of the teacher's, and
    of an SKD rollout (data.templates.end_token_ids of the tokenizer, its chat template and those models'
    generation configs); pad_id: the tokenizer's pad id; vocab_size: its size (only its ids are ever generated)."""

    student_end: tuple[int, ...]
    teacher_end: tuple[int, ...]
    pair_end: tuple[int, ...]
    pad_id: int
    vocab_size: int


def rollout_tokens(tokenizer, student, teacher=None) -> RolloutTokens:
    """The RolloutTokens of a student and (when there is one) a teacher that share `tokenizer`."""
    teacher_end = tuple(end_token_ids(tokenizer, teacher)) if teacher is not None else ()
    pair_end = tuple(end_token_ids(tokenizer, student, teacher)) if teacher is not None else ()
    return RolloutTokens(tuple(end_token_ids(tokenizer, student)), teacher_end, pair_end, tokenizer.pad_token_id,
                         len(tokenizer))


@dataclass(frozen=True)
class RolloutPlan:
    """What a rollout runs with, decided once per training step.

    settings: the RolloutConfig in force (the stage `stage` of rollout.schedule, 0 without one); tokens: the
    run's RolloutTokens (None where nothing is generated); keep_teacher_logits: what an SKD rollout keeps of the
    teacher's logits for the loss (engine.generate's keep_target_logits: False, True or a function of logits
    [B, n, V])."""

    settings: object
    tokens: RolloutTokens | None = None
    keep_teacher_logits: object = False
    stage: int = 0

    @property
    def generates(self) -> bool:
        """Whether a model samples any response (any strategy but `dataset`)."""
        return rollout_sources(self.settings) != {"dataset"}

    def with_strategy(self, name: str) -> RolloutPlan:
        return replace(self, settings=replace(self.settings, strategy=name))


@dataclass
class RolloutBatch:
    """Both views of B sequences: prompt (left-padded) then the shared response (right-padded).

    student_ids [B, Ls + T], student_mask [B, Ls + T] (bool); teacher_ids [B, Lt + T], teacher_mask alike.
    response [B, T]; response_mask [B, T] marks the trained tokens; teacher_written [B, T] marks tokens the
    teacher wrote. The logits that predict response token j sit at column prompt_len + j - 1 of each view.
    teacher_logits: the teacher's logits predicting each response token, kept by an SKD rollout
    (rollout.reuse_teacher_logits): [B, T, V] as the teacher made them, or a losses.TopKLogits for a sparse
    loss, on the teacher's device; teacher_logits_rows [B] bool marks the rows that have them (other rows of a
    mixed rollout are zero there, and the loss runs the teacher on those rows only). None: no row has them.
    """

    student_ids: torch.Tensor
    student_mask: torch.Tensor
    teacher_ids: torch.Tensor
    teacher_mask: torch.Tensor
    response: torch.Tensor
    response_mask: torch.Tensor
    teacher_written: torch.Tensor
    stats: GenerationStats = field(default_factory=GenerationStats)
    teacher_logits: object = None
    teacher_logits_rows: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())

    @property
    def student_prompt_len(self) -> int:
        """Ls, the width of the student view's left-padded prompt."""
        return self.student_ids.shape[1] - self.response.shape[1]

    @property
    def teacher_prompt_len(self) -> int:
        """Lt, the width of the teacher view's left-padded prompt."""
        return self.teacher_ids.shape[1] - self.response.shape[1]


def assemble(prompts: PromptBatch, response: torch.Tensor, response_mask: torch.Tensor,
             teacher_written: torch.Tensor | None = None, stats: GenerationStats | None = None) -> RolloutBatch:
    """Append one response [B, T] to both views' left-padded prompts."""
    resp = response.masked_fill(~response_mask, 0)  # pad id is irrelevant: masked everywhere

    def join(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([ids, resp.to(ids.device)], 1), torch.cat([mask, response_mask.to(mask.device)], 1)

    s_ids, s_mask = join(prompts.student_ids, prompts.student_mask)
    t_ids, t_mask = join(prompts.teacher_ids, prompts.teacher_mask)
    written = teacher_written if teacher_written is not None else torch.zeros_like(response_mask)
    return RolloutBatch(s_ids, s_mask, t_ids, t_mask, resp, response_mask, written & response_mask,
                        stats or GenerationStats())


def dataset_rollout(prompts: PromptBatch, pad_id: int) -> RolloutBatch:
    """The dataset's reference responses (supervised KD; SFT when the loss is CE)."""
    response, mask = right_pad(_references(prompts), pad_id)
    return assemble(prompts, response, mask)


def _references(prompts: PromptBatch) -> list[list[int]]:
    responses = [e.response for e in prompts.examples]
    missing = [e.record.id for e, r in zip(prompts.examples, responses) if r is None]
    if missing:
        raise ValueError(f"rollout 'dataset' needs reference responses; records without one: {missing[:5]}")
    return responses


def _as_response(gen: Generation) -> tuple[torch.Tensor, torch.Tensor]:
    """Engine output -> response [B, T] and its mask [B, T] (EOS included, padding excluded)."""
    T = gen.tokens.shape[1]
    mask = torch.arange(T, device=gen.lengths.device)[None, :] < gen.lengths[:, None]
    return gen.tokens.cpu(), mask.cpu()


def _decode_args(cfg, tokens: RolloutTokens, end: tuple[int, ...], seeds: list[int]) -> dict:
    """Engine arguments shared by every strategy: rows end at `end` (one of tokens' end ids), and only the
    tokenizer's ids are ever generated."""
    return dict(max_new_tokens=cfg.max_new_tokens, eos_token_id=list(end), pad_token_id=tokens.pad_id,
                seed=torch.tensor(seeds), compile=cfg.compile, trace=cfg.trace, vocab_size=tokens.vocab_size)


def model_rollout(plan: RolloutPlan, prompts: PromptBatch, model, seeds: list[int], who: str) -> RolloutBatch:
    """One model samples every response from its own view: the teacher (SeqKD) or the student (on-policy)."""
    cfg, teacher = plan.settings, who == "teacher"
    ids, mask = (prompts.teacher_ids, prompts.teacher_mask) if teacher else (prompts.student_ids, prompts.student_mask)
    sampling = Sampling(cfg.teacher_temperature, cfg.teacher_top_p) if teacher else Sampling(cfg.temperature, cfg.top_p)
    dev = next(model.parameters()).device
    end = plan.tokens.teacher_end if teacher else plan.tokens.student_end
    gen = sample(model, ids.to(dev), mask.to(dev), sampling=sampling, **_decode_args(cfg, plan.tokens, end, seeds))
    response, resp_mask = _as_response(gen)
    written = resp_mask.clone() if teacher else torch.zeros_like(resp_mask)
    return assemble(prompts, response, resp_mask, written, gen.stats)


def skd_policy(cfg):
    """The acceptance policy of an SKD rollout (`cfg` is a RolloutConfig): `top_k` or `adaptive_top_k`."""
    target = Sampling(cfg.teacher_temperature, cfg.teacher_top_p)
    if cfg.policy == "top_k":
        return make_policy("top_k", k=cfg.skd_top_k, min_prob=cfg.skd_min_prob, target=target, bonus_token=cfg.bonus)
    return make_policy("adaptive_top_k", k_init=cfg.skd_top_k, k_min=cfg.k_min, k_max=cfg.k_max, r_plus=cfg.r_plus,
                       r_minus=cfg.r_minus, ema=cfg.ema, entropy_gain=cfg.entropy_gain, min_prob=cfg.skd_min_prob,
                       target=target, bonus_token=cfg.bonus)


def skd_rollout(plan: RolloutPlan, prompts: PromptBatch, student, teacher, seeds: list[int]) -> RolloutBatch:
    """SKD: the student drafts from its view, the teacher verifies on its own (maybe privileged) view and
    replaces drafted tokens outside its top-K (policy `top_k` or `adaptive_top_k`).

    plan.keep_teacher_logits: False, True or a function of logits [B, n, V] (engine.generate's
    keep_target_logits); the teacher's logits at the response positions then come back in
    RolloutBatch.teacher_logits.
    With rollout.share_teacher_prefix, the prefix that every teacher view of the batch shares is encoded once
    (engine.prefix.shared_prefix, reused across steps while the teacher's weights do not change)."""
    cfg = plan.settings
    s_dev, t_dev = next(student.parameters()).device, next(teacher.parameters()).device
    t_ids, t_mask = prompts.teacher_ids.to(t_dev), prompts.teacher_mask.to(t_dev)
    prefix = shared_prefix(teacher, t_ids, t_mask) if cfg.share_teacher_prefix else None
    gen = generate(student, prompts.student_ids.to(s_dev), prompts.student_mask.to(s_dev), teacher,
                   t_ids, t_mask, Decoding(target_prefix=prefix, policy=skd_policy(cfg),
                   gamma=make_schedule(cfg.gamma_schedule, cfg.gamma, cfg.max_gamma),
                   draft_sampling=Sampling(cfg.temperature, cfg.top_p), verify=cfg.verification,
                   keep_target_logits=plan.keep_teacher_logits,
                   **_decode_args(cfg, plan.tokens, plan.tokens.pair_end, seeds)))
    response, resp_mask = _as_response(gen)
    rb = assemble(prompts, response, resp_mask, gen.teacher_written.cpu(), gen.stats)
    if gen.target_logits is not None:
        rb.teacher_logits = gen.target_logits
        rb.teacher_logits_rows = torch.ones(len(seeds), dtype=torch.bool)
    return rb


def mix_choice(seeds: list[int], lam: float) -> list[bool]:
    """Per row: True when it takes the first strategy of rollout.mix, with probability lam. Each row's coin is a
    function of its seed alone, which training derives from (seed, step, global row): the choice does not depend
    on how rows are split into micro-batches or processes."""
    return [random.Random(s).random() < lam for s in seeds]


def mixed_rollout(plan: RolloutPlan, prompts: PromptBatch, student, teacher, seeds: list[int]) -> RolloutBatch:
    """Per sequence: a response from strategy cfg.mix[0] with probability cfg.lam, else from cfg.mix[1]. The
    student's sample against the dataset's response is GKD's lambda and ImitKD; SKD against the dataset's is
    mixed_skd. Each strategy runs once, on its own rows, with those rows' seeds."""
    cfg = plan.settings
    if "dataset" in cfg.mix:
        _references(prompts)  # every record needs one, whichever rows the coins give the dataset
    first = mix_choice(seeds, cfg.lam)
    parts = []
    for name, take in zip(cfg.mix, (True, False)):
        rows = [i for i, f in enumerate(first) if f == take]
        if len(rows) == len(seeds):
            return make_rollout(plan.with_strategy(name), prompts, student, teacher, seeds)
        if rows:
            parts.append((rows, make_rollout(plan.with_strategy(name), select_rows(prompts, rows), student, teacher,
                                             [seeds[i] for i in rows])))
    return merge_rows(prompts, parts, plan.tokens.pad_id)


def select_rows(prompts: PromptBatch, rows: list[int]) -> PromptBatch:
    """The prompts of `rows`, without the left padding that only the other rows needed."""

    def cut(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = ids[rows], mask[rows]
        first = int(mask.any(0).long().argmax())  # the first column a kept row uses
        return ids[:, first:], mask[:, first:]

    return PromptBatch(*cut(prompts.student_ids, prompts.student_mask), *cut(prompts.teacher_ids, prompts.teacher_mask),
                       [prompts.examples[i] for i in rows])


def merge_rows(prompts: PromptBatch, parts: list[tuple[list[int], RolloutBatch]], pad_id: int) -> RolloutBatch:
    """One RolloutBatch for every row of `prompts` from rollouts of disjoint row subsets: (rows, their batch)."""
    responses: list[list[int]] = [[] for _ in prompts.examples]
    written: list[list[int]] = [[] for _ in prompts.examples]
    stats = GenerationStats()
    for rows, rb in parts:
        for j, i in enumerate(rows):
            responses[i] = rb.response[j][rb.response_mask[j]].tolist()
            written[i] = rb.teacher_written[j][rb.response_mask[j]].long().tolist()
        stats = stats.combine(rb.stats)
    response, mask = right_pad(responses, pad_id)
    teacher_written = right_pad(written, 0)[0].bool()
    merged = assemble(prompts, response, mask, teacher_written, stats)
    merged.teacher_logits, merged.teacher_logits_rows = _merge_logits(parts, len(prompts.examples), response.shape[1])
    return merged


def _merge_logits(parts: list[tuple[list[int], RolloutBatch]], batch_size: int, width: int):
    """The parts' kept teacher logits in one [batch_size, width, ...] form (zero where a row has none), and the
    [batch_size] bool mask of the rows that have them; (None, None) when no part kept any."""
    kept = [(rows, rb) for rows, rb in parts if rb.teacher_logits is not None]
    if not kept:
        return None, None
    have = torch.zeros(batch_size, dtype=torch.bool)
    first = kept[0][1].teacher_logits
    fields = first if isinstance(first, tuple) else (first,)
    merged = [f.new_zeros(batch_size, width, *f.shape[2:]) for f in fields]
    for rows, rb in kept:
        parts_fields = rb.teacher_logits if isinstance(rb.teacher_logits, tuple) else (rb.teacher_logits,)
        index = torch.tensor(rows, device=fields[0].device)
        for out, f in zip(merged, parts_fields):
            out[index, : f.shape[1]] = f
        have[rows] = rb.teacher_logits_rows
    return (type(first)(*merged) if isinstance(first, tuple) else merged[0]), have


def make_rollout(plan: RolloutPlan, prompts: PromptBatch, student, teacher, seeds: list[int]) -> RolloutBatch:
    """Run the strategy of plan.settings (a RolloutConfig) on one micro-batch of prompts, with one seed per row."""
    strategy = plan.settings.strategy
    if strategy == "dataset":
        return dataset_rollout(prompts, plan.tokens.pad_id)
    if strategy == "mixed":
        return mixed_rollout(plan, prompts, student, teacher, seeds)
    if strategy == "student":
        return model_rollout(plan, prompts, student, seeds, "student")
    if teacher is None:
        raise ValueError(f"rollout strategy {strategy!r} needs a teacher: set model.teacher")
    if strategy == "teacher":
        return model_rollout(plan, prompts, teacher, seeds, "teacher")
    return skd_rollout(plan, prompts, student, teacher, seeds)


def fill_teacher_logits(rb: RolloutBatch, forward, sparse=None):
    """The teacher's logits predicting each response token of rb, on the teacher's device: the ones its rollout
    kept (rb.teacher_logits), with forward(rows) -> [m, T, V] run only for the rows that have none (rows: a list of
    row indices, or slice(None) for all when no row kept any). sparse: what turns [m, T, V] into the kept sparse
    form (a losses.TopKLogits, a tuple) when the kept logits are in that form."""
    kept, have = rb.teacher_logits, rb.teacher_logits_rows
    if kept is None:
        return forward(slice(None))
    missing = (~have).nonzero().flatten()
    if not len(missing):
        return kept
    logits = forward(missing.tolist())  # [m, T, V]
    fields = kept if isinstance(kept, tuple) else (kept,)
    if isinstance(kept, tuple):
        logits = sparse(logits)
    filled = logits if isinstance(logits, tuple) else (logits,)
    index = missing.to(fields[0].device)
    fields = [f.index_copy(0, index, g.to(f.dtype)) for f, g in zip(fields, filled)]
    return type(kept)(*fields) if isinstance(kept, tuple) else fields[0]


def rollout_sources(cfg) -> set[str]:
    """The strategies whose responses a rollout with these settings trains on (the two of `mixed`)."""
    return set(cfg.mix) if cfg.strategy == "mixed" else {cfg.strategy}


# Fields of GenerationStats that add up over micro-batches and processes.
_SUMMED = [f.name for f in fields(GenerationStats) if f.name not in ("gamma_min", "gamma_max") and f.default_factory is MISSING]


def rollout_metrics(batches: list[RolloutBatch], gather=None) -> dict:
    """Metrics of a step's rollouts, exact over micro-batches and (with `gather`, e.g. accelerator.gather)
    over processes: counts are summed first and rates formed from the sums."""
    stats = batches[0].stats
    for b in batches[1:]:
        stats = stats.combine(b.stats)
    if gather is not None:
        width = len(stats.position_reached)
        local = torch.tensor([float(getattr(stats, k)) for k in _SUMMED] + [stats.gamma_min, -stats.gamma_max, width],
                             dtype=torch.float64)
        rows = gather(local[None]).reshape(-1, local.numel())  # [P, F]
        merged = dict(zip(_SUMMED, rows[:, : len(_SUMMED)].sum(0).tolist()))
        merged["gamma_min"], merged["gamma_max"] = rows[:, -3].min().item(), -rows[:, -2].min().item()
        n = int(rows[:, -1].max())
        pos = torch.tensor([_padded(stats.position_reached, n) + _padded(stats.position_accepted, n)], dtype=torch.float64)
        pos = gather(pos).reshape(-1, 2 * n).sum(0).long().tolist() if n else []
        stats = GenerationStats(**merged, position_reached=pos[:n], position_accepted=pos[n:])
    # Timing and throughput are the trainer's own (time/rollout_s covers the whole rollout step).
    return {k: v for k, v in stats.metrics().items() if k.startswith(("rollout/", "tokens/"))}


def _padded(values: list[int], n: int) -> list[float]:
    return [float(v) for v in values] + [0.0] * (n - len(values))
