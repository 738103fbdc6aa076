"""The training recipe on accelerate: setup / train / save / cleanup. SFT and every distillation method.

    step:  global batch (seeded, per-rank slice) -> rollout per micro-batch -> global token count
           -> loss_sum / count per micro-batch, backward -> clip -> optimizer step -> metrics

The student is the only trained model. The teacher is frozen, in eval mode, and runs under no_grad on its own
device. `specdistill sft` is this recipe with the `dataset` rollout and the `ce` loss, training one model on
the view chosen by `data.views.sft_view` (the built-in teachers learn on the teacher view, with knowledge).
"""

from __future__ import annotations

import inspect
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from . import checkpoint, losses
from .config import Config, save_config
from .data.mixture import MixtureStream
from .data.records import load_records
from .data.tasks import get_task
from .data.views import collate, encode_example
from .evaluate.quality import evaluate_records
from .models import check_same_tokenizer, check_vocab, load_model, load_tokenizer, position_ids_from_mask, resolve_device
from .rollout import RolloutBatch, dataset_rollout, make_rollout

TEACHER_LOSSES = {"fkl", "rkl", "jsd", "tvd", "skew_fkl", "skew_rkl", "hybrid", "rank"}


@dataclass
class Run:
    cfg: Config
    accelerator: Accelerator
    tokenizer: object
    student: torch.nn.Module
    teacher: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    stream: MixtureStream
    vocab: int
    sft: bool
    out: Path
    step: int = 0
    bad_steps: int = 0
    skipped_steps: int = 0
    validation: list = field(default_factory=list)


# ---------------------------------------------------------------- setup
def setup(cfg: Config, sft: bool = False) -> Run:
    """Models, data, optimizer and schedule; resume from a checkpoint when asked."""
    acc = Accelerator(
        gradient_accumulation_steps=1, mixed_precision=cfg.train.mixed_precision,
        log_with=cfg.train.trackers or None, project_dir=cfg.train.output_dir,
    )
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    set_seed(cfg.train.seed + acc.process_index)
    out = Path(cfg.train.output_dir)
    m = cfg.model
    tokenizer = load_tokenizer(m.tokenizer or m.student, m.trust_remote_code)
    student_device = resolve_device(m.student_device, "student") if m.student_device != "auto" else acc.device
    student = load_model(m.student, m.student_dtype, student_device, tokenizer, m.trust_remote_code, cfg.train.seed)
    student = _prepare_student(student, cfg)
    teacher = None
    if not sft and (cfg.loss.name in TEACHER_LOSSES or cfg.rollout.strategy in ("teacher", "skd")):
        teacher = _load_teacher(cfg, tokenizer, student_device)
    vocab = check_vocab(tokenizer, student=student, **({"teacher": teacher} if teacher is not None else {}))
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, cfg.train.warmup_steps, cfg.train.max_steps, min_lr_rate=cfg.train.min_lr_ratio)
    student, optimizer, scheduler = acc.prepare(student, optimizer, scheduler)
    datasets = [load_records(d, cfg.data.seed) for d in cfg.data.train]
    stream = MixtureStream(datasets, [d.weight for d in cfg.data.train], cfg.data.schedule, cfg.train.max_steps, cfg.train.seed)
    run = Run(cfg, acc, tokenizer, student, teacher, optimizer, scheduler, stream, vocab, sft, out)
    if cfg.data.validation is not None:
        run.validation = load_records(cfg.data.validation, cfg.data.seed)[: cfg.train.eval_samples]
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    if cfg.train.trackers:
        acc.init_trackers(out.name, config=_flat(cfg))
    _maybe_resume(run)
    return run


def _prepare_student(student, cfg: Config):
    if cfg.model.gradient_checkpointing:
        student.gradient_checkpointing_enable()
        student.config.use_cache = False
    if cfg.model.lora.enabled:
        from peft import LoraConfig as PeftLora, get_peft_model

        lc = cfg.model.lora
        student = get_peft_model(student, PeftLora(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                   target_modules=lc.target_modules, task_type="CAUSAL_LM"))
    student.train()
    return student


