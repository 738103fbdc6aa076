"""The training recipe on accelerate: setup / train / save / cleanup. SFT and every distillation method.

    step:  global batch (seeded, per-rank slice) -> rollout per micro-batch -> global token count
           -> loss_sum / count per micro-batch, backward -> clip -> optimizer step -> metrics

The student is the only trained model. The teacher is frozen, in eval mode, and runs under no_grad on its own
device. `specdistill sft` is this recipe with the `dataset` rollout and the `ce` loss, training one model on
the view chosen by `data.views.sft_view` (the built-in teachers learn on the teacher view, with knowledge).

Devices: the student lives on accelerate's device (cuda:<local rank>, or cpu) unless `model.student_device`
says otherwise; the teacher on the student's device unless `model.teacher_device` says otherwise. "paired" puts
rank r's student on cuda:2r and its teacher on cuda:2r+1. Processes and backends (DDP, FSDP, DeepSpeed) come
from `accelerate launch` (configs/accelerate/, docs/training.md).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import inspect
import json
import math
import os
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

from . import checkpoint, losses
from .config import Config, ConfigError, rollout_at, rollout_stages, save_config, stage_step
from .data.mixture import MixtureStream
from .data.records import load_records
from .data.tasks import get_task
from .data.prompt_views import check_encodable, check_positions, collate, encode_example, record_texts
from .engine.compiling import compiled_model
from .engine.prefix import shared_prefix
from .engine.sampling import float_dtype
from .engine.sampling import derive_seed
from .gguf_io import carry_source_record
from .evaluate.quality import evaluate_records
from .data.templates import end_token_ids
from .models import (check_model_spec, check_same_tokenizer, check_vocab, embedding_rows, load_model, load_tokenizer,
                     max_positions, resolve_device)
from .rollout import RolloutBatch, dataset_rollout, make_rollout, rollout_metrics, rollout_sources
from .scoring import eval_mode, response_logits, top1_agreements

TEACHER_LOSSES = {"fkl", "rkl", "jsd", "tvd", "skew_fkl", "skew_rkl", "hybrid", "rank"}
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
SAMPLES_LOGGED = 4  # sample completions written to samples.jsonl per validation


class TrainingDiverged(FloatingPointError):
    """train.max_bad_steps steps in a row had a NaN or inf loss or gradient; a resumable checkpoint was saved."""


@dataclass
class Run:
    cfg: Config
    accelerator: Accelerator
    tokenizer: object
    student: torch.nn.Module  # as prepared by accelerate (DDP/FSDP/DeepSpeed wrapper, or the model itself)
    teacher: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stream: MixtureStream
    vocab: int
    sft: bool
    out: Path
    device: torch.device  # the student's
    teacher_device: torch.device | None = None
    step: int = 0  # optimizer steps done (skipped ones included)
    bad_steps: int = 0  # NaN/inf steps in a row
    skipped_steps: int = 0  # NaN/inf steps in all
    validation: list = field(default_factory=list)
    examples: dict = field(default_factory=dict)  # id(record) -> its Example (train.encode)
    score_student: object = None  # what micro_loss calls: the student, or with train.compile its compiled caller
    score_teacher: object = None  # likewise for the teacher
    loss_teacher_forwards: int = 0  # teacher forwards run by the loss phase (0 when rollouts kept the logits)
    max_steps_history: list = field(default_factory=list)  # [[step, train.max_steps in force from it on], ...]


# ---------------------------------------------------------------- setup
def setup(cfg: Config, sft: bool = False) -> Run:
    """Models, data, optimizer and schedule; resume from a checkpoint when asked (train.resume, $RESUME_CHECKPOINT)."""
    _check_trackers(cfg.train.trackers)
    _check_models(cfg, sft)
    acc = Accelerator(
        gradient_accumulation_steps=1,  # micro-batches are accumulated by train_step, normalised by token count
        mixed_precision=cfg.train.mixed_precision, log_with=cfg.train.trackers or None,
        project_dir=cfg.train.output_dir,
    )
    _check_launch(acc)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out, m = Path(cfg.train.output_dir), cfg.model
    resume = checkpoint.resolve_resume(cfg.train.resume, out)
    _claim_output(acc, cfg, out, resume)
    device = student_device(acc, m.student_device)
    tokenizer = load_tokenizer(m.tokenizer or m.student, m.trust_remote_code)
    if needs_teacher(cfg, sft) and m.teacher and not m.tokenizer:  # before any model loads: ids must mean the same
        check_same_tokenizer(load_tokenizer(m.teacher, m.trust_remote_code), tokenizer,
                             names=(f"model.teacher={m.teacher}", f"model.student={m.student}"))
    student = load_model(m.student, m.student_dtype, device, tokenizer, m.trust_remote_code, cfg.train.seed)
    _warn_half_precision_weights(student, cfg)
    student = _prepare_student(student, cfg)
    if resume is not None:  # into the plain model, before FSDP/DeepSpeed shard it
        _load_student_weights(student, resume, m.lora.enabled)
    teacher, t_device = None, None
    if needs_teacher(cfg, sft):
        t_device = teacher_device(acc, m.teacher_device, device)
        teacher = _load_teacher(cfg, tokenizer, t_device)
    vocab = check_vocab(tokenizer, student=student, **({"teacher": teacher} if teacher is not None else {}))
    set_seed(cfg.train.seed + acc.process_index)  # after the models, which seed their own initialisation
    optimizer, scheduler = build_optimizer(student, cfg)
    _configure_deepspeed(acc, cfg)
    student, optimizer = _prepare(acc, student, optimizer, device)
    datasets = [load_records(d, cfg.data.seed) for d in cfg.data.train]
    validation = load_records(cfg.data.validation, cfg.data.seed) if cfg.data.validation is not None else []
    check_encodable(record_texts([r for d in datasets for r in d] + validation, cfg.data.views), tokenizer,
                    f"the tokenizer of {m.tokenizer or m.student}")
    stream = MixtureStream(datasets, [d.weight for d in cfg.data.train], cfg.data.schedule, cfg.train.max_steps,
                           cfg.train.seed)
    run = Run(cfg, acc, tokenizer, student, teacher, optimizer, scheduler, stream, vocab, sft, out, device, t_device)
    run.validation = validation[: cfg.train.eval_samples]
    run.max_steps_history = [[0, cfg.train.max_steps]]
    encode(run, [r for d in datasets for r in d] + run.validation)  # every record fits, or the run stops here
    run.score_student, run.score_teacher = _scorers(run)
    if resume is not None:
        _restore_state(run, resume)
    _start_logs(run)
    return run


def _check_models(cfg: Config, sft: bool) -> None:
    """Every model the run loads must be able to load: checked before anything else (models.check_model_spec).
    A warmup as long as the run is warned of (config.validate refuses only one that trains nothing)."""
    m = cfg.model
    check_model_spec(m.student, "model.student")
    if m.tokenizer:
        check_model_spec(m.tokenizer, "model.tokenizer", need_config=False)
    if needs_teacher(cfg, sft):
        if not m.teacher:
            raise ConfigError(f"loss {cfg.loss.name!r} / rollout {cfg.rollout.strategy!r} needs a teacher: "
                              f"set model.teacher")
        check_model_spec(m.teacher, "model.teacher")
    t = cfg.train
    if t.warmup_steps >= t.max_steps:
        warnings.warn(f"train.warmup_steps={t.warmup_steps} >= train.max_steps={t.max_steps}: the run ends inside its "
                      f"warmup, its last step at {(t.max_steps - 1) / t.warmup_steps:.0%} of train.lr")


def run_config(cfg: Config) -> dict:
    """The resolved config as plain JSON values: what a checkpoint records and a resume compares."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _claim_output(acc: Accelerator, cfg: Config, out: Path, resume: Path | None) -> None:
    """Refuse to overwrite or adopt another run's files (checkpoint.check_run_folder): every rank checks before any
    rank writes; with train.overwrite the main process then removes the earlier run's files."""
    auto = (os.environ.get("RESUME_CHECKPOINT") or cfg.train.resume) == "auto"
    replaced = checkpoint.check_run_folder(out, resume, run_config(cfg), auto, cfg.train.overwrite)
    acc.wait_for_everyone()
    if replaced and acc.is_main_process:
        acc.print(f"train.overwrite: removing the earlier run's {', '.join(p.name for p in replaced)} from {out}")
        checkpoint.remove_run_files(replaced)
    acc.wait_for_everyone()


