"""The launch's backends for the recipe: launch checks, devices, DeepSpeed's settings, sharding, gathering.

Processes and backends (DDP, FSDP, DeepSpeed) come from `accelerate launch` (configs/accelerate/,
docs/training.md). The student lives on accelerate's device unless `model.student_device` says otherwise;
"paired" puts rank r's student on cuda:2r and its teacher on cuda:2r+1.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType

from ..config import Config, ConfigError
from ..models import resolve_device


def check_launch(acc: Accelerator) -> None:
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


def prepare(acc: Accelerator, student, optimizer, device: torch.device):
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


def configure_deepspeed(acc: Accelerator, cfg: Config) -> None:
    """DeepSpeed wants the micro-batch size, which accelerate reads from a dataloader; this recipe has none.
    Its gradient_accumulation_steps stays 1: train_step marks the last micro-batch as the boundary itself."""
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if acc.distributed_type == DistributedType.DEEPSPEED and plugin is not None:
        if plugin.is_auto("train_micro_batch_size_per_gpu"):
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.train.batch_size


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


def forget_accelerate_settings() -> None:
    # accelerate keeps its settings process-wide; forget them (not the process group) so that a later run in this
    # process (the demo, a sweep, a notebook) may choose another train.mixed_precision.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()