def _load_teacher(cfg: Config, tokenizer, student_device):
    m = cfg.model
    if not m.teacher:
        raise ValueError(f"loss {cfg.loss.name!r} / rollout {cfg.rollout.strategy!r} needs a teacher: set model.teacher")
    if m.teacher_device == "auto":
        device = student_device
    else:
        device = resolve_device(m.teacher_device, "teacher")
    teacher = load_model(m.teacher, m.teacher_dtype, device, tokenizer, m.trust_remote_code, cfg.train.seed + 1)
    if not m.tokenizer:  # each model's own tokenizer must match the shared one
        from .models import is_preset

        if not is_preset(m.teacher) or m.teacher == "builtin-teacher":
            check_same_tokenizer(load_tokenizer(m.teacher, m.trust_remote_code), tokenizer)
    teacher.eval().requires_grad_(False)
    return teacher


def _flat(cfg) -> dict:
    import dataclasses

    flat = {}
    for section, values in dataclasses.asdict(cfg).items():
        for k, v in values.items():
            flat[f"{section}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


# ---------------------------------------------------------------- one step
def encode(run: Run, records) -> list:
    """Encode records; under `sft` with sft_view=teacher the trained model sees the teacher's view."""
    examples = [encode_example(r, run.tokenizer, run.cfg.data.views) for r in records]
    if run.sft and run.cfg.data.views.sft_view == "teacher":
        for e in examples:
            e.student_prompt = e.teacher_prompt
    return examples


def response_logits(model, ids, mask, prompt_len: int, length: int, vocab: int) -> torch.Tensor:
    """Logits predicting the response tokens: [B, P + T] ids -> [B, T, V].

    The logits that predict response token j sit at column P + j - 1, so the first response token (predicted
    from the last prompt position) is included. Only the last T + 1 positions are projected to the vocabulary.
    """
    out = model(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask),
                logits_to_keep=length + 1, use_cache=False)
    return out.logits[:, :length, :vocab]


def loss_params(lc) -> dict:
    """The LossConfig fields that the configured loss function takes (temperature, beta, top_k, ...)."""
    sig = inspect.signature(losses.LOSSES[lc.name]).parameters
    return {k: getattr(lc, k) for k, p in sig.items() if p.kind is p.KEYWORD_ONLY and hasattr(lc, k)}


def micro_loss(run: Run, rb: RolloutBatch) -> torch.Tensor:
    """Summed loss over the response tokens of one micro-batch (a scalar with grad)."""
    lc, T = run.cfg.loss, rb.response.shape[1]
    dev = run.accelerator.device
    s_logits = response_logits(run.student, rb.student_ids.to(dev), rb.student_mask.to(dev), rb.student_prompt_len, T, run.vocab)
    t_logits = None
    if lc.name in TEACHER_LOSSES:
        tdev = next(run.teacher.parameters()).device
        with torch.no_grad():
            t_logits = response_logits(run.teacher, rb.teacher_ids.to(tdev), rb.teacher_mask.to(tdev),
                                       rb.teacher_prompt_len, T, run.vocab).to(dev)
    loss_sum, _ = losses.compute(lc.name, s_logits, t_logits, rb.response_mask.to(dev), labels=rb.response.to(dev),
                                 **loss_params(lc))
    return loss_sum


def rollout_step(run: Run) -> list[RolloutBatch]:
    """This rank's micro-batches of the step's global batch, each rolled out."""
    cfg, acc = run.cfg, run.accelerator
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum
    groups = run.stream.next_batch(run.step, accum * acc.num_processes, bs)
    batches = []
    for i in range(accum):
        g = acc.process_index * accum + i  # this rank's i-th micro-batch in the global batch
        prompts = collate(encode(run, groups[g]), run.tokenizer.pad_token_id)
        # Rows draw their noise from (seed, step, global row index): independent of batch layout and rank.
        seeds = [row_seed(cfg.train.seed, run.step, g * bs + r) for r in range(bs)]
        if run.sft:
            batches.append(dataset_rollout(prompts, run.tokenizer.pad_token_id))
        else:
            batches.append(make_rollout(cfg.rollout, prompts, acc.unwrap_model(run.student), run.teacher, run.tokenizer, seeds))
    return batches


