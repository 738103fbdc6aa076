"""Configs: YAML files become dataclasses; `--set a.b=c` overrides any field; errors name the field.

    cfg = load_config("configs/skd.yaml", overrides=["train.max_steps=10", "rollout.skd_top_k=5"])

Every field is typed. Loading checks types and allowed values, and an unknown key is an error that suggests
the closest valid key; a renamed key is an error that names its new key (RENAMED). Defaults that a policy or a
loss also has are read from it, so the two cannot disagree.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import UserError, one_line
from .engine.policies import AdaptiveTopKPolicy, TopKPolicy
from .losses import DEFAULT_CHUNK_SIZE


class ConfigError(UserError):
    """A config value or key is not allowed. The message names the file, the field and what is allowed."""


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    """Teacher and student: a local folder, a hub id, or a built-in preset (`tiny-teacher`, `tiny-student`,
    `builtin-teacher`)."""

    teacher: Optional[str] = "builtin-teacher"
    student: str = "tiny-student"
    tokenizer: Optional[str] = None  # None: the student's own tokenizer
    student_device: str = "auto"  # "auto" = cuda:<local rank> when CUDA is available, else cpu
    teacher_device: str = "auto"  # "auto" = the student's device; "paired" = cuda:2r+1 with the student on cuda:2r
    # "auto": the checkpoint's own dtype (its config's dtype; float32 where it names none, and for the presets).
    # The student trains in float32 unless asked (fp32 weights and AdamW state; train.mixed_precision adds
    # autocast); the frozen teacher takes its checkpoint's dtype.
    student_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    teacher_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class FieldMap:
    """Which record keys hold the query, the knowledge and the response. Lists are tried in order."""

    id: list[str] = field(default_factory=lambda: ["id"])
    query: list[str] = field(default_factory=lambda: ["query", "prompt", "question", "instruction"])
    knowledge: list[str] = field(default_factory=lambda: ["knowledge", "context"])
    response: list[str] = field(default_factory=lambda: ["response", "answer", "output", "completion"])


@dataclass
class DatasetConfig:
    """One dataset: a built-in task (`task: arith`), a file (`path: data.jsonl`) or a hub dataset read through
    `datasets.load_dataset` (`hub: openai/gsm8k`, `hub_config: main`; `split` names the hub split)."""

    task: Optional[str] = None
    path: Optional[str] = None
    hub: Optional[str] = None
    hub_config: Optional[str] = None  # the hub dataset's configuration (GSM8K: main)
    split: Literal["train", "validation", "test"] = "train"
    # tokens: pre-tokenized rows {id?, prompt_ids, response_ids?} in JSON, JSONL or parquet (auto finds them too)
    format: Literal["auto", "lupi", "json", "jsonl", "csv", "parquet", "tokens"] = "auto"
    fields: FieldMap = field(default_factory=FieldMap)
    limit: Optional[int] = None  # keep the first N records; None = all
    weight: float = 1.0  # share in a mixture (normalised over the datasets of a stage)


@dataclass
class ViewConfig:
    """How records become prompts. The teacher's view may hold knowledge; the student's never does."""

    system_prompt: str = ""  # teacher view
    student_system_prompt: str = ""
    few_shot: list[dict] = field(default_factory=list)  # teacher view: [{query, response}, ...]
    knowledge_template: str = "[Background Knowledge]\n{knowledge}\n\n{query}"
    teacher_knowledge: bool = True  # False: the teacher sees the student's question only (plain KD)
    use_chat_template: bool = True  # False, or a tokenizer without one: "Question: ...\nAnswer: "
    sft_view: Literal["student", "teacher"] = "student"  # the view `specdistill sft` trains on
    max_prompt_tokens: int = 512  # the student's view; longer ones are an error (the query is never cut)
    max_teacher_prompt_tokens: int = 4096  # the teacher's view (LUPI-SKD's is ~2,460); cut by a stated rule, see docs
    max_response_tokens: int = 128
    template_options: dict = field(default_factory=dict)  # keyword arguments of the chat template, e.g.
    # {enable_thinking: false} for Qwen3


@dataclass
class MixtureStage:
    """From `start` (a fraction of max_steps in [0, 1)) on, sample datasets with these weights."""

    start: float = 0.0
    weights: list[float] = field(default_factory=list)


@dataclass
class DataConfig:
    train: list[DatasetConfig] = field(default_factory=lambda: [DatasetConfig(task="arith")])
    validation: Optional[DatasetConfig] = None
    schedule: list[MixtureStage] = field(default_factory=list)  # empty: the datasets' own weights throughout
    views: ViewConfig = field(default_factory=ViewConfig)
    seed: int = 0  # built-in task generation seed


@dataclass
class RolloutConfig:
    strategy: Literal["dataset", "teacher", "student", "mixed", "skd"] = "dataset"
    mix: list[Literal["dataset", "teacher", "student", "skd"]] = field(default_factory=lambda: ["student", "dataset"])
    lam: float = 0.5  # mixed: probability that a sequence comes from mix[0] (by default the student's own sample)
    max_new_tokens: int = 64
    temperature: float = 1.0  # student sampling; 0 = greedy
    top_p: float = 1.0
    teacher_temperature: float = 1.0
    teacher_top_p: float = 1.0
    policy: Literal["top_k", "adaptive_top_k"] = "top_k"
    skd_top_k: int = TopKPolicy.k  # K of the SKD policy (top_k), or its starting K_base (adaptive_top_k)
    skd_min_prob: float = TopKPolicy.min_prob  # teacher probability a kept draft needs; 0 = off
    bonus: bool = TopKPolicy.bonus_token
    gamma: int = 4
    gamma_schedule: Literal["constant", "lupi", "heuristic"] = "constant"
    max_gamma: int = 16
    k_min: int = AdaptiveTopKPolicy.k_min  # adaptive_top_k from here on
    k_max: int = AdaptiveTopKPolicy.k_max
    r_plus: float = AdaptiveTopKPolicy.r_plus
    r_minus: float = AdaptiveTopKPolicy.r_minus
    ema: float = AdaptiveTopKPolicy.ema  # weight of the newest token in the success EMA (0.1: about 10 tokens)
    entropy_gain: float = AdaptiveTopKPolicy.entropy_gain
    verification: Literal["parallel", "sequential"] = "parallel"
    # skd: keep the teacher's logits of the rollout (the verify forwards) for the loss, instead of a second
    # teacher forward; used where that is exact, i.e. train.mixed_precision "no" (docs/training.md)
    reuse_teacher_logits: bool = True
    # encode the prefix that every teacher view of a batch shares (a LUPI persona and few-shot examples) once, for
    # the rollouts and the loss phase's teacher forward; off for sliding-window teachers (docs/engine.md)
    share_teacher_prefix: bool = True
    compile: bool = False
    trace: bool = False
    # Stages that change the settings above during training: [{start: fraction | step: N, <rollout keys>}, ...];
    # each stage is these settings with its own keys replaced (docs/training.md). Empty: the same settings throughout.
    schedule: list[dict] = field(default_factory=list)


@dataclass
class LossConfig:
    name: Literal["fkl", "rkl", "jsd", "tvd", "skew_fkl", "skew_rkl", "ce", "hybrid", "rank"] = "ce"
    temperature: float = 1.0
    beta: float = 0.5
    alpha: float = 0.1  # skew_fkl / skew_rkl, in [0, 1)
    ce_weight: float = 0.5
    rank_top_k: int = 8  # rank loss: the teacher's top-k tokens whose order the student keeps
    margin: float = 0.0
    sparse_top_k: Optional[int] = None  # sparse KD: the teacher's top-k logits plus a tail bucket; None = dense
    chunk_size: int = DEFAULT_CHUNK_SIZE  # positions per fp32 chunk (docs/methods.md: memory)


@dataclass
class TrainConfig:
    output_dir: str = "runs/run"
    max_steps: int = 100
    batch_size: int = 16  # sequences per micro-batch per process
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    log_every: int = 1
    eval_every: int = 0  # 0 = only at the end
    eval_samples: int = 64
    save_every: int = 0  # 0 = only at the end
    keep_last: int = 2
    resume: Optional[str] = None  # "auto" (latest checkpoint in output_dir) or a checkpoint path
    overwrite: bool = False  # a fresh run into an output_dir that holds another run's files replaces them
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    max_bad_steps: int = 5  # consecutive NaN/inf losses before the run stops
    trackers: list[str] = field(default_factory=list)  # e.g. ["tensorboard"], ["wandb"]
    progress: bool = True
    threads: int = 0  # torch CPU threads; 0 = torch's default
    compile: bool = False  # torch.compile the loss phase's student and teacher forwards (rollout.compile: rollouts)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------- building dataclasses from dicts
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` and convert it (int -> float, dict -> dataclass)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not allowed; allowed values: {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not allowed; give a finite number")
    if tp is int and abs(value) >= 2**63:
        raise ConfigError(f"{where}: {value} is too large; allowed: a 64-bit integer")
    return value


# Keys that were renamed, because `top_k` meant four things: old key -> (new key, what it is).
RENAMED = {
    "rollout.top_k": ("rollout.skd_top_k", "the K of the SKD top-K policy"),
    "rollout.min_prob": ("rollout.skd_min_prob", "the teacher probability an SKD draft needs"),
    "loss.top_k": ("loss.sparse_top_k", "the teacher's top-k logits of sparse KD"),
}


def build(cls: type, data: dict, where: str = "") -> Any:
    """Make dataclass `cls` from a (nested) dict; unknown keys are errors that suggest the closest key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if path in RENAMED:
            new, meaning = RENAMED[path]
            raise ConfigError(f"config key {path!r} was renamed: use {new!r} ({meaning})")
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {path!r}{hint}")
        kwargs[key] = _convert(value, hints[key], path)
    return cls(**kwargs)


