"""Range checks that types alone cannot express. Task names and devices are checked where they are looked up
(data.tasks, models.check_device): config sits below both."""

from __future__ import annotations

import dataclasses
import string

from .building import require
from .schema import Config, ConfigError, DataConfig, LossConfig, ModelConfig, RolloutConfig, TrainConfig, ViewConfig
from .stages import rollout_stages


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express: finite numbers (checked while building), non-negative counts,
    schedules that can train, templates whose placeholders exist."""
    _validate_model(cfg.model)
    _validate_rollout(cfg.rollout)
    _validate_loss(cfg.loss)
    _validate_train(cfg.train)
    validate_data(cfg.data)
    for i, (_, stage) in enumerate(rollout_stages(cfg.rollout, cfg.train.max_steps)[1:]):
        try:  # each stage's settings pass the same checks as the top-level ones
            validate(dataclasses.replace(cfg, rollout=stage))
        except ConfigError as exc:
            raise ConfigError(f"rollout.schedule[{i}]: {exc}") from None


def _validate_model(m: ModelConfig) -> None:
    require(bool(m.student and m.student.strip()), "model.student: give a model folder, a hub id or a preset")
    require(m.teacher is None or bool(m.teacher.strip()), "model.teacher: give a model, or null for none")
    require(m.tokenizer is None or bool(m.tokenizer.strip()), "model.tokenizer: give a tokenizer, or null")
    lc = m.lora
    require(lc.r >= 1, f"model.lora.r: {lc.r}; must be >= 1")
    require(lc.alpha > 0, f"model.lora.alpha: {lc.alpha}; must be > 0")
    require(0 <= lc.dropout < 1, f"model.lora.dropout: {lc.dropout}; allowed range [0, 1)")
    require(not lc.enabled or bool(lc.target_modules), "model.lora.target_modules: name at least one module")


def _validate_rollout(r: RolloutConfig) -> None:
    require(0.0 <= r.lam <= 1.0, f"rollout.lam: {r.lam} is not allowed; allowed range [0, 1]")
    require(len(r.mix) == 2 and r.mix[0] != r.mix[1],
           f"rollout.mix: {r.mix}; give two different strategies: [the one taken with probability rollout.lam, "
           f"the other]")
    require(r.max_new_tokens >= 1, f"rollout.max_new_tokens: {r.max_new_tokens}; must be >= 1")
    for name in ("temperature", "teacher_temperature"):
        require(getattr(r, name) >= 0, f"rollout.{name}: {getattr(r, name)}; must be >= 0 (0 = greedy)")
    for name in ("top_p", "teacher_top_p"):
        require(0 < getattr(r, name) <= 1, f"rollout.{name}: {getattr(r, name)}; must lie in (0, 1]")
    require(r.skd_top_k >= 1, f"rollout.skd_top_k: {r.skd_top_k}; must be >= 1")
    require(r.skd_min_prob >= 0,
           f"rollout.skd_min_prob: {r.skd_min_prob}; must be >= 0 (> 1 makes every token teacher-written)")
    require(r.max_gamma >= 1, f"rollout.max_gamma: {r.max_gamma}; must be >= 1")
    require(1 <= r.gamma <= r.max_gamma, f"rollout.gamma: {r.gamma}; must lie in [1, rollout.max_gamma={r.max_gamma}]")
    require(1 <= r.k_min <= r.k_max, f"rollout.k_min/k_max: {r.k_min}/{r.k_max}; need 1 <= k_min <= k_max")
    require(r.policy != "adaptive_top_k" or r.k_min <= r.skd_top_k <= r.k_max,
           f"rollout.skd_top_k: {r.skd_top_k} (adaptive_top_k's starting K); must lie in [rollout.k_min={r.k_min}, "
           f"rollout.k_max={r.k_max}]")
    require(0 <= r.r_minus <= r.r_plus <= 1, "rollout.r_minus <= rollout.r_plus, both in [0, 1]")
    require(0 < r.ema <= 1, f"rollout.ema: {r.ema}; the weight of the newest token must lie in (0, 1]")
    require(r.entropy_gain >= 0, f"rollout.entropy_gain: {r.entropy_gain}; must be >= 0 (0 = no entropy offset)")


def _validate_loss(l: LossConfig) -> None:
    require(0 <= l.beta <= 1, f"loss.beta: {l.beta} is not allowed; allowed range [0, 1]")
    require(0 <= l.alpha < 1, f"loss.alpha: {l.alpha} is not allowed; allowed range [0, 1) (the skew losses' mix "
           f"alpha p + (1 - alpha) q; at 1 the divergence is 0 whatever the student does)")
    require(0 <= l.ce_weight <= 1, f"loss.ce_weight: {l.ce_weight} is not allowed; allowed range [0, 1]")
    require(l.temperature > 0, f"loss.temperature: {l.temperature}; must be > 0")
    require(l.rank_top_k >= 2, f"loss.rank_top_k: {l.rank_top_k}; must be >= 2 (an order needs two tokens)")
    require(l.margin >= 0, f"loss.margin: {l.margin}; must be >= 0")
    require(l.sparse_top_k is None or l.sparse_top_k >= 1, f"loss.sparse_top_k: {l.sparse_top_k}; must be >= 1 or null")
    require(l.chunk_size >= 1, f"loss.chunk_size: {l.chunk_size}; must be >= 1")


def _validate_train(t: TrainConfig) -> None:
    require(bool(t.output_dir.strip()), "train.output_dir: give a folder")
    for name in ("max_steps", "batch_size", "grad_accum"):
        require(getattr(t, name) >= 1, f"train.{name}: {getattr(t, name)}; must be >= 1")
    require(t.lr > 0, f"train.lr: {t.lr}; must be > 0")
    require(t.weight_decay >= 0, f"train.weight_decay: {t.weight_decay}; must be >= 0")
    require(0 <= t.min_lr_ratio <= 1, f"train.min_lr_ratio: {t.min_lr_ratio}; allowed range [0, 1]")
    require(t.warmup_steps >= 0, f"train.warmup_steps: {t.warmup_steps}; must be >= 0")
    require(t.warmup_steps == 0 or t.max_steps > 1,
           f"train.warmup_steps: {t.warmup_steps} with train.max_steps=1: the warmup starts at lr 0, so the one step "
           f"would not train; set train.warmup_steps=0 or more steps (a run that ends inside its warmup is warned of)")
    require(t.seed >= 0, f"train.seed: {t.seed}; must be >= 0")
    require(t.threads >= 0, f"train.threads: {t.threads}; must be >= 0 (0 = torch's default)")
    require(t.eval_samples >= 1, f"train.eval_samples: {t.eval_samples}; must be >= 1")
    require(t.keep_last >= 1, f"train.keep_last: {t.keep_last}; must be >= 1")
    require(t.max_grad_norm >= 0, f"train.max_grad_norm: {t.max_grad_norm}; must be >= 0 (0 = no clipping)")
    require(t.max_bad_steps >= 1, f"train.max_bad_steps: {t.max_bad_steps}; must be >= 1")
    for name in ("save_every", "eval_every"):
        require(getattr(t, name) >= 0, f"train.{name}: {getattr(t, name)}; must be >= 0 (0 = only at the end)")
    require(t.log_every >= 1, f"train.log_every: {t.log_every}; must be >= 1")
    require(t.resume in (None, "auto") or bool(t.resume.strip()), "train.resume: use 'auto', a checkpoint path, or null")
    for tr in t.trackers:
        require(tr in ("tensorboard", "wandb"), f"train.trackers: {tr!r} is not allowed; allowed: tensorboard, wandb")


def validate_data(d: DataConfig) -> None:
    require(len(d.train) >= 1, "data.train: give at least one dataset")
    require(d.seed >= 0, f"data.seed: {d.seed}; must be >= 0")
    named = [(f"data.train[{i}]", ds) for i, ds in enumerate(d.train)]
    for where, ds in named + ([("data.validation", d.validation)] if d.validation else []):
        require(sum(x is not None for x in (ds.task, ds.path, ds.hub)) == 1,
               f"{where}: give exactly one of 'task', 'path' or 'hub'")
        require(ds.path is None or bool(ds.path.strip()), f"{where}.path: give a data file")
        require(ds.limit is None or ds.limit >= 1, f"{where}.limit: {ds.limit}; must be >= 1, or null for all records")
        require(ds.weight >= 0, f"{where}.weight: {ds.weight}; must be >= 0")
        for name in ("id", "query", "knowledge", "response"):
            keys = getattr(ds.fields, name)
            require(name != "query" or bool(keys), f"{where}.fields.query: name at least one key")
            require(all(isinstance(k, str) and k for k in keys), f"{where}.fields.{name}: keys must be non-empty text")
    for i, stage in enumerate(d.schedule):
        require(0 <= stage.start < 1, f"data.schedule[{i}].start: {stage.start}; allowed range [0, 1)")
        require(len(stage.weights) == len(d.train), f"data.schedule[{i}].weights: need {len(d.train)} weights, one per dataset in data.train")
        require(all(w >= 0 for w in stage.weights) and sum(stage.weights) > 0, f"data.schedule[{i}].weights must be >= 0 with a positive sum")
    require(sum(ds.weight for ds in d.train) > 0 or any(st.start == 0 for st in d.schedule),
           "data.train: the datasets' weights must have a positive sum (or a data.schedule stage must start at 0)")
    _validate_views(d.views)


def _validate_views(v: ViewConfig) -> None:
    require(v.max_prompt_tokens >= 1, f"data.views.max_prompt_tokens: {v.max_prompt_tokens}; must be >= 1")
    require(v.max_teacher_prompt_tokens >= 1,
           f"data.views.max_teacher_prompt_tokens: {v.max_teacher_prompt_tokens}; must be >= 1")
    require(v.max_response_tokens >= 2, f"data.views.max_response_tokens: {v.max_response_tokens}; must be >= 2 "
           f"(the response and its end-of-turn token)")
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(v.knowledge_template) if f is not None}
    except ValueError as exc:
        raise ConfigError(f"data.views.knowledge_template: {exc} in {v.knowledge_template!r}; write a literal brace "
                          f"as {{{{ or }}}}") from None
    unknown = sorted(names - {"knowledge", "query"})
    shown = ", ".join("{" + n + "}" for n in unknown)
    require(not unknown, f"data.views.knowledge_template: unknown placeholder(s) {shown}; allowed: {{knowledge}} and "
           f"{{query}} (a literal brace is {{{{ or }}}})")
    require(not v.teacher_knowledge or {"knowledge", "query"} <= names,
           f"data.views.knowledge_template: {v.knowledge_template!r} must hold both {{knowledge}} and {{query}} (set "
           f"data.views.teacher_knowledge: false for a teacher without knowledge)")
    for i, shot in enumerate(v.few_shot):
        ok = isinstance(shot, dict) and set(shot) == {"query", "response"} and all(
            isinstance(x, str) and x.strip() for x in shot.values())
        require(ok, f"data.views.few_shot[{i}]: {shot!r}; each example is {{query: text, response: text}}")
    for name in ("system_prompt", "student_system_prompt"):
        require(isinstance(getattr(v, name), str), f"data.views.{name}: must be text")