def row_seed(seed: int, step: int, row: int) -> int:
    """A 31-bit seed for one sequence of one step, from (run seed, step, global row index)."""
    return int(np.random.SeedSequence([seed, step, row]).generate_state(1)[0] >> 1)


def train_step(run: Run) -> dict:
    """One optimizer step; returns the step's global metrics."""
    acc, cfg = run.accelerator, run.cfg
    t0 = time.perf_counter()
    batches = rollout_step(run)
    t_rollout = time.perf_counter() - t0
    count = losses.global_token_count([b.response_mask for b in batches], acc)
    total = torch.zeros((), device=acc.device)
    for i, rb in enumerate(batches):
        last = i == len(batches) - 1
        with acc.autocast(), (acc.no_sync(run.student) if not last else nullcontext()):
            loss_sum = micro_loss(run, rb)
            acc.backward(losses.micro_batch_loss(loss_sum, count, acc.num_processes))
        total += loss_sum.detach()
    total = acc.reduce(total, reduction="sum")
    finite = bool(torch.isfinite(total))
    grad_norm = acc.clip_grad_norm_(run.student.parameters(), cfg.train.max_grad_norm) if finite else torch.tensor(float("nan"))
    if finite:
        run.optimizer.step()
        run.bad_steps = 0
    else:
        run.bad_steps += 1
        run.skipped_steps += 1
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - t0
    n = float(count)
    metrics = {
        "train/loss": float(total) / max(n, 1.0), "train/lr": run.scheduler.get_last_lr()[0],
        "train/grad_norm": float(grad_norm), "train/skipped_steps": run.skipped_steps,
        "tokens/trained": n, "time/rollout_s": t_rollout, "time/loss_s": elapsed - t_rollout,
        "throughput/tokens_per_s": n / elapsed,
    }
    metrics.update(_global_rollout_stats(acc, batches))
    return metrics


def _global_rollout_stats(acc, batches: list[RolloutBatch]) -> dict:
    """Sum the rollouts' counters over micro-batches and ranks, then form the rates from the sums."""
    keys = sorted({k for b in batches for k, v in b.stats.items() if k.startswith(("tokens/", "count/"))})
    if not keys:
        return {}
    sums = torch.tensor([[float(b.stats.get(k, 0.0)) for k in keys] for b in batches]).sum(0).to(acc.device)
    sums = acc.reduce(sums, reduction="sum")
    out = {k: float(v) for k, v in zip(keys, sums) if k.startswith("tokens/")}
    from .rollout import rates_from_counts

    out.update(rates_from_counts(dict(zip(keys, sums.tolist()))))
    return out


# ---------------------------------------------------------------- validation, saving, the loop
@torch.no_grad()
def validate(run: Run) -> dict:
    """val/loss on the validation records' reference responses, and the task metric on greedy answers."""
    if not run.validation:
        return {}
    acc, cfg = run.accelerator, run.cfg
    student = acc.unwrap_model(run.student)
    student.eval()
    metrics = {}
    examples = encode(run, run.validation)
    if all(e.response is not None for e in examples):
        total, count = 0.0, 0
        for i in range(0, len(examples), cfg.train.batch_size):
            rb = dataset_rollout(collate(examples[i : i + cfg.train.batch_size], run.tokenizer.pad_token_id), run.tokenizer.pad_token_id)
            total += float(micro_loss(run, rb))
            count += rb.num_tokens
        metrics["val/loss"] = total / max(count, 1)
    task = cfg.data.validation.task
    if task is not None:
        view = "teacher" if run.sft and cfg.data.views.sft_view == "teacher" else "student"
        result = evaluate_records(student, run.tokenizer, run.validation, cfg.data.views, get_task(task).scorer,
                                  view, max_new_tokens=cfg.rollout.max_new_tokens, batch_size=cfg.train.batch_size)
        metrics[f"val/{get_task(task).metric}"] = result["exact_match"]
        if acc.is_main_process:
            with open(run.out / "samples.jsonl", "a") as fh:
                for sample in result["samples"][:4]:
                    fh.write(json.dumps({"step": run.step, **sample}) + "\n")
    student.train()
    return metrics