def _scorers(run: Run) -> tuple:
    """The callables that score micro-batches in the loss phase: the student and the teacher, or with
    train.compile their torch.compile'd callers (dynamic shapes; the student's graph includes its backward).
    A student that accelerate wrapped (DDP, FSDP, DeepSpeed) stays eager, since its wrapper's hooks run the
    collectives; so does a sharded one (FSDP, ZeRO-3). Compiling falls back to eager code, with a warning, if it
    fails."""
    mode, acc = run.cfg.train.compile, run.accelerator
    plain = acc.unwrap_model(run.student) is run.student and not params_sharded(acc)
    student = compiled_model(run.student, mode and plain, "loss_student")
    teacher = None if run.teacher is None else compiled_model(run.teacher, mode, "loss_teacher")
    return student, teacher


def build_optimizer(student, cfg: Config):
    """AdamW over the trainable parameters, and its warmup + cosine schedule (stepped once per optimizer step)."""
    t = cfg.train
    params = [p for p in student.parameters() if p.requires_grad]
    # On the CPU torch's default AdamW updates one tensor at a time in Python; its fused kernel does the same update
    # in one call (3x faster for the tiny students). Elsewhere torch's own default (foreach on CUDA) is kept.
    on_cpu = bool(params) and all(p.device.type == "cpu" and type(p) in (torch.Tensor, torch.nn.Parameter)
                                  for p in params)
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=True if on_cpu else None)
    # Not passed to accelerate: its scheduler wrapper steps once per process per step (it assumes the data
    # shrinks with the number of processes); here the global batch is fixed and max_steps counts optimizer steps.
    schedule = functools.partial(warmup_cosine, warmup=t.warmup_steps, total=t.max_steps, min_ratio=t.min_lr_ratio)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _start_logs(run: Run) -> None:
    """The resolved config, the JSONL logs cut back to the resumed step, and the trackers."""
    acc, cfg, out = run.accelerator, run.cfg, run.out
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        _truncate_logs(out, run.step)  # rows a killed run logged after its last checkpoint
    acc.wait_for_everyone()
    if cfg.train.trackers:
        if "wandb" in cfg.train.trackers:
            os.environ.setdefault("WANDB_MODE", "offline")  # offline by default; WANDB_MODE=online to sync
        acc.init_trackers(out.name, config=_flat(cfg), init_kwargs={"wandb": {"dir": str(out)}})


