"""The training recipe on accelerate: setup / train / validate / save / cleanup. SFT and every distillation method.

    train_student(cfg) = setup -> train (train_step per step: step.py; validate, save on the way) -> cleanup

The student is the only trained model. The teacher is frozen, in eval mode, and runs under no_grad on its own
device. `specdistill sft` is this recipe with the `dataset` rollout and the `ce` loss, training one model on
the view chosen by `data.views.sft_view` (the built-in teachers learn on the teacher view, with knowledge).

Devices: the student lives on accelerate's device (cuda:<local rank>, or cpu) unless `model.student_device`
says otherwise; the teacher on the student's device unless `model.teacher_device` says otherwise (distributed.py).
Processes and backends (DDP, FSDP, DeepSpeed) come from `accelerate launch` (configs/accelerate/, docs/training.md).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from .. import checkpoint
from ..config import Config, ConfigError, rollout_stages
from ..data.mixture import MixtureStream
from ..data.records import load_records
from ..data.tasks import check_config_tasks, get_task
from ..data.prompt_views import check_encodable, collate, record_texts
from ..engine.compiling import compiled_model
from ..engine.sampling import float_dtype
from ..evaluate.quality import evaluate_records
from ..errors import UserError
from ..models import check_device, check_model_spec, check_same_tokenizer, check_vocab, load_model, load_tokenizer
from ..rollout import dataset_rollout, rollout_sources, rollout_tokens
from ..scoring import eval_mode
from .distributed import (check_launch, configure_deepspeed, forget_accelerate_settings, gathered_for_generation,
                          optimizer_sharded, params_sharded, prepare, student_device, teacher_device)
from .logs import SAMPLES_LOGGED, bar_fields, check_trackers, log_metrics, log_samples, progress_bar, start_logs
from .resume import restore_state
from .state import TEACHER_LOSSES, TrainingDiverged, TrainState
from .step import encode, micro_loss, plan_step, train_step
from .student import load_student_weights, save_final, write_student


# ---------------------------------------------------------------- setup
def setup(cfg: Config, sft: bool = False) -> TrainState:
    """Models, data, optimizer and schedule; resume from a checkpoint when asked (train.resume, $RESUME_CHECKPOINT).
    sft (`specdistill sft`) is resolved here, once: no teacher, the trained view (run.view), the dataset rollout."""
    teacher_needed = needs_teacher(cfg, sft)
    check_trackers(cfg.train.trackers)
    check_settings(cfg)
    _check_models(cfg, teacher_needed)
    acc = Accelerator(
        gradient_accumulation_steps=1,  # micro-batches are accumulated by train_step, normalised by token count
        mixed_precision=cfg.train.mixed_precision, log_with=cfg.train.trackers or None,
        project_dir=cfg.train.output_dir,
    )
    check_launch(acc)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out = Path(cfg.train.output_dir)
    resume = checkpoint.resolve_resume(cfg.train.resume, out)
    _claim_output(acc, cfg, out, resume)
    device = student_device(acc, cfg.model.student_device)
    tokenizer, student, teacher, t_device = _load_models(cfg, acc, device, resume, teacher_needed)
    vocab = check_vocab(tokenizer, student=student, **({"teacher": teacher} if teacher is not None else {}))
    tokens = rollout_tokens(tokenizer, student, teacher)  # before prepare: the models' own generation configs
    set_seed(cfg.train.seed + acc.process_index)  # after the models, which seed their own initialisation
    optimizer, scheduler = build_optimizer(student, cfg)
    configure_deepspeed(acc, cfg)
    student, optimizer = prepare(acc, student, optimizer, device)
    records, validation, stream = _load_data(cfg, tokenizer)
    view = "teacher" if sft and cfg.data.views.sft_view == "teacher" else "student"
    run = TrainState(cfg, acc, tokenizer, student, teacher, optimizer, scheduler, stream, vocab, sft, out, device,
                     tokens, view, t_device)
    run.validation = validation[: cfg.train.eval_samples]
    run.max_steps_history = [[0, cfg.train.max_steps]]
    encode(run, records + run.validation)  # every record fits, or the run stops here
    run.score_student, run.score_teacher = _scorers(run)
    if resume is not None:
        restore_state(run, resume)
    start_logs(run)
    return run


def _load_models(cfg: Config, acc: Accelerator, device: torch.device, resume: Path | None, teacher_needed: bool):
    """(tokenizer, student, teacher or None, the teacher's device or None): the student on `device`, with its
    checkpoint's weights when resuming, LoRA and gradient checkpointing as configured; not yet prepared."""
    m = cfg.model
    tokenizer = load_tokenizer(m.tokenizer or m.student, m.trust_remote_code)
    if teacher_needed and not m.tokenizer:  # before any model loads: ids must mean the same
        check_same_tokenizer(load_tokenizer(m.teacher, m.trust_remote_code), tokenizer,
                             names=(f"model.teacher={m.teacher}", f"model.student={m.student}"))
    student = load_model(m.student, m.student_dtype, device, tokenizer, m.trust_remote_code, cfg.train.seed)
    _warn_half_precision_weights(student, cfg)
    student = _prepare_student(student, cfg)
    if resume is not None:  # into the plain model, before FSDP/DeepSpeed shard it
        load_student_weights(student, resume, m.lora.enabled)
    if not teacher_needed:
        return tokenizer, student, None, None
    t_device = teacher_device(acc, m.teacher_device, device)
    return tokenizer, student, _load_teacher(cfg, tokenizer, t_device), t_device


def _load_data(cfg: Config, tokenizer) -> tuple[list, list, MixtureStream]:
    """(every training record, the validation records, the mixture stream over the training datasets); every
    record's text must be encodable by the tokenizer."""
    datasets = [load_records(d, cfg.data.seed) for d in cfg.data.train]
    validation = load_records(cfg.data.validation, cfg.data.seed) if cfg.data.validation is not None else []
    records = [r for d in datasets for r in d]
    check_encodable(record_texts(records + validation, cfg.data.views), tokenizer,
                    f"the tokenizer of {cfg.model.tokenizer or cfg.model.student}")
    stream = MixtureStream(datasets, [d.weight for d in cfg.data.train], cfg.data.schedule, cfg.train.max_steps,
                           cfg.train.seed)
    return records, validation, stream


def check_settings(cfg: Config, source="config") -> None:
    """What config.validate leaves to the layers that know the values: the devices (models.check_device) and the
    built-in task names (data.tasks). source: the config file, named first as load_config's errors are."""
    try:
        check_device(cfg.model.student_device, "model.student_device")
        check_device(cfg.model.teacher_device, "model.teacher_device")
    except UserError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    check_config_tasks(cfg.data, source)


def _check_models(cfg: Config, teacher_needed: bool) -> None:
    """Every model the run loads must be able to load: checked before anything else (models.check_model_spec).
    A warmup as long as the run is warned of (config.validate refuses only one that trains nothing)."""
    m = cfg.model
    check_model_spec(m.student, "model.student")
    if m.tokenizer:
        check_model_spec(m.tokenizer, "model.tokenizer", need_config=False)
    if teacher_needed:
        if not m.teacher:
            raise ConfigError(f"loss {cfg.loss.name!r} / rollout {cfg.rollout.strategy!r} needs a teacher: "
                              f"set model.teacher")
        check_model_spec(m.teacher, "model.teacher")
    t = cfg.train
    if t.warmup_steps >= t.max_steps:
        warnings.warn(f"train.warmup_steps={t.warmup_steps} >= train.max_steps={t.max_steps}: the run ends inside its "
                      f"warmup, its last step at {(t.max_steps - 1) / t.warmup_steps:.0%} of train.lr")


def resolved_config(cfg: Config) -> dict:
    """The resolved config as plain JSON values: what a checkpoint records and a resume compares."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _claim_output(acc: Accelerator, cfg: Config, out: Path, resume: Path | None) -> None:
    """Refuse to overwrite or adopt another run's files (checkpoint.check_run_folder): every rank checks before any
    rank writes; with train.overwrite the main process then removes the earlier run's files."""
    auto = (os.environ.get("RESUME_CHECKPOINT") or cfg.train.resume) == "auto"
    replaced = checkpoint.check_run_folder(out, resume, resolved_config(cfg), auto, cfg.train.overwrite)
    acc.wait_for_everyone()
    if replaced and acc.is_main_process:
        acc.print(f"train.overwrite: removing the earlier run's {', '.join(p.name for p in replaced)} from {out}")
        checkpoint.remove_run_files(replaced)
    acc.wait_for_everyone()


def _scorers(run: TrainState) -> tuple:
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
    """The frozen teacher on `device`, in eval mode (_check_models has made sure model.teacher is set)."""
    m = cfg.model
    teacher = load_model(m.teacher, m.teacher_dtype, device, tokenizer, m.trust_remote_code, cfg.train.seed + 1)
    teacher.eval().requires_grad_(False)
    return teacher


# ---------------------------------------------------------------- the loop
def train(run: TrainState) -> dict:
    """Steps until max_steps; validation, checkpoints and the NaN guard on the way. Returns the last metrics."""
    cfg = run.cfg.train
    bar = progress_bar(run)
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
        bar.set_postfix(bar_fields(metrics), refresh=False)
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


# ---------------------------------------------------------------- validation
@torch.no_grad()
def validate(run: TrainState) -> dict:
    """val/loss on the validation records' reference responses, and the task metric on greedy answers.

    With full parameters on every rank the records are split over the ranks and the sums reduced; with sharded
    parameters every rank scores them all (its forwards are collectives). The training RNG is left untouched.
    The loss phase's teacher forwards run with the plan of the step reached (run.step, as in its train_step)."""
    if not run.validation:
        return {}
    acc, cfg = run.accelerator, run.cfg
    run.plan = plan_step(run)
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
            rb = dataset_rollout(collate(examples[i : i + cfg.train.batch_size], run.tokens.pad_id), run.tokens.pad_id)
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
                log_samples(run, result["samples"][:SAMPLES_LOGGED])
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


def _greedy_answers(run: TrainState, student, records, task) -> dict:
    """Greedy answers to validation records, as `evaluate_records` returns them. A task scores every record
    (exact_match); a file dataset has no scorer, so only the records whose samples are logged are answered."""
    cfg = run.cfg
    if task is None:
        records = records[:SAMPLES_LOGGED]
    return evaluate_records(student, run.tokenizer, records, cfg.data.views, task and task.scorer, run.view,
                            max_new_tokens=cfg.rollout.max_new_tokens, batch_size=cfg.train.batch_size,
                            metrics=("exact_match",) if task is not None else (), answers=True)


# ---------------------------------------------------------------- saving
def save(run: TrainState) -> Path:
    """A checkpoint of the current step in <output_dir>/checkpoints (atomic; the last train.keep_last are kept)."""
    acc = run.accelerator
    state = {"cursor": run.stream.state_dict()["cursor"], "bad_steps": run.bad_steps,
             "skipped_steps": run.skipped_steps, "config": resolved_config(run.cfg),  # resume checks the config
             "max_steps_history": run.max_steps_history}
    return checkpoint.save_checkpoint(
        run.out, run.step, lambda folder: write_student(run, folder), run.optimizer, run.scheduler, state,
        acc.process_index, acc.is_main_process, acc.wait_for_everyone, run.cfg.train.keep_last,
        sharded_optimizer=optimizer_sharded(acc))


# ---------------------------------------------------------------- cleanup
def cleanup(run: TrainState) -> None:
    """The trackers closed, and accelerate's process-wide settings forgotten (the process group is kept)."""
    if run.cfg.train.trackers:
        run.accelerator.end_training()
    forget_accelerate_settings()


def train_student(cfg: Config, sft: bool = False) -> dict:
    """setup -> train -> cleanup; returns the last step's metrics. The trained model is at <output_dir>/final."""
    try:
        run = setup(cfg, sft)
    except BaseException:  # a refused input (a used folder, a bad record) leaves no settings behind either
        forget_accelerate_settings()
        raise
    try:
        return train(run)
    finally:
        cleanup(run)

