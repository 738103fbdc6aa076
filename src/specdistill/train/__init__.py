"""Training (layer 7): the recipe (setup / train / validate / save / cleanup) and the libraries it runs on.

    recipe.py       setup, train, validate, save, cleanup; train_student runs them in order
    step.py         one optimizer step: the step's rollout plan, rollouts, the loss phase, the update
    state.py        TrainState, what every phase reads and updates
    distributed.py  launch checks, devices, DeepSpeed's settings, sharding, gathering for generation
    student.py      the student's folders: final/, a checkpoint's model/ and adapter/, and loading them back
    resume.py       a checkpoint's state back into the run, a changed lr / max_steps applied
    logs.py         config.yaml, metrics.jsonl, samples.jsonl, trackers, the progress bar
"""

from .distributed import gathered_for_generation, optimizer_sharded, params_sharded, student_device, teacher_device
from .logs import SAMPLES_LOGGED
from .recipe import (build_optimizer, check_settings, cleanup, needs_teacher, resolved_config, save, setup, train, train_student,
                     validate, warmup_cosine)
from .state import TEACHER_LOSSES, TrainingDiverged, TrainState
from .step import (encode, kept_logits_form, loss_params, micro_loss, plan_step, rollout_step, teacher_in_own_dtype,
                   teacher_logits, train_step)
from .student import save_final, save_model, write_student

__all__ = [
    "SAMPLES_LOGGED",
    "TEACHER_LOSSES",
    "TrainState",
    "TrainingDiverged",
    "build_optimizer",
    "check_settings",
    "cleanup",
    "encode",
    "gathered_for_generation",
    "kept_logits_form",
    "loss_params",
    "micro_loss",
    "needs_teacher",
    "optimizer_sharded",
    "params_sharded",
    "plan_step",
    "resolved_config",
    "rollout_step",
    "save",
    "save_final",
    "save_model",
    "setup",
    "student_device",
    "teacher_device",
    "teacher_in_own_dtype",
    "teacher_logits",
    "train",
    "train_step",
    "train_student",
    "validate",
    "warmup_cosine",
    "write_student",
]