def yaml_reason(exc: Exception) -> str:
    """PyYAML's error in a few words: the problem and where (line and column, 1-based)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem is None:
        return one_line(str(exc))
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def apply_override(data: dict, override: str) -> None:
    """Apply one `a.b=c` override in place; the value is parsed as YAML (`x=3` is an int, `x=[1,2]` a list)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.field=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(p.strip() for p in parts):
        raise ConfigError(f"override {override!r}: the key {key.strip()!r} must look like section.field (dots "
                          f"between non-empty names)")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:  # absent, or null in the file (data.validation: null): a new section
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({yaml_reason(exc)}); quote "
                          f"text that holds YAML characters") from None


PACKAGED_CONFIGS = Path(__file__).parent / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A config file path as given, else the same name among the configs shipped with the package
    (so `configs/builtin/teacher.yaml` works from any directory after a pip install)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    relative = path.parts[1:] if path.parts and path.parts[0] == "configs" else path.parts
    packaged = PACKAGED_CONFIGS.joinpath(*relative) if relative else PACKAGED_CONFIGS
    return packaged if packaged.is_file() else path


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), cls: type = Config,
                check=None) -> Any:
    """Read a YAML file (or nothing: the defaults), apply `--set` overrides, check and build the dataclass.
    check: the range checks run on the built config (default `validate`)."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = resolve_config_path(path)
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a folder; give a YAML config file") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte offset {exc.start}); save it as UTF-8") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {yaml_reason(exc)}") from None
        if data is None:
            raise ConfigError(f"{path}: the file is empty; give at least the sections you mean to set "
                              f"(configs/sft.yaml is a starting point)")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    for ov in overrides:
        apply_override(data, ov)
    try:
        cfg = build(cls, data)
        (check or validate)(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def load_prompt_config(path: str | Path) -> Config:
    """A config read for the settings that make prompts (`eval`, `bench` and `generate --config`: data.views and
    the datasets' field mappings). Every key is checked as `load_config` checks it, but only the data section's
    values are validated, so a run's config.yaml loads on any machine (its devices and models need not be here)."""
    return load_config(path, check=lambda cfg: _validate_data(cfg.data))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def stage_step(start: float, max_steps: int) -> int:
    """The first optimizer step (counted from 0) of a stage that starts at fraction `start` of max_steps: the
    stage is in force from the step that has start * max_steps steps behind it (rounding noise such as
    0.3 * 10 = 3.0000000000000004 aside)."""
    return math.ceil(round(start * max_steps, 9))


def rollout_stages(r: RolloutConfig, max_steps: int) -> list[tuple[int, RolloutConfig]]:
    """rollout.schedule laid out over max_steps: [(first step, settings in force)] for the top-level settings
    (from step 0) and then each stage, whose settings are the top-level ones with the stage's keys replaced.
    Steps count optimizer steps from 0, so `step: N` (or start N / max_steps) trains its first step after N steps.
    A later stage that starts at the same step replaces an earlier one. Errors name the stage's key."""
    stages = [(0, r)]
    base = {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "schedule"}
    for i, stage in enumerate(r.schedule):
        where = f"rollout.schedule[{i}]"
        settings = dict(stage)
        start, step = settings.pop("start", None), settings.pop("step", None)
        _check((start is None) != (step is None),
               f"{where}: give exactly one of 'start' (a fraction of train.max_steps in [0, 1)) or 'step' (a step "
               f"count in [0, train.max_steps))")
        if start is not None:
            start = _convert(start, float, f"{where}.start")
            _check(0 <= start < 1, f"{where}.start: {start}; allowed range [0, 1)")
            first = stage_step(start, max_steps)
        else:
            first = _convert(step, int, f"{where}.step")
            _check(0 <= first < max_steps, f"{where}.step: {first}; allowed range [0, train.max_steps={max_steps})")
        _check("schedule" not in settings, f"{where}: a stage cannot have a schedule of its own")
        renamed = [k for k in settings if f"rollout.{k}" in RENAMED]
        if renamed:
            new_key, meaning = RENAMED[f"rollout.{renamed[0]}"]
            raise ConfigError(f"config key '{where}.{renamed[0]}' was renamed: use {new_key.split('.')[-1]!r} "
                              f"({meaning})")
        _check(first >= stages[-1][0], f"{where}: starts at step {first}, before the stage listed above it (step "
               f"{stages[-1][0]}); list the stages in the order they start")
        stages.append((first, build(RolloutConfig, {**base, **settings}, where)))
    return stages


def rollout_at(r: RolloutConfig, step: int, max_steps: int) -> tuple[int, RolloutConfig]:
    """(stage index, settings) in force at optimizer step `step` (from 0): index 0 is the top-level settings,
    i the i-th stage of rollout.schedule. A pure function of the step, so a resumed run is in the right stage."""
    if not r.schedule:
        return 0, r
    index, settings = 0, r
    for i, (first, stage) in enumerate(rollout_stages(r, max_steps)):
        if step >= first:
            index, settings = i, stage
    return index, settings


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express: finite numbers (checked while building), non-negative counts,
    schedules that can train, known tasks and devices, templates whose placeholders exist."""
    _validate_model(cfg.model)
    _validate_rollout(cfg.rollout)
    _validate_loss(cfg.loss)
    _validate_train(cfg.train)
    _validate_data(cfg.data)
    for i, (_, stage) in enumerate(rollout_stages(cfg.rollout, cfg.train.max_steps)[1:]):
        try:  # each stage's settings pass the same checks as the top-level ones
            validate(dataclasses.replace(cfg, rollout=stage))
        except ConfigError as exc:
            raise ConfigError(f"rollout.schedule[{i}]: {exc}") from None


def _validate_model(m: ModelConfig) -> None:
    from .models import check_device

    _check(bool(m.student and m.student.strip()), "model.student: give a model folder, a hub id or a preset")
    _check(m.teacher is None or bool(m.teacher.strip()), "model.teacher: give a model, or null for none")
    _check(m.tokenizer is None or bool(m.tokenizer.strip()), "model.tokenizer: give a tokenizer, or null")
    try:
        check_device(m.student_device, "model.student_device")
        check_device(m.teacher_device, "model.teacher_device")
    except UserError as exc:  # a ConfigError, so that the message names the file
        raise ConfigError(str(exc)) from None
    lc = m.lora
    _check(lc.r >= 1, f"model.lora.r: {lc.r}; must be >= 1")
    _check(lc.alpha > 0, f"model.lora.alpha: {lc.alpha}; must be > 0")
    _check(0 <= lc.dropout < 1, f"model.lora.dropout: {lc.dropout}; allowed range [0, 1)")
    _check(not lc.enabled or bool(lc.target_modules), "model.lora.target_modules: name at least one module")


def _validate_rollout(r: RolloutConfig) -> None:
    _check(0.0 <= r.lam <= 1.0, f"rollout.lam: {r.lam} is not allowed; allowed range [0, 1]")
    _check(len(r.mix) == 2 and r.mix[0] != r.mix[1],
           f"rollout.mix: {r.mix}; give two different strategies: [the one taken with probability rollout.lam, "
           f"the other]")
    _check(r.max_new_tokens >= 1, f"rollout.max_new_tokens: {r.max_new_tokens}; must be >= 1")
    for name in ("temperature", "teacher_temperature"):
        _check(getattr(r, name) >= 0, f"rollout.{name}: {getattr(r, name)}; must be >= 0 (0 = greedy)")
    for name in ("top_p", "teacher_top_p"):
        _check(0 < getattr(r, name) <= 1, f"rollout.{name}: {getattr(r, name)}; must lie in (0, 1]")
    _check(r.skd_top_k >= 1, f"rollout.skd_top_k: {r.skd_top_k}; must be >= 1")
    _check(r.skd_min_prob >= 0,
           f"rollout.skd_min_prob: {r.skd_min_prob}; must be >= 0 (> 1 makes every token teacher-written)")
    _check(r.max_gamma >= 1, f"rollout.max_gamma: {r.max_gamma}; must be >= 1")
    _check(1 <= r.gamma <= r.max_gamma, f"rollout.gamma: {r.gamma}; must lie in [1, rollout.max_gamma={r.max_gamma}]")
    _check(1 <= r.k_min <= r.k_max, f"rollout.k_min/k_max: {r.k_min}/{r.k_max}; need 1 <= k_min <= k_max")
    _check(r.policy != "adaptive_top_k" or r.k_min <= r.skd_top_k <= r.k_max,
           f"rollout.skd_top_k: {r.skd_top_k} (adaptive_top_k's starting K); must lie in [rollout.k_min={r.k_min}, "
           f"rollout.k_max={r.k_max}]")
    _check(0 <= r.r_minus <= r.r_plus <= 1, "rollout.r_minus <= rollout.r_plus, both in [0, 1]")
    _check(0 < r.ema <= 1, f"rollout.ema: {r.ema}; the weight of the newest token must lie in (0, 1]")
    _check(r.entropy_gain >= 0, f"rollout.entropy_gain: {r.entropy_gain}; must be >= 0 (0 = no entropy offset)")


def _validate_loss(l: LossConfig) -> None:
    _check(0 <= l.beta <= 1, f"loss.beta: {l.beta} is not allowed; allowed range [0, 1]")
    _check(0 <= l.alpha < 1, f"loss.alpha: {l.alpha} is not allowed; allowed range [0, 1) (the skew losses' mix "
           f"alpha p + (1 - alpha) q; at 1 the divergence is 0 whatever the student does)")
    _check(0 <= l.ce_weight <= 1, f"loss.ce_weight: {l.ce_weight} is not allowed; allowed range [0, 1]")
    _check(l.temperature > 0, f"loss.temperature: {l.temperature}; must be > 0")
    _check(l.rank_top_k >= 2, f"loss.rank_top_k: {l.rank_top_k}; must be >= 2 (an order needs two tokens)")
    _check(l.margin >= 0, f"loss.margin: {l.margin}; must be >= 0")
    _check(l.sparse_top_k is None or l.sparse_top_k >= 1, f"loss.sparse_top_k: {l.sparse_top_k}; must be >= 1 or null")
    _check(l.chunk_size >= 1, f"loss.chunk_size: {l.chunk_size}; must be >= 1")


def _validate_train(t: TrainConfig) -> None:
    _check(bool(t.output_dir.strip()), "train.output_dir: give a folder")
    for name in ("max_steps", "batch_size", "grad_accum"):
        _check(getattr(t, name) >= 1, f"train.{name}: {getattr(t, name)}; must be >= 1")
    _check(t.lr > 0, f"train.lr: {t.lr}; must be > 0")
    _check(t.weight_decay >= 0, f"train.weight_decay: {t.weight_decay}; must be >= 0")
    _check(0 <= t.min_lr_ratio <= 1, f"train.min_lr_ratio: {t.min_lr_ratio}; allowed range [0, 1]")
    _check(t.warmup_steps >= 0, f"train.warmup_steps: {t.warmup_steps}; must be >= 0")
    _check(t.warmup_steps == 0 or t.max_steps > 1,
           f"train.warmup_steps: {t.warmup_steps} with train.max_steps=1: the warmup starts at lr 0, so the one step "
           f"would not train; set train.warmup_steps=0 or more steps (a run that ends inside its warmup is warned of)")
    _check(t.seed >= 0, f"train.seed: {t.seed}; must be >= 0")
    _check(t.threads >= 0, f"train.threads: {t.threads}; must be >= 0 (0 = torch's default)")
    _check(t.eval_samples >= 1, f"train.eval_samples: {t.eval_samples}; must be >= 1")
    _check(t.keep_last >= 1, f"train.keep_last: {t.keep_last}; must be >= 1")
    _check(t.max_grad_norm >= 0, f"train.max_grad_norm: {t.max_grad_norm}; must be >= 0 (0 = no clipping)")
    _check(t.max_bad_steps >= 1, f"train.max_bad_steps: {t.max_bad_steps}; must be >= 1")
    for name in ("save_every", "eval_every"):
        _check(getattr(t, name) >= 0, f"train.{name}: {getattr(t, name)}; must be >= 0 (0 = only at the end)")
    _check(t.log_every >= 1, f"train.log_every: {t.log_every}; must be >= 1")
    _check(t.resume in (None, "auto") or bool(t.resume.strip()), "train.resume: use 'auto', a checkpoint path, or null")
    for tr in t.trackers:
        _check(tr in ("tensorboard", "wandb"), f"train.trackers: {tr!r} is not allowed; allowed: tensorboard, wandb")


def _validate_data(d: DataConfig) -> None:
    from .data.tasks import TASKS

    _check(len(d.train) >= 1, "data.train: give at least one dataset")
    _check(d.seed >= 0, f"data.seed: {d.seed}; must be >= 0")
    named = [(f"data.train[{i}]", ds) for i, ds in enumerate(d.train)]
    for where, ds in named + ([("data.validation", d.validation)] if d.validation else []):
        _check(sum(x is not None for x in (ds.task, ds.path, ds.hub)) == 1,
               f"{where}: give exactly one of 'task', 'path' or 'hub'")
        _check(ds.task is None or ds.task in TASKS,
               f"{where}.task: {ds.task!r} is not a built-in task; allowed: {', '.join(TASKS)} (a file: path)")
        _check(ds.path is None or bool(ds.path.strip()), f"{where}.path: give a data file")
        _check(ds.limit is None or ds.limit >= 1, f"{where}.limit: {ds.limit}; must be >= 1, or null for all records")
        _check(ds.weight >= 0, f"{where}.weight: {ds.weight}; must be >= 0")
        for name in ("id", "query", "knowledge", "response"):
            keys = getattr(ds.fields, name)
            _check(name != "query" or bool(keys), f"{where}.fields.query: name at least one key")
            _check(all(isinstance(k, str) and k for k in keys), f"{where}.fields.{name}: keys must be non-empty text")
    for i, stage in enumerate(d.schedule):
        _check(0 <= stage.start < 1, f"data.schedule[{i}].start: {stage.start}; allowed range [0, 1)")
        _check(len(stage.weights) == len(d.train), f"data.schedule[{i}].weights: need {len(d.train)} weights, one per dataset in data.train")
        _check(all(w >= 0 for w in stage.weights) and sum(stage.weights) > 0, f"data.schedule[{i}].weights must be >= 0 with a positive sum")
    _check(sum(ds.weight for ds in d.train) > 0 or any(st.start == 0 for st in d.schedule),
           "data.train: the datasets' weights must have a positive sum (or a data.schedule stage must start at 0)")
    _validate_views(d.views)


def _validate_views(v: ViewConfig) -> None:
    _check(v.max_prompt_tokens >= 1, f"data.views.max_prompt_tokens: {v.max_prompt_tokens}; must be >= 1")
    _check(v.max_teacher_prompt_tokens >= 1,
           f"data.views.max_teacher_prompt_tokens: {v.max_teacher_prompt_tokens}; must be >= 1")
    _check(v.max_response_tokens >= 2, f"data.views.max_response_tokens: {v.max_response_tokens}; must be >= 2 "
           f"(the response and its end-of-turn token)")
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(v.knowledge_template) if f is not None}
    except ValueError as exc:
        raise ConfigError(f"data.views.knowledge_template: {exc} in {v.knowledge_template!r}; write a literal brace "
                          f"as {{{{ or }}}}") from None
    unknown = sorted(names - {"knowledge", "query"})
    shown = ", ".join("{" + n + "}" for n in unknown)
    _check(not unknown, f"data.views.knowledge_template: unknown placeholder(s) {shown}; allowed: {{knowledge}} and "
           f"{{query}} (a literal brace is {{{{ or }}}})")
    _check(not v.teacher_knowledge or {"knowledge", "query"} <= names,
           f"data.views.knowledge_template: {v.knowledge_template!r} must hold both {{knowledge}} and {{query}} (set "
           f"data.views.teacher_knowledge: false for a teacher without knowledge)")
    for i, shot in enumerate(v.few_shot):
        ok = isinstance(shot, dict) and set(shot) == {"query", "response"} and all(
            isinstance(x, str) and x.strip() for x in shot.values())
        _check(ok, f"data.views.few_shot[{i}]: {shot!r}; each example is {{query: text, response: text}}")
    for name in ("system_prompt", "student_system_prompt"):
        _check(isinstance(getattr(v, name), str), f"data.views.{name}: must be text")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (it loads back to an equal config)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
