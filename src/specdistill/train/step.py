"""One optimizer step: plan the step's rollout, roll out each micro-batch, score it, backward, clip, update.

    step:  global batch (seeded, per-rank slice) -> rollout per micro-batch -> global token count
           -> loss_sum / count per micro-batch, backward -> clip -> optimizer step -> metrics

The teacher is frozen, in eval mode, and runs under no_grad on its own device. Its logits for the loss come from
the step's SKD rollouts where they kept them (rollout.fill_teacher_logits), else from one forward here.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from contextlib import nullcontext

import torch

from .. import losses
from ..config import rollout_at
from ..data.prompt_views import check_positions, collate, encode_example
from ..engine.prefix import shared_prefix
from ..engine.sampling import derive_seed
from ..models import max_positions
from ..rollout import RolloutBatch, RolloutPlan, fill_teacher_logits, make_rollout, rollout_metrics
from ..scoring import eval_mode, response_logits, top1_agreements
from .distributed import gathered_for_generation
from .state import TEACHER_LOSSES, TrainState


def encode(run: TrainState, records) -> list:
    """The records' examples, each encoded once per run: setup encodes every training and validation record, so
    that a record whose view cannot fit (or that leaves a model too few positions) stops the run before its first
    step, on every rank alike, and steps only look them up."""
    missing = [r for r in records if id(r) not in run.examples]
    for record, example in zip(missing, _encode_records(run, missing)):
        run.examples[id(record)] = example
    return [run.examples[id(r)] for r in records]


def _encode_records(run: TrainState, records) -> list:
    """Encode records; with run.view "teacher" (sft, sft_view=teacher) the trained model sees the teacher's view."""
    if not records:
        return []
    examples = [encode_example(r, run.tokenizer, run.cfg.data.views) for r in records]
    if run.view == "teacher":
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


def micro_loss(run: TrainState, rb: RolloutBatch, student=None) -> tuple[torch.Tensor, torch.Tensor | None]:
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


def teacher_in_own_dtype(run: TrainState) -> bool:
    """Whether the loss phase's teacher forward computes in the teacher's own dtype, as its rollout forwards do
    (which run outside autocast): without mixed precision, and for a teacher whose weights are in half precision
    (bf16, fp16), whose loss-phase forward then runs outside train.mixed_precision's autocast, which would only
    re-cast them (on a CPU a bf16 teacher's logits are bit-identical with and without it). An fp32 teacher under
    bf16/fp16 keeps autocast there: its loss-phase forward then runs in half precision, its rollout in fp32."""
    if run.cfg.train.mixed_precision == "no" or run.teacher is None:
        return True
    return next(run.teacher.parameters()).dtype in (torch.bfloat16, torch.float16)


def kept_logits_form(run: TrainState, settings):
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
def teacher_logits(run: TrainState, rb: RolloutBatch):
    """The teacher's logits predicting each response token of rb, on the teacher's device: the ones its rollout
    kept, with a teacher forward (scoring.response_logits) only for the rows that have none."""
    lc = run.cfg.loss
    sparse = functools.partial(losses.top_k_logits, k=lc.sparse_top_k, temperature=lc.temperature)
    return fill_teacher_logits(rb, lambda rows: teacher_forward(run, rb, rows), sparse)


def teacher_forward(run: TrainState, rb: RolloutBatch, rows) -> torch.Tensor:
    """The teacher's logits predicting the response tokens of rb's `rows` (a list, or slice(None) for all):
    [m, T, V] on the teacher's device. A half-precision teacher runs outside autocast, in its own dtype, as in its
    rollouts (teacher_in_own_dtype). With rollout.share_teacher_prefix in the step's plan (and the teacher in
    its own dtype: under autocast the rows would run in another dtype than the stored prefix), the prefix every
    row's view shares is encoded once and reused."""
    T, tdev = rb.response.shape[1], run.teacher_device
    ids, mask = rb.teacher_ids[rows].to(tdev), rb.teacher_mask[rows].to(tdev)
    run.loss_teacher_forwards += 1
    prefix = None
    own = teacher_in_own_dtype(run)
    with torch.autocast(tdev.type, enabled=False) if own else nullcontext():
        if run.plan.settings.share_teacher_prefix and own:
            P = rb.teacher_prompt_len
            prefix = shared_prefix(run.teacher, ids[:, :P], mask[:, :P])
        return response_logits(run.score_teacher, ids, mask, T, run.vocab, prefix=prefix)


def plan_step(run: TrainState) -> RolloutPlan:
    """The step's RolloutPlan: the stage of rollout.schedule in force at run.step, what its SKD rows keep of the
    teacher's logits, and the run's token ids. Under sft every row trains on its reference response."""
    stage, settings = rollout_at(run.cfg.rollout, run.step, run.cfg.train.max_steps)
    plan = RolloutPlan(settings, run.tokens, kept_logits_form(run, settings), stage)
    return plan.with_strategy("dataset") if run.sft else plan


def rollout_step(run: TrainState) -> list[RolloutBatch]:
    """This rank's micro-batches of the step's global batch, each rolled out with the step's plan, which it sets
    as run.plan for the step's loss phase."""
    run.plan = plan = plan_step(run)
    cfg, acc = run.cfg, run.accelerator
    bs, accum = cfg.train.batch_size, cfg.train.grad_accum
    groups = run.stream.next_batch(run.step, accum * acc.num_processes, bs)
    student = acc.unwrap_model(run.student)
    batches = []
    sampling_mode = eval_mode(student) if plan.generates else nullcontext()
    with gathered_for_generation(acc, run.student, enabled=plan.generates), sampling_mode:
        for i in range(accum):
            g = acc.process_index * accum + i  # this rank's i-th micro-batch in the global batch
            prompts = collate(encode(run, groups[g]), run.tokens.pad_id)
            # Rows draw their noise from (seed, step, global row index): independent of batch layout and rank.
            seeds = [derive_seed(cfg.train.seed, run.step, g * bs + r) for r in range(bs)]
            batches.append(make_rollout(plan, prompts, student, run.teacher, seeds))
    return batches


def train_step(run: TrainState) -> dict:
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
        metrics["rollout/stage"] = run.plan.stage
    metrics.update(_global_rollout_stats(run, batches))
    return metrics


def apply_update(run: TrainState, finite: bool) -> bool:
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


def _global_rollout_stats(run: TrainState, batches: list[RolloutBatch]) -> dict:
    """Rollout counters summed over micro-batches and ranks, and the rates formed from those sums."""
    acc = run.accelerator
    if acc.num_processes == 1:
        return rollout_metrics(batches)
    return rollout_metrics(batches, lambda t: acc.gather(t.to(run.device)).cpu())  # NCCL gathers device tensors