def needs_teacher(cfg: Config, sft: bool) -> bool:
    """Whether the loss or a rollout (of any stage of rollout.schedule, either side of a mix) needs the teacher."""
    if sft:
        return False
    sources = {name for _, r in rollout_stages(cfg.rollout, cfg.train.max_steps) for name in rollout_sources(r)}
    return cfg.loss.name in TEACHER_LOSSES or bool(sources & {"teacher", "skd"})


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier at optimizer step `step` (0-based): linear warmup from 0 over `warmup` steps, then a cosine
    from 1 down to `min_ratio` at step `total` (the schedule of transformers' cosine-with-min-lr)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _check_trackers(trackers: list[str]) -> None:
    for name in trackers:
        try:
            importlib.import_module(TRACKER_PACKAGES[name])
        except ImportError:
            raise ConfigError(f"train.trackers: {name!r} needs the {TRACKER_PACKAGES[name]!r} package, which is not "
                              f"installed: pip install 'specdistill[tracking]', or remove {name!r} from "
                              f"train.trackers") from None


def _check_launch(acc: Accelerator) -> None:
    """Refuse N launched processes that accelerate left unconnected: each would train alone into output_dir. Warn
    of an FSDP launch that accelerate runs as DDP (it enables FSDP on accelerators only, not with
    ACCELERATE_USE_CPU)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and acc.distributed_type != DistributedType.FSDP:
        warnings.warn(f"the launch asks for FSDP, but accelerate runs it as {acc.distributed_type.value} (it enables "
                      f"FSDP on GPUs and other accelerators, not on the CPU): every process holds the whole student")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and acc.num_processes == 1:
        raise ConfigError(
            f"launched as one of {world} processes, but accelerate found no distributed backend, so every process "
            f"would train alone into the same train.output_dir. Without GPUs, launch with ACCELERATE_USE_CPU=1 "
            f"(gloo): ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {world} -m specdistill ... "
            f"(docs/training.md)")


def student_device(acc, spec: str) -> torch.device:
    """The student's device: accelerate's for "auto" (cuda:<local rank>, or cpu), else `model.student_device`
    ("paired": cuda:2r on rank r; or any torch device such as "cuda:1")."""
    if spec == "auto":
        return acc.device
    return resolve_device(spec, "student", acc.local_process_index)


def teacher_device(acc, spec: str, student: torch.device) -> torch.device:
    """The teacher's device: the student's for "auto", else `model.teacher_device` ("paired": cuda:2r+1)."""
    if spec == "auto":
        return student
    return resolve_device(spec, "teacher", acc.local_process_index)


def _prepare(acc: Accelerator, student, optimizer, device: torch.device):
    """Wrap the student and its optimizer for the launch's backend (none, DDP, FSDP or DeepSpeed).

    accelerate assumes the student lives on cuda:<local rank>. A student placed elsewhere (model.student_device,
    the paired layout) makes its device the process's device: autocast, collectives and batches follow it, and
    DDP takes the device from the module instead of the local rank."""
    if device == acc.device:
        return acc.prepare(student, optimizer)
    if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ConfigError(f"model.student_device={acc.device}: FSDP and DeepSpeed place the student themselves; "
                          f"use model.student_device=auto with them")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives run on the current device
    acc.state.device = PartialState().device = device
    previous = os.environ.get("ACCELERATE_BYPASS_DEVICE_MAP")
    os.environ["ACCELERATE_BYPASS_DEVICE_MAP"] = "true"  # DDP(device_ids=None): the module's own device
    try:
        return acc.prepare(student, optimizer)
    finally:
        if previous is None:
            os.environ.pop("ACCELERATE_BYPASS_DEVICE_MAP")
        else:
            os.environ["ACCELERATE_BYPASS_DEVICE_MAP"] = previous


def _configure_deepspeed(acc: Accelerator, cfg: Config) -> None:
    """DeepSpeed wants the micro-batch size, which accelerate reads from a dataloader; this recipe has none.
    Its gradient_accumulation_steps stays 1: train_step marks the last micro-batch as the boundary itself."""
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if acc.distributed_type == DistributedType.DEEPSPEED and plugin is not None:
        if plugin.is_auto("train_micro_batch_size_per_gpu"):
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.train.batch_size


def _warn_half_precision_weights(student, cfg: Config) -> None:
    """The student trains in the dtype it is loaded in: half-precision weights (model.student_dtype bfloat16,
    float16, or auto on such a checkpoint) mean AdamW updates them in place, and a step smaller than the dtype's
    resolution near a weight (bf16: about 1/256 of it) is lost. Allowed (it halves the memory), and said once."""
    dtype = next(student.parameters()).dtype
    if dtype in (torch.bfloat16, torch.float16):
        warnings.warn(f"model.student_dtype={cfg.model.student_dtype} loads the student's weights in {dtype}: the "
                      f"optimizer updates them in {dtype} and loses steps below its resolution (whatever "
                      f"train.mixed_precision says); set model.student_dtype=float32 for fp32 weights (the default)")


def _prepare_student(student, cfg: Config):
    if cfg.model.gradient_checkpointing:
        # Non-reentrant: gradients reach LoRA weights even though the (frozen) embeddings' outputs need none.
        kwargs = {"use_reentrant": False}
        if hasattr(student, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            student.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if cfg.model.lora.enabled:
        from peft import LoraConfig as PeftLora, get_peft_model

        lc = cfg.model.lora
        student = get_peft_model(student, PeftLora(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                   target_modules=lc.target_modules, task_type="CAUSAL_LM"))
    student.train()
    return student


def _load_teacher(cfg: Config, tokenizer, device: torch.device):
    m = cfg.model
    if not m.teacher:
        raise ConfigError(f"loss {cfg.loss.name!r} / rollout {cfg.rollout.strategy!r} needs a teacher: "
                          f"set model.teacher")
    teacher = load_model(m.teacher, m.teacher_dtype, device, tokenizer, m.trust_remote_code, cfg.train.seed + 1)
    teacher.eval().requires_grad_(False)
    return teacher


def _flat(cfg) -> dict:
    flat = {}
    for section, values in dataclasses.asdict(cfg).items():
        for k, v in values.items():
            flat[f"{section}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


# ---------------------------------------------------------------- distributed helpers
def params_sharded(acc) -> bool:
    """True when each rank holds only a shard of the student's parameters (FSDP, DeepSpeed ZeRO-3)."""
    return acc.distributed_type == DistributedType.FSDP or _zero_stage(acc) == 3


def optimizer_sharded(acc) -> bool:
    """True when each rank holds only a shard of the optimizer state (FSDP, DeepSpeed ZeRO-1/2/3)."""
    return acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _zero_stage(acc) -> int:
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    return plugin.zero_stage if acc.distributed_type == DistributedType.DEEPSPEED and plugin is not None else 0


@contextmanager
def gathered_for_generation(accelerator, model, enabled: bool = True):
    """Full student parameters while it generates (rollouts, validation); every rank must enter together.

    DeepSpeed ZeRO-3: deepspeed.zero.GatheredParameters over all parameters (deepspeed is imported here only).
    FSDP (v1): FSDP.summon_full_params on the wrapped root (recurse=False, as TRL does; nested FSDP units still
    gather during their forward, so every rank must run the same number of forwards). FSDP2: every unit gathered
    once and kept whole through the forwards (fsdp2_unsharded), so that ranks whose rows finish at different
    times run different numbers of forwards without a collective among them. DDP and one process hold full
    parameters: nothing to do.
    model: the prepared student (the wrapper, not the unwrapped module)."""
    if not enabled:
        yield
    elif _zero_stage(accelerator) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield
    elif accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(model, recurse=False, writeback=False):
            yield
    elif accelerator.distributed_type == DistributedType.FSDP:
        with fsdp2_unsharded(model):
            yield
    else:
        yield


@contextmanager
def fsdp2_unsharded(model):
    """Every FSDP2 unit of `model` unsharded (one all-gather each, in module order, alike on every rank) and kept
    so after each forward, then resharded on exit. FSDP2 otherwise all-gathers a unit in each of its forwards: a
    rank whose rows finished would leave the other's all-gathers unpaired (a hang, or the wrong collectives
    paired). The setting torch's set_reshard_after_forward changes cannot be read back from its public API, so
    each parameter group's own (post_forward_mesh_info; None = keep whole) is saved and restored."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if isinstance(model, FSDPModule):
        model._get_fsdp_state()._lazy_init()  # the root's settings, which torch fixes at its first forward
    groups = [g for m in units for g in m._get_fsdp_state()._fsdp_param_groups]
    saved = [g.post_forward_mesh_info for g in groups]
    for m in units:
        m.unshard()
    for g in groups:
        g.post_forward_mesh_info = None
    try:
        yield
    finally:
        for g, info in zip(groups, saved):
            g.post_forward_mesh_info = info
        for m in units:
            m.reshard()


# ---------------------------------------------------------------- one step
def encode(run: Run, records) -> list:
    """The records' examples, each encoded once per run: setup encodes every training and validation record, so
    that a record whose view cannot fit (or that leaves a model too few positions) stops the run before its first
    step, on every rank alike, and steps only look them up."""
    missing = [r for r in records if id(r) not in run.examples]
    for record, example in zip(missing, _encode_records(run, missing)):
        run.examples[id(record)] = example
    return [run.examples[id(r)] for r in records]


def _encode_records(run: Run, records) -> list:
    """Encode records; under `sft` with sft_view=teacher the trained model sees the teacher's view."""
    if not records:
        return []
    examples = [encode_example(r, run.tokenizer, run.cfg.data.views) for r in records]
    if run.sft and run.cfg.data.views.sft_view == "teacher":
        for e in examples:
            e.student_prompt = e.teacher_prompt
    budget = max(run.cfg.data.views.max_response_tokens, run.cfg.rollout.max_new_tokens)  # response or rollout
    check_positions(examples, budget, max_positions(run.accelerator.unwrap_model(run.student)),
                    max_positions(run.teacher) if run.teacher is not None else None,
                    "the larger of data.views.max_response_tokens and rollout.max_new_tokens")
    return examples


def loss_params(lc) -> dict:
    """The LossConfig fields that the configured loss function takes (temperature, beta, sparse_top_k, ...)."""
    sig = inspect.signature(losses.LOSSES[lc.name]).parameters
    return {k: getattr(lc, k) for k, p in sig.items() if p.kind is p.KEYWORD_ONLY and hasattr(lc, k)}


def micro_loss(run: Run, rb: RolloutBatch, student=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(summed loss over the response tokens of one micro-batch, the positions among them where the student's and
    the teacher's argmax tokens agree, or None when the loss reads no teacher logits), scalars on the student's device.

    student: the model to score (default: run.score_student, the prepared student or its compiled caller). Each
    view goes to its model's device; the teacher's logits come back to the student's."""
    lc, T, dev = run.cfg.loss, rb.response.shape[1], run.device
    student = run.score_student if student is None else student
    s_logits = response_logits(student, rb.student_ids.to(dev), rb.student_mask.to(dev), T, run.vocab)
    t_logits = teacher_logits(run, rb).to(dev) if lc.name in TEACHER_LOSSES else None
    mask = rb.response_mask.to(dev)
    loss_sum, _ = losses.compute(lc.name, s_logits, t_logits, mask, labels=rb.response.to(dev), **loss_params(lc))
    return loss_sum, None if t_logits is None else top1_agreements(s_logits, t_logits, mask)


def teacher_in_own_dtype(run: Run) -> bool:
    """Whether the loss phase's teacher forward computes in the teacher's own dtype, as its rollout forwards do
    (which run outside autocast): without mixed precision, and for a teacher whose weights are in half precision
    (bf16, fp16), whose loss-phase forward then runs outside train.mixed_precision's autocast, which would only
    re-cast them (on a CPU a bf16 teacher's logits are bit-identical with and without it). An fp32 teacher under
    bf16/fp16 keeps autocast there: its loss-phase forward then runs in half precision, its rollout in fp32."""
    if run.cfg.train.mixed_precision == "no" or run.teacher is None:
        return True
    return next(run.teacher.parameters()).dtype in (torch.bfloat16, torch.float16)


def kept_logits_form(run: Run, settings):
    """What SKD rollouts keep of the teacher's logits for the loss (engine.generate's keep_target_logits): False
    when the loss reads no teacher, rollout.reuse_teacher_logits is off, or reuse would not be exact enough; True
    (the full logits) for a dense loss; the loss's TopKLogits form for a sparse one.

    Not exact enough, hence off: an fp32 teacher under train.mixed_precision bf16/fp16 (teacher_in_own_dtype),
    whose loss-phase forward runs in half precision where its rollout ran in fp32. A half-precision teacher's kept
    logits differ from its loss-phase forward only by the rounding of its own dtype (docs/training.md). The rank
    loss reads the full logits whatever sparse_top_k says, so it keeps them whole."""
    lc = run.cfg.loss
    if run.sft or lc.name not in TEACHER_LOSSES or not settings.reuse_teacher_logits:
        return False
    if not teacher_in_own_dtype(run):
        return False
    if lc.sparse_top_k is None or lc.name == "rank":
        return True
    return functools.partial(losses.top_k_logits, k=lc.sparse_top_k, temperature=lc.temperature)


@torch.no_grad()
def teacher_logits(run: Run, rb: RolloutBatch):
    """The teacher's logits predicting each response token of rb, on the teacher's device: the ones its rollout
    kept, with a teacher forward (scoring.response_logits) only for the rows that have none."""
    kept, have = rb.teacher_logits, rb.teacher_logits_rows
    if kept is None:
        return teacher_forward(run, rb, slice(None))
    missing = (~have).nonzero().flatten()
    if len(missing):
        logits = teacher_forward(run, rb, missing.tolist())  # [m, T, V]
        if isinstance(kept, losses.TopKLogits):
            lc = run.cfg.loss
            logits = losses.top_k_logits(logits, lc.sparse_top_k, lc.temperature)
        fields = kept if isinstance(kept, tuple) else (kept,)
        filled = logits if isinstance(logits, tuple) else (logits,)
        index = missing.to(run.teacher_device)
        fields = [f.index_copy(0, index, g.to(f.dtype)) for f, g in zip(fields, filled)]
        kept = type(kept)(*fields) if isinstance(kept, tuple) else fields[0]
    return kept


def teacher_forward(run: Run, rb: RolloutBatch, rows) -> torch.Tensor:
    """The teacher's logits predicting the response tokens of rb's `rows` (a list, or slice(None) for all):
    [m, T, V] on the teacher's device. A half-precision teacher runs outside autocast, in its own dtype, as in its
    rollouts (teacher_in_own_dtype). With rollout.share_teacher_prefix in the stage in force (and the teacher in
    its own dtype: under autocast the rows would run in another dtype than the stored prefix), the prefix every
    row's view shares is encoded once and reused."""
    T, tdev = rb.response.shape[1], run.teacher_device
    ids, mask = rb.teacher_ids[rows].to(tdev), rb.teacher_mask[rows].to(tdev)
    run.loss_teacher_forwards += 1
    prefix = None
    own = teacher_in_own_dtype(run)
    _, settings = rollout_at(run.cfg.rollout, run.step, run.cfg.train.max_steps)
    with torch.autocast(tdev.type, enabled=False) if own else nullcontext():
        if settings.share_teacher_prefix and own:
            P = rb.teacher_prompt_len
            prefix = shared_prefix(run.teacher, ids[:, :P], mask[:, :P])
        return response_logits(run.score_teacher, ids, mask, T, run.vocab, prefix=prefix)


def rollout_step(run: Run) -> list[RolloutBatch]:
    """This rank's micro-batches of the step's global batch, each rolled out."""
    cfg, acc = run.cfg, run.accelerator
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum
    groups = run.stream.next_batch(run.step, accum * acc.num_processes, bs)
    _, settings = rollout_at(cfg.rollout, run.step, cfg.train.max_steps)  # the stage of rollout.schedule in force
    generates = not run.sft and rollout_sources(settings) != {"dataset"}
    keep = kept_logits_form(run, settings)
    student = acc.unwrap_model(run.student)
    batches = []
    sampling_mode = eval_mode(student) if generates else nullcontext()
    with gathered_for_generation(acc, run.student, enabled=generates), sampling_mode:
        for i in range(accum):
            g = acc.process_index * accum + i  # this rank's i-th micro-batch in the global batch
            prompts = collate(encode(run, groups[g]), run.tokenizer.pad_token_id)
            # Rows draw their noise from (seed, step, global row index): independent of batch layout and rank.
            seeds = [derive_seed(cfg.train.seed, run.step, g * bs + r) for r in range(bs)]
            if run.sft:
                batches.append(dataset_rollout(prompts, run.tokenizer.pad_token_id))
            else:
                batches.append(make_rollout(settings, prompts, student, run.teacher, run.tokenizer, seeds,
                                            keep_teacher_logits=keep))
    return batches


def train_step(run: Run) -> dict:
    """One optimizer step (or a skipped one, when the loss or gradient is NaN/inf); returns global metrics."""
    acc, cfg = run.accelerator, run.cfg.train
    t0 = time.perf_counter()
    forwards_before = run.loss_teacher_forwards
    batches = rollout_step(run)
    t_rollout = time.perf_counter() - t0
    # Collectives run on the student's device (NCCL takes no CPU tensors); rollouts return CPU tensors.
    count = losses.global_token_count([b.response_mask.to(run.device) for b in batches], acc)
    lr = run.optimizer.param_groups[0]["lr"]  # the rate this step applies
    total = torch.zeros((), dtype=torch.float32, device=run.device)
    agree = None  # argmax agreements on the trained positions, when the loss reads teacher logits
    for i, rb in enumerate(batches):
        last = i == len(batches) - 1
        acc.sync_gradients = last  # DeepSpeed steps its engine inside backward, only at the boundary
        with nullcontext() if last else acc.no_sync(run.student):  # DDP all-reduces once, at the last micro-batch
            with acc.autocast():
                loss_sum, agreements = micro_loss(run, rb)
            acc.backward(losses.micro_batch_loss(loss_sum, count, acc.num_processes))
        total += loss_sum.detach().float()
        if agreements is not None:
            agree = agreements if agree is None else agree + agreements
    # [summed loss, the loss phase's teacher forwards], over this rank's micro-batches, then over the ranks
    sums = torch.stack([total, total.new_tensor(float(run.loss_teacher_forwards - forwards_before))])
    total, forwards = acc.reduce(sums, reduction="sum") if acc.num_processes > 1 else sums
    if agree is not None and acc.num_processes > 1:
        agree = acc.reduce(agree, reduction="sum")
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
    norm = acc.clip_grad_norm_(run.student.parameters(), max_norm)
    grad_norm = float("nan") if norm is None else float(norm)
    if apply_update(run, bool(torch.isfinite(total)) and math.isfinite(grad_norm)):
        run.bad_steps = 0
    else:
        run.bad_steps += 1
        run.skipped_steps += 1
    elapsed = time.perf_counter() - t0
    n = float(count)
    metrics = {
        "train/loss": float(total) / max(n, 1.0), "train/lr": lr, "train/grad_norm": grad_norm,
        "train/skipped_steps": run.skipped_steps, "tokens/trained": n,
        "time/rollout_s": t_rollout, "time/loss_s": elapsed - t_rollout, "throughput/tokens_per_s": n / elapsed,
    }
    if agree is not None:
        metrics["train/top1_agreement"] = float(agree) / max(n, 1.0)
    if run.cfg.loss.name in TEACHER_LOSSES and not run.sft:
        metrics["teacher/loss_forwards"] = int(forwards)
    if run.cfg.rollout.schedule:
        metrics["rollout/stage"] = rollout_at(run.cfg.rollout, run.step, cfg.max_steps)[0]
    metrics.update(_global_rollout_stats(run, batches))
    return metrics


def apply_update(run: Run, finite: bool) -> bool:
    """Step the optimizer when the loss and gradient are finite, and the schedule always; True if it stepped.

    fp16: the grad scaler sees overflows itself (it skips and lowers its scale), so it always gets the step.
    DeepSpeed already stepped inside backward; a NaN step there is counted but cannot be undone."""
    acc = run.accelerator
    if finite or acc.scaler is not None:
        run.optimizer.step()
        finite = finite and not getattr(run.optimizer, "step_was_skipped", False)
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return finite


def _global_rollout_stats(run: Run, batches: list[RolloutBatch]) -> dict:
    """Rollout counters summed over micro-batches and ranks, and the rates formed from those sums."""
    acc = run.accelerator
    if acc.num_processes == 1:
        return rollout_metrics(batches)
    return rollout_metrics(batches, lambda t: acc.gather(t.to(run.device)).cpu())  # NCCL gathers device tensors


# ---------------------------------------------------------------- validation
@torch.no_grad()
def validate(run: Run) -> dict:
    """val/loss on the validation records' reference responses, and the task metric on greedy answers.

    With full parameters on every rank the records are split over the ranks and the sums reduced; with sharded
    parameters every rank scores them all (its forwards are collectives). The training RNG is left untouched."""
    if not run.validation:
        return {}
    acc, cfg = run.accelerator, run.cfg
    split = acc.num_processes > 1 and not params_sharded(acc)
    records = run.validation[acc.process_index :: acc.num_processes] if split else run.validation
    task = get_task(cfg.data.validation.task) if cfg.data.validation.task else None
    with_loss = all(r.response is not None for r in run.validation)
    sums = torch.zeros(5, dtype=float_dtype(run.device), device=run.device)  # loss sum, tokens, score sum, records, agreements
    agreement = run.cfg.loss.name in TEACHER_LOSSES
    student = acc.unwrap_model(run.student)
    fork = torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else [])
    with fork, gathered_for_generation(acc, run.student), eval_mode(student):
        examples = encode(run, records)
        for i in range(0, len(examples) if with_loss else 0, cfg.train.batch_size):
            rb = dataset_rollout(collate(examples[i : i + cfg.train.batch_size], run.tokenizer.pad_token_id),
                                 run.tokenizer.pad_token_id)
            with acc.autocast():
                loss_sum, agreements = micro_loss(run, rb, student)
            sums[0] += float(loss_sum)
            sums[1] += rb.num_tokens
            sums[4] += float(agreements) if agreements is not None else 0.0
        if records:
            result = _greedy_answers(run, student, records, task)
            if task is not None:
                sums[2] += result["exact_match"] * result["n"]
                sums[3] += result["n"]
            if acc.is_main_process:
                _log_samples(run, result["samples"][:SAMPLES_LOGGED])
    if split:
        sums = acc.reduce(sums, reduction="sum")
    metrics = {}
    if with_loss:
        metrics["val/loss"] = float(sums[0] / sums[1].clamp_min(1))
        if agreement:
            metrics["val/top1_agreement"] = float(sums[4] / sums[1].clamp_min(1))
    if task is not None:
        metrics[f"val/{task.metric}"] = float(sums[2] / sums[3].clamp_min(1))
    return metrics


def _greedy_answers(run: Run, student, records, task) -> dict:
    """Greedy answers to validation records, as `evaluate_records` returns them. A task scores every record
    (exact_match); a file dataset has no scorer, so only the records whose samples are logged are answered."""
    cfg = run.cfg
    view = "teacher" if run.sft and cfg.data.views.sft_view == "teacher" else "student"
    if task is None:
        records = records[:SAMPLES_LOGGED]
    return evaluate_records(student, run.tokenizer, records, cfg.data.views, task and task.scorer, view,
                            max_new_tokens=cfg.rollout.max_new_tokens, batch_size=cfg.train.batch_size,
                            metrics=("exact_match",) if task is not None else (), answers=True)


def _log_samples(run: Run, samples: list[dict]) -> None:
    with open(run.out / "samples.jsonl", "a") as fh:
        for sample in samples:
            fh.write(json.dumps({"step": run.step, **sample}) + "\n")
    if run.cfg.train.trackers:
        text = "\n\n".join(f"Q: {s['query']}\nA: {s['prediction']}\nref: {s['reference']}" for s in samples)
        run.accelerator.log({"val/samples": text}, step=run.step)


# ---------------------------------------------------------------- saving and resuming
def save_model(run: Run, path: Path, draft: bool = True) -> None:
    """The student (merged LoRA when used) and the tokenizer as a Hugging Face folder; its generation_config ends
    rows at every end id (EOS, end of turn, the models' own). draft=True (final/): the folder serves as the
    teacher's draft unchanged, its embedding matrices at the teacher's row count (zero rows past the tokenizer),
    which transformers' assisted generation requires. draft=False (a checkpoint's model/): the student's own row
    count, which a resume loads back into the student. Every rank calls this (gathering sharded weights is a
    collective); the main process writes."""
    acc = run.accelerator
    model = acc.unwrap_model(run.student)
    if run.cfg.model.lora.enabled:  # a plain folder that from_pretrained / assistant_model= / vLLM load as-is
        state = None
        model = _merged_copy(model) if acc.is_main_process else None
    else:
        state = acc.get_state_dict(run.student)
    if acc.is_main_process:
        rows = embedding_rows(run.teacher) if draft and run.teacher is not None else None
        with _saved_with_rows(model, state, rows) as (to_save, state):
            to_save.save_pretrained(path, state_dict=state, safe_serialization=True)
        run.tokenizer.save_pretrained(path)
        carry_source_record(run.cfg.model.student, path)  # so that `export` copies a GGUF source's vocabulary
        generation = copy.deepcopy(model.generation_config)
        generation.eos_token_id = end_token_ids(run.tokenizer, model, *([run.teacher] if run.teacher else []))
        generation.pad_token_id = run.tokenizer.pad_token_id
        generation.save_pretrained(path)


@contextmanager
def _saved_with_rows(model, state: dict | None, rows: int | None):
    """(model, state dict) to save with `rows` embedding rows: the input and output embeddings zero-padded (or
    cut back to their padding) and config.vocab_size set while saving. rows None or equal: as they are."""
    own = embedding_rows(model)
    if rows is None or rows == own:  # rows >= the tokenizer's size (check_vocab): only padding is added or cut
        yield model, state
        return
    state = dict(model.state_dict() if state is None else state)
    weights = {id(model.get_input_embeddings().weight)}
    if model.get_output_embeddings() is not None:
        weights.add(id(model.get_output_embeddings().weight))
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in weights and name in state:
            old = state[name]  # [own, d]
            new = old.new_zeros(rows, old.shape[1])
            new[: min(rows, own)] = old[: min(rows, own)]
            state[name] = new
    config = model.config
    saved = config.vocab_size
    config.vocab_size = rows
    try:
        yield model, state
    finally:
        config.vocab_size = saved


def _merged_copy(peft_model):
    """The LoRA weights merged into a copy of the base model (the training model is left as it is)."""
    return copy.deepcopy(peft_model).merge_and_unload()


def write_student(run: Run, folder: Path) -> None:
    """A checkpoint's student: `model/` (Hugging Face folder at the student's own embedding row count, what a
    resume loads) and, with LoRA, `adapter/` (what a LoRA resume loads)."""
    save_model(run, folder / "model", draft=False)
    if run.cfg.model.lora.enabled and run.accelerator.is_main_process:
        run.accelerator.unwrap_model(run.student).save_pretrained(folder / "adapter", safe_serialization=True)


def save(run: Run) -> Path:
    """A checkpoint of the current step in <output_dir>/checkpoints (atomic; the last train.keep_last are kept)."""
    acc = run.accelerator
    state = {"cursor": run.stream.state_dict()["cursor"], "bad_steps": run.bad_steps,
             "skipped_steps": run.skipped_steps, "config": run_config(run.cfg),  # resume checks the config
             "max_steps_history": run.max_steps_history}
    return checkpoint.save_checkpoint(
        run.out, run.step, lambda folder: write_student(run, folder), run.optimizer, run.scheduler, state,
        acc.process_index, acc.is_main_process, acc.wait_for_everyone, run.cfg.train.keep_last,
        sharded_optimizer=optimizer_sharded(acc))


def save_final(run: Run) -> Path:
    """The trained student in <output_dir>/final, written to a temporary folder and renamed into place."""
    acc, final = run.accelerator, run.out / "final"
    tmp = run.out / f"{checkpoint.TMP_PREFIX}final"
    save_model(run, tmp)
    if acc.is_main_process:
        checkpoint.replace_dir(tmp, final)
    acc.wait_for_everyone()
    return final


def _load_student_weights(student, path: Path, lora: bool) -> None:
    """Checkpoint weights into the (not yet prepared) student: the full model, or with LoRA the adapter on top
    of the base model, which setup has loaded from model.student as in the original run."""
    if not lora:
        checkpoint.load_model_weights(student, path / "model")
        return
    from peft import set_peft_model_state_dict

    adapter = path / "adapter"
    if not adapter.exists():
        raise checkpoint.CheckpointError(f"cannot resume a LoRA run from {path}: it has no adapter/ folder (it was "
                                         f"saved without LoRA; start from its model/ folder with model.student "
                                         f"instead)")
    result = set_peft_model_state_dict(student, checkpoint.read_safetensors(adapter))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise checkpoint.CheckpointError(f"the adapter in {adapter} does not match model.lora: missing "
                                         f"{missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}")


def _restore_state(run: Run, path: Path) -> None:
    state = checkpoint.load_checkpoint(path, run.optimizer, run.scheduler, run.accelerator.process_index,
                                       optimizer_sharded(run.accelerator))
    run.step, run.bad_steps, run.skipped_steps = state["step"], state["bad_steps"], state["skipped_steps"]
    run.stream.load_state_dict(state)
    run.accelerator.print(f"resumed from {path} at step {run.step}")
    saved = (state.get("config") or {}).get("train", {})
    _apply_resumed_schedule(run, saved.get("lr"), saved.get("max_steps"))
    history = state.get("max_steps_history") or ([[0, saved["max_steps"]]] if "max_steps" in saved else [])
    if not history or history[-1][1] != run.cfg.train.max_steps:
        history.append([run.step, run.cfg.train.max_steps])
    run.max_steps_history = history


def _apply_resumed_schedule(run: Run, saved_lr: float | None, saved_max_steps: int | None) -> None:
    """A train.lr or train.max_steps other than the checkpoint run's applies from the resumed step on, never
    silently overridden by the restored schedule. train.lr (to go on after a divergence, say): the schedule keeps
    its shape and scales to the new peak rate. train.max_steps (to train longer): the schedule is a function of
    the step and max_steps, so it goes on as laid out over the new max_steps (the warmup, a step count, as it was;
    the cosine stretched to end at the new last step), as in a run started with that max_steps. Said, and
    recorded in config.yaml and in the next checkpoints (state.json's max_steps_history)."""
    t, scheduler, acc = run.cfg.train, run.scheduler, run.accelerator
    lr_changed = saved_lr is not None and saved_lr != t.lr
    steps_changed = saved_max_steps is not None and saved_max_steps != t.max_steps
    if not (lr_changed or steps_changed):
        return
    before = run.optimizer.param_groups[0]["lr"]
    scheduler.base_lrs = [t.lr] * len(scheduler.base_lrs)
    for group, factor in zip(run.optimizer.param_groups, scheduler.lr_lambdas):  # the lambdas use the new max_steps
        group["initial_lr"] = t.lr
        group["lr"] = t.lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in run.optimizer.param_groups]
    nxt = run.step + 1
    if lr_changed:
        acc.print(f"train.lr: {saved_lr} in the checkpoint's run, {t.lr} from step {nxt} on (the rest of the "
                  f"schedule scales to it)")
    if steps_changed:
        acc.print(f"train.max_steps: {saved_max_steps} in the checkpoint's run, {t.max_steps} from step {nxt} on: "
                  f"the schedule is laid out over {t.max_steps} steps (step {nxt}'s lr {before:.4g} -> "
                  f"{run.optimizer.param_groups[0]['lr']:.4g})")
        for moved in _moved_stages(run.cfg, run.step, saved_max_steps):
            warnings.warn(f"train.max_steps {saved_max_steps} -> {t.max_steps}: {moved}")


def _moved_stages(cfg: Config, step: int, old_max_steps: int) -> list[str]:
    """The schedules (rollout.schedule, data.schedule) whose stage in force at `step` changes when their `start`
    fractions are laid out over the new train.max_steps instead of `old_max_steps`."""
    new, moved = cfg.train.max_steps, []
    if cfg.rollout.schedule:
        was, now = rollout_at(cfg.rollout, step, old_max_steps)[0], rollout_at(cfg.rollout, step, new)[0]
        if was != now:
            moved.append(f"rollout.schedule's stage {now} is in force from step {step + 1} on, where the checkpoint's "
                         f"run was in stage {was} (a `start` fraction moves with max_steps; `step: N` does not)")
    if cfg.data.schedule:
        was, now = (sum(step >= stage_step(s.start, m) for s in cfg.data.schedule) for m in (old_max_steps, new))
        if was != now:
            moved.append(f"data.schedule: {now} of its stages have started at step {step + 1}, {was} in the "
                         f"checkpoint's run (their `start` fractions move with max_steps)")
    return moved


def _truncate_logs(out: Path, step: int) -> None:
    """Drop the metrics and samples rows after `step`: a resumed run logs those steps again."""
    for name in ("metrics.jsonl", "samples.jsonl"):
        path = out / name
        if not path.exists():
            continue
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            path.write_text("".join(kept))


# ---------------------------------------------------------------- the loop
def log_metrics(run: Run, metrics: dict) -> None:
    if run.accelerator.is_main_process:
        with open(run.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": run.step, **metrics}) + "\n")
    if run.cfg.train.trackers:
        run.accelerator.log(metrics, step=run.step)


def train(run: Run) -> dict:
    """Steps until max_steps; validation, checkpoints and the NaN guard on the way. Returns the last metrics."""
    cfg = run.cfg.train
    bar = tqdm(total=cfg.max_steps, initial=run.step, disable=not (cfg.progress and run.accelerator.is_main_process))
    last: dict = {}
    while run.step < cfg.max_steps:
        metrics = train_step(run)
        run.step += 1
        due_eval = run.step == cfg.max_steps or (cfg.eval_every > 0 and run.step % cfg.eval_every == 0)
        if due_eval:
            metrics.update(validate(run))
        if due_eval or run.step % cfg.log_every == 0:
            log_metrics(run, metrics)
        last = metrics
        bar.update(1)
        bar.set_postfix(_bar_fields(metrics), refresh=False)
        if run.bad_steps >= cfg.max_bad_steps:
            path = save(run)
            raise TrainingDiverged(
                f"{run.bad_steps} steps in a row (up to step {run.step}) had a NaN or inf loss or gradient "
                f"(train.max_bad_steps={cfg.max_bad_steps}); stopped. Lower train.lr, set train.max_grad_norm or "
                f"check the data, then resume with train.resume=auto (or {path}).")
        if cfg.save_every and run.step % cfg.save_every == 0 and run.step < cfg.max_steps:
            save(run)
    bar.close()
    save(run)
    save_final(run)
    return last


def _bar_fields(metrics: dict) -> dict:
    fields = {"loss": f"{metrics['train/loss']:.3f}"}
    if "rollout/acceptance_rate" in metrics:
        fields["acc"] = f"{metrics['rollout/acceptance_rate']:.2f}"
    fields["tok/s"] = f"{metrics['throughput/tokens_per_s']:.0f}"
    return fields


def cleanup(run: Run) -> None:
    if run.cfg.train.trackers:
        run.accelerator.end_training()
    _forget_accelerate_settings()


def _forget_accelerate_settings() -> None:
    # accelerate keeps its settings process-wide; forget them (not the process group) so that a later run in this
    # process (the demo, a sweep, a notebook) may choose another train.mixed_precision.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def run_training(cfg: Config, sft: bool = False) -> dict:
    """setup -> train -> cleanup. The trained model is at <output_dir>/final."""
    try:
        run = setup(cfg, sft)
    except BaseException:  # a refused input (a used folder, a bad record) leaves no settings behind either
        _forget_accelerate_settings()
        raise
    try:
        return train(run)
    finally:
        cleanup(run)
