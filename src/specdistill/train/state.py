"""A training run's state (TrainState): what setup builds and every phase of the recipe reads and updates."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from ..config import Config
from ..data.mixture import MixtureStream
from ..rollout import RolloutPlan, RolloutTokens

TEACHER_LOSSES = {"fkl", "rkl", "jsd", "tvd", "skew_fkl", "skew_rkl", "hybrid", "rank"}


class TrainingDiverged(FloatingPointError):
    """train.max_bad_steps steps in a row had a NaN or inf loss or gradient; a resumable checkpoint was saved."""


@dataclass
class TrainState:
    """One run of the recipe. sft: `specdistill sft` (the dataset rollout, no teacher); view: the view the
    trained model reads, "student", or "teacher" under sft with data.views.sft_view=teacher."""

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
    tokens: RolloutTokens  # the ids rollouts end rows at and pad with
    view: str = "student"
    teacher_device: torch.device | None = None
    step: int = 0  # optimizer steps done (skipped ones included)
    plan: RolloutPlan | None = None  # what this step's rollouts and loss-phase teacher forwards run with
    bad_steps: int = 0  # NaN/inf steps in a row
    skipped_steps: int = 0  # NaN/inf steps in all
    validation: list = field(default_factory=list)
    examples: dict = field(default_factory=dict)  # id(record) -> its Example (train.encode)
    score_student: object = None  # what micro_loss calls: the student, or with train.compile its compiled caller
    score_teacher: object = None  # likewise for the teacher
    loss_teacher_forwards: int = 0  # teacher forwards run by the loss phase (0 when rollouts kept the logits)
    max_steps_history: list = field(default_factory=list)  # [[step, train.max_steps in force from it on], ...]