def save_model(run: Run, path: Path) -> None:
    """The student (merged LoRA when used) and the tokenizer as a Hugging Face folder."""
    model = run.accelerator.unwrap_model(run.student)
    if run.cfg.model.lora.enabled:  # a plain folder that from_pretrained / assistant_model= / vLLM load as-is
        model = _merged_copy(model)
    model.save_pretrained(path, safe_serialization=True)
    run.tokenizer.save_pretrained(path)


def _merged_copy(peft_model):
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()


def save(run: Run) -> Path:
    acc = run.accelerator
    state = {"cursor": run.stream.state_dict()["cursor"], "bad_steps": run.bad_steps, "skipped_steps": run.skipped_steps}
    return checkpoint.save_checkpoint(
        run.out, run.step, lambda p: save_model(run, p), run.optimizer, run.scheduler, state,
        acc.process_index, acc.is_main_process, acc.wait_for_everyone, run.cfg.train.keep_last)


def _maybe_resume(run: Run) -> None:
    path = checkpoint.resolve_resume(run.cfg.train.resume, run.out)
    if path is None:
        return
    from safetensors.torch import load_file

    model = run.accelerator.unwrap_model(run.student)
    weights = {}
    for f in sorted((path / "model").glob("*.safetensors")):
        weights.update(load_file(str(f)))
    if run.cfg.model.lora.enabled:
        raise NotImplementedError("resuming a LoRA run is not supported yet; start from the merged checkpoint model")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ValueError(f"checkpoint {path} does not match the student: missing {missing[:5]}, unexpected {unexpected[:5]}")
    state = checkpoint.load_checkpoint(path, run.optimizer, run.scheduler, run.accelerator.process_index)
    run.step, run.bad_steps, run.skipped_steps = state["step"], state["bad_steps"], state["skipped_steps"]
    run.stream.load_state_dict(state)
    run.accelerator.print(f"resumed from {path} at step {run.step}")


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
        if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < cfg.max_steps:
            metrics.update(validate(run))
        if run.step % cfg.log_every == 0 or run.step == cfg.max_steps:
            log_metrics(run, metrics)
        last = metrics
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", acc=f"{metrics.get('rollout/acceptance_rate', float('nan')):.2f}",
                        tok_s=f"{metrics['throughput/tokens_per_s']:.0f}")
        if run.bad_steps >= cfg.max_bad_steps:
            path = save(run)
            raise FloatingPointError(
                f"{run.bad_steps} steps in a row had a NaN or inf loss (step {run.step}); stopped. Lower train.lr or "
                f"check the data, then resume from {path} with train.resume={path}")
        if cfg.save_every and run.step % cfg.save_every == 0 and run.step < cfg.max_steps:
            save(run)
    bar.close()
    final = validate(run)
    if final:
        log_metrics(run, final)
        last.update(final)
    save(run)
    if run.accelerator.is_main_process:
        save_model(run, run.out / "final")
    run.accelerator.wait_for_everyone()
    return last


def cleanup(run: Run) -> None:
    if run.cfg.train.trackers:
        run.accelerator.end_training()


def run_training(cfg: Config, sft: bool = False) -> dict:
    """setup -> train -> cleanup. The trained model is at <output_dir>/final."""
    run = setup(cfg, sft)
    try:
        return train(run)
    finally:
        cleanup(run)
