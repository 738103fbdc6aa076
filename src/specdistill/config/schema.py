"""The config's typed sections: every field with its type and default (docs/configs.md).

The SKD policies' defaults (rollout.skd_top_k, k_min, ...) are the engine's own (engine/policies.py), and
DEFAULT_CHUNK_SIZE is the chunk the losses use when none is given (losses.py reads it from here);
tests/test_config.py checks that they agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ..errors import UserError

DEFAULT_CHUNK_SIZE = 256  # positions per fp32 chunk of the chunked divergences (losses.py; docs/methods.md: memory)


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
    skd_top_k: int = 25  # K of the SKD policy (top_k), or its starting K_base (adaptive_top_k)
    skd_min_prob: float = 0.0  # teacher probability a kept draft needs; 0 = off
    bonus: bool = False  # the teacher's bonus token after a fully accepted block
    gamma: int = 4
    gamma_schedule: Literal["constant", "lupi", "heuristic"] = "constant"
    max_gamma: int = 16
    k_min: int = 1  # adaptive_top_k from here on
    k_max: int = 100
    r_plus: float = 0.8
    r_minus: float = 0.5
    ema: float = 0.1  # weight of the newest token in the success EMA (0.1: about 10 tokens)
    entropy_gain: float = 5.0
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
