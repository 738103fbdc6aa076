"""The training recipe: exact resume, LoRA, the NaN guard, the frozen teacher, devices, trackers, gathering.

Tiny models (the `tiny-student` preset, `tiny-teacher` with random weights), a few steps of batch 4, short
responses: every test here runs in seconds on one CPU thread.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from specdistill import checkpoint, train
from specdistill.config import Config, ConfigError, build, validate
from specdistill.models import load_model, load_tokenizer
from specdistill.rollout import dataset_rollout

UNTIMED = ("time/", "throughput/")  # wall-clock metrics differ between runs by nature


def make_config(out: Path, teacher: str | None = None, loss: str = "ce", validation: bool = True,
                **train_overrides) -> Config:
    """A tiny run: the tiny-student preset on 64 arith records, 4 steps of 2 micro-batches of 4 sequences."""
    data = {
        "model": {"student": "tiny-student", "teacher": teacher},
        "data": {"train": [{"task": "arith", "limit": 64}],
                 "validation": {"task": "arith", "split": "validation"} if validation else None,
                 "views": {"max_response_tokens": 24}},
        "rollout": {"max_new_tokens": 6},
        "loss": {"name": loss},
        "train": {"output_dir": str(out), "max_steps": 4, "batch_size": 4, "grad_accum": 2, "lr": 3e-3,
                  "warmup_steps": 1, "eval_every": 2, "eval_samples": 4, "save_every": 2, "keep_last": 3,
                  "progress": False, **train_overrides},
    }
    cfg = build(Config, data)
    validate(cfg)
    return cfg


def read_rows(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in rows}
    assert len(by_step) == len(rows), "a step was logged twice"
    return by_step


def assert_rows_match(a: dict, b: dict, tol: float = 1e-6) -> None:
    keys = {k for k in a if not k.startswith(UNTIMED)}
    assert keys == {k for k in b if not k.startswith(UNTIMED)}
    for k in keys:
        assert math.isclose(a[k], b[k], rel_tol=tol, abs_tol=tol), (k, a[k], b[k])


def assert_same_weights(a: Path, b: Path, tol: float = 1e-6) -> None:
    wa, wb = checkpoint.read_safetensors(a), checkpoint.read_safetensors(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=tol)


# ---------------------------------------------------------------- exact resume
@pytest.mark.parametrize("method", ["sft", "kd"])
def test_resume_continues_exactly_as_the_uninterrupted_run(tmp_path, method):
    """2N steps in one run == N steps, a resume from the step-N checkpoint in a fresh process state, N more:
    every logged metric (validation included, grad_accum=2) and the final weights agree to 1e-6."""
    kd = dict(teacher="tiny-teacher", loss="jsd") if method == "kd" else {}
    sft = method == "sft"
    full = train.train_student(make_config(tmp_path / "full", **kd), sft=sft)
    ref = read_rows(tmp_path / "full")
    assert sorted(ref) == [1, 2, 3, 4] and "val/loss" in ref[2] and "val/exact_match" in ref[4]
    assert ref[4]["train/loss"] == full["train/loss"]
    half = checkpoint.list_checkpoints(tmp_path / "full")[0]
    assert half.name == "step-00000002"

    resumed = make_config(tmp_path / "resumed", **kd, resume=str(half))
    train.train_student(resumed, sft=sft)
    rows = read_rows(tmp_path / "resumed")
    assert sorted(rows) == [3, 4]
    for step in (3, 4):
        assert_rows_match(ref[step], rows[step])
    assert_same_weights(tmp_path / "full" / "final", tmp_path / "resumed" / "final")


def test_resume_of_a_pair_whose_embeddings_are_padded_differently(tmp_path):
    """The qwen2.5 fixture pair: the teacher has 2,048 embedding rows, the student 2,016 (2,000 ids). Checkpoints
    keep the student's own 2,016 rows, so a resume loads them; only final/ is padded to the teacher's 2,048 (the
    draft folder). Resumed from step 1, step 2 equals the uninterrupted run's step 2: its row and the weights."""
    from families import STUDENT_ROWS, TEACHER_ROWS, get_family

    fam = get_family("qwen2.5")

    def config(out, **overrides):
        cfg = make_config(out, teacher=str(fam.teacher), loss="fkl", validation=False, max_steps=2, save_every=1,
                          batch_size=2, grad_accum=1, warmup_steps=0, **overrides)
        cfg.model.student = str(fam.student)
        return cfg

    train.train_student(config(tmp_path / "full"))
    first, second = checkpoint.list_checkpoints(tmp_path / "full")
    for ckpt in (first, second):
        assert load_file(ckpt / "model" / "model.safetensors")["model.embed_tokens.weight"].shape[0] == STUDENT_ROWS
    train.train_student(config(tmp_path / "resumed", resume=str(first)))
    assert sorted(read_rows(tmp_path / "resumed")) == [2]
    assert_rows_match(read_rows(tmp_path / "full")[2], read_rows(tmp_path / "resumed")[2])
    assert_same_weights(second / "model", checkpoint.list_checkpoints(tmp_path / "resumed")[-1] / "model")
    assert_same_weights(tmp_path / "full" / "final", tmp_path / "resumed" / "final")
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "resumed" / "final")
    assert final.config.vocab_size == TEACHER_ROWS == final.get_input_embeddings().weight.shape[0]
    head = final.get_output_embeddings().weight
    assert head.shape[0] == TEACHER_ROWS and torch.count_nonzero(head[STUDENT_ROWS:]) == 0
    trained = checkpoint.read_safetensors(second / "model")["lm_head.weight"]
    torch.testing.assert_close(head[:STUDENT_ROWS], trained, rtol=0, atol=0)  # the padding adds zero rows only
    # A checkpoint that an earlier version padded to the teacher's rows loads back: its zero rows are cut.
    student = AutoModelForCausalLM.from_pretrained(fam.student)
    checkpoint.load_model_weights(student, tmp_path / "resumed" / "final")
    assert_state_equals(student, checkpoint.read_safetensors(second / "model"))
    head.data[STUDENT_ROWS] = 1.0  # a padded row that holds something is not padding: refused
    final.save_pretrained(tmp_path / "not-padding")
    with pytest.raises(ValueError, match="other shapes"):
        checkpoint.load_model_weights(student, tmp_path / "not-padding")


def test_a_resume_may_raise_max_steps_and_the_schedule_goes_on_over_the_new_count(tmp_path, capsys):
    """2 steps with max_steps=2, then the same run resumed with max_steps=4: steps 3 and 4 run at the rate that a
    warmup of 1 step and a cosine to 0.1 x lr over 4 steps give, by hand: lr (0.1 + 0.9 (1 + cos(pi (s - 1) / 3)) / 2)
    at the 0-based step s = 2, 3. With warmup_steps=1 the 2-step and the 4-step schedules agree on steps 1 and 2
    (0, then lr), so the extended run equals an uninterrupted 4-step run, row for row and weight for weight. The
    change is recorded (state.json's max_steps_history, config.yaml); going below the checkpoint's step is not."""
    lr = 3e-3

    def config(out, max_steps, **overrides):
        return make_config(out, teacher="tiny-teacher", loss="jsd", validation=False, max_steps=max_steps,
                           save_every=2, grad_accum=1, lr=lr, warmup_steps=1, **overrides)

    train.train_student(config(tmp_path / "four", 4))
    train.train_student(config(tmp_path / "run", 2))
    capsys.readouterr()
    train.train_student(config(tmp_path / "run", 4, resume="auto"))
    said = capsys.readouterr().out
    assert "train.max_steps: 2 in the checkpoint's run, 4 from step 3 on" in said
    rows, ref = read_rows(tmp_path / "run"), read_rows(tmp_path / "four")
    assert sorted(rows) == [1, 2, 3, 4]
    for step, s in ((3, 2), (4, 3)):
        assert rows[step]["train/lr"] == pytest.approx(lr * (0.1 + 0.9 * (1 + math.cos(math.pi * (s - 1) / 3)) / 2),
                                                       rel=1e-12)
    assert rows[3]["train/lr"] == pytest.approx(0.775 * lr) and rows[4]["train/lr"] == pytest.approx(0.325 * lr)
    for step in (1, 2, 3, 4):
        assert_rows_match(ref[step], rows[step])
    assert_same_weights(tmp_path / "four" / "final", tmp_path / "run" / "final")
    last = checkpoint.list_checkpoints(tmp_path / "run")[-1]
    state = json.loads((last / "state.json").read_text())
    assert last.name == "step-00000004" and state["max_steps_history"] == [[0, 2], [2, 4]]
    assert state["config"]["train"]["max_steps"] == 4
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["max_steps"] == 4

    # Below the checkpoint's step: refused, saying why; another change is still refused beside it.
    with pytest.raises(checkpoint.CheckpointError, match=r"train.max_steps: 4 -> 3 \(below the checkpoint's step 4"):
        train.train_student(config(tmp_path / "run", 3, resume="auto"))
    with pytest.raises(checkpoint.CheckpointError, match=r"train.batch_size: 4 -> 2"):
        train.train_student(config(tmp_path / "run", 6, resume="auto", batch_size=2))


def test_an_extension_names_the_schedule_stages_whose_start_fractions_move():
    """rollout.schedule's `start: 0.5` is step 2 of 4 but step 4 of 8; `step: 2` stays at step 2; data.schedule's
    `start: 0.3` is step 2 of 4, step 3 of 8. Resumed after 2 steps with max_steps 4 -> 8, the rollout stage in
    force at step 3 goes back from 1 to 0, and the data stage started in the 4-step layout has not yet started."""
    cfg = build(Config, {"rollout": {"schedule": [{"start": 0.5, "strategy": "student"}]}, "train": {"max_steps": 8},
                         "data": {"train": [{"task": "arith"}, {"task": "facts"}],
                                  "schedule": [{"start": 0.3, "weights": [0.0, 1.0]}]}})
    moved = train.resume.moved_stages(cfg, 2, 4)
    assert len(moved) == 2
    assert "rollout.schedule's stage 0 is in force from step 3 on" in moved[0] and "was in stage 1" in moved[0]
    assert "data.schedule: 0 of its stages have started at step 3, 1 in the checkpoint's run" in moved[1]
    cfg.rollout.schedule = [{"step": 2, "strategy": "student"}]
    cfg.data.schedule[0].start = 0.1  # step 1 of 4 and of 8
    assert train.resume.moved_stages(cfg, 2, 4) == []


def assert_state_equals(model, weights: dict) -> None:
    state = model.state_dict()
    for k, v in weights.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)


def test_checkpoint_holds_every_state_and_loads_without_pickle(tmp_path):
    train.train_student(make_config(tmp_path, validation=False, max_steps=2, save_every=1, keep_last=1), sft=True)
    found = checkpoint.list_checkpoints(tmp_path)
    assert [p.name for p in found] == ["step-00000002"]  # keep_last=1 pruned step 1
    ckpt = found[0]
    assert {p.name for p in ckpt.iterdir()} == {"model", "optimizer.pt", "scheduler.pt", "rng-rank0.pt", "state.json"}
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 2 and state["cursor"] == [2 * 2 * 4] and state["skipped_steps"] == 0
    for name in ("optimizer.pt", "scheduler.pt", "rng-rank0.pt"):
        torch.load(ckpt / name, weights_only=True)  # raises on anything that would need unpickling
    assert AutoModelForCausalLM.from_pretrained(ckpt / "model").config.num_hidden_layers == 2
    assert not list((tmp_path / "checkpoints").glob(".*")), "a temporary folder was left behind"


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = checkpoint.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.set_rng_state(torch.load(_saved(state), weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def _saved(obj) -> "io.BytesIO":
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_resume_sources(tmp_path, monkeypatch):
    assert checkpoint.resolve_resume(None, tmp_path) is None
    assert checkpoint.resolve_resume("auto", tmp_path) is None  # nothing yet: a fresh start
    for step in (3, 10):
        (tmp_path / "checkpoints" / f"step-{step:08d}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"step-{step:08d}" / "state.json").write_text("{}")
    (tmp_path / "checkpoints" / ".tmp-step-00000020").mkdir()  # a killed save is never picked
    latest = tmp_path / "checkpoints" / "step-00000010"
    assert checkpoint.resolve_resume("auto", tmp_path) == latest
    assert checkpoint.resolve_resume(str(tmp_path), "elsewhere") == latest  # a run folder: its latest
    monkeypatch.setenv("RESUME_CHECKPOINT", str(tmp_path / "checkpoints" / "step-00000003"))
    assert checkpoint.resolve_resume(None, "elsewhere").name == "step-00000003"
    monkeypatch.setenv("RESUME_CHECKPOINT", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="state.json"):
        checkpoint.resolve_resume("auto", tmp_path)


# ---------------------------------------------------------------- LoRA
def test_lora_trains_saves_a_merged_folder_and_resumes_exactly(tmp_path, monkeypatch):
    lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.1}  # dropout: resuming must restore the RNG
    cfg = make_config(tmp_path / "full", validation=False)
    cfg.model.lora = build(type(cfg.model.lora), lora)
    train.train_student(cfg, sft=True)
    ckpt = checkpoint.list_checkpoints(tmp_path / "full")[0]
    assert (ckpt / "adapter" / "adapter_model.safetensors").exists()

    final = tmp_path / "full" / "final"
    merged = AutoModelForCausalLM.from_pretrained(final)  # a plain folder: no peft needed
    assert not any("lora" in k for k in load_file(str(final / "model.safetensors")))
    base = load_model("tiny-student", tokenizer=load_tokenizer("tiny-student"), seed=0)
    q = "model.layers.0.self_attn.q_proj.weight"
    mlp = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])  # the adapter was merged in
    assert torch.equal(merged.state_dict()[mlp], base.state_dict()[mlp])  # untargeted weights stay the base's

    # Resume from the step-2 checkpoint through $RESUME_CHECKPOINT: steps 3-4 as in the uninterrupted run.
    monkeypatch.setenv("RESUME_CHECKPOINT", str(ckpt))
    cfg2 = make_config(tmp_path / "resumed", validation=False)
    cfg2.model.lora = build(type(cfg.model.lora), lora)
    train.train_student(cfg2, sft=True)
    ref, rows = read_rows(tmp_path / "full"), read_rows(tmp_path / "resumed")
    assert sorted(rows) == [3, 4]
    for step in (3, 4):
        assert_rows_match(ref[step], rows[step])
    assert_same_weights(final, tmp_path / "resumed" / "final")


# ---------------------------------------------------------------- validation
def test_validation_on_a_file_dataset_writes_samples(tmp_path):
    """docs/training.md: samples.jsonl holds a few validation completions each time validation runs, whether
    the validation records come from a built-in task or from a file (which has no scorer, hence no val metric)."""
    from specdistill.data import load_task

    rows = load_task("arith", "validation")[:6]
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps({k: r[k] for k in ("id", "query", "response")}) + "\n" for r in rows))
    cfg = make_config(tmp_path / "run", max_steps=2, eval_every=1, save_every=0, grad_accum=1)
    cfg.data.validation = build(type(cfg.data.train[0]), {"path": str(data)})
    train.train_student(cfg, sft=True)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1] * train.SAMPLES_LOGGED + [2] * train.SAMPLES_LOGGED
    assert [s["id"] for s in samples[: train.SAMPLES_LOGGED]] == [r["id"] for r in rows[: train.SAMPLES_LOGGED]]
    assert all(isinstance(s["prediction"], str) and s["reference"] for s in samples)
    metrics = read_rows(tmp_path / "run")
    assert "val/loss" in metrics[1] and not any(k.startswith("val/exact") for k in metrics[1])


# ---------------------------------------------------------------- NaN guard
def test_nan_steps_are_skipped_counted_and_stop_the_run_resumably(tmp_path, monkeypatch):
    """NaN at step 2 (skipped, counted), then at steps 4 and 5: max_bad_steps=2 in a row stops the run with a
    checkpoint; resuming without the fault finishes the run."""
    bad = {2, 4, 5}
    cfg = make_config(tmp_path, validation=False, max_steps=6, save_every=0, max_bad_steps=2, grad_accum=1,
                      warmup_steps=0)  # (warmup starts at lr 0: step 1 would not move the weights)
    real_loss, real_step = train.micro_loss, train.train_step

    def nan_loss(run, rb, student=None):
        loss, agreements = real_loss(run, rb, student)
        return (loss * float("nan") if run.step + 1 in bad else loss), agreements

    def checked_step(run):
        before = [p.detach().clone() for p in run.student.parameters()]
        metrics = real_step(run)
        after = list(run.student.parameters())
        unchanged = all(torch.equal(a, b) for a, b in zip(before, after))
        assert unchanged == (run.step + 1 in bad), f"step {run.step + 1}: a skipped step must not change weights"
        return metrics

    monkeypatch.setattr(train.step, "micro_loss", nan_loss)
    monkeypatch.setattr(train.recipe, "train_step", checked_step)
    with pytest.raises(train.TrainingDiverged, match=r"2 steps in a row .*step 5.*train.resume=auto"):
        train.train_student(cfg, sft=True)
    rows = read_rows(tmp_path)
    assert [rows[s]["train/skipped_steps"] for s in range(1, 6)] == [0, 1, 1, 2, 3]
    assert math.isnan(rows[2]["train/loss"]) and math.isnan(rows[2]["train/grad_norm"])
    assert math.isfinite(rows[3]["train/loss"])
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-00000005"]

    monkeypatch.undo()
    cfg.train.resume = "auto"
    last = train.train_student(cfg, sft=True)
    rows = read_rows(tmp_path)
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    assert last["train/skipped_steps"] == 3 and math.isfinite(last["train/loss"])
    assert (tmp_path / "final" / "model.safetensors").exists()


# ---------------------------------------------------------------- the teacher, devices, gathering
def test_teacher_is_frozen_and_rollouts_run_gathered_in_eval_mode(tmp_path, monkeypatch):
    cfg = make_config(tmp_path, teacher="tiny-teacher", loss="jsd", validation=False, warmup_steps=0)
    run = train.setup(cfg, sft=False)
    try:
        teacher, student = run.teacher, run.accelerator.unwrap_model(run.student)
        assert not teacher.training and student.training
        assert not any(p.requires_grad for p in teacher.parameters())
        t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
        s_before = {k: v.clone() for k, v in student.state_dict().items()}
        metrics = train.train_step(run)
        assert math.isfinite(metrics["train/loss"]) and metrics["train/loss"] > 0
        assert all(p.grad is None for p in teacher.parameters())
        assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_before.items())
        assert not all(torch.equal(v, student.state_dict()[k]) for k, v in s_before.items())
        assert not teacher.training and student.training

        # Generating strategies call make_rollout inside gathered_for_generation, with the student in eval mode.
        seen = []

        @contextmanager
        def gathered(acc, model, enabled=True):
            seen.append(("enter", enabled))
            yield
            seen.append(("exit", enabled))

        def fake_rollout(plan, prompts, model, teacher, seeds):
            seen.append(("rollout", model.training, len(seeds)))
            return dataset_rollout(prompts, plan.tokens.pad_id)

        monkeypatch.setattr(train.step, "gathered_for_generation", gathered)
        monkeypatch.setattr(train.step, "make_rollout", fake_rollout)
        run.cfg.rollout.strategy = "student"
        train.rollout_step(run)
        assert seen == [("enter", True), ("rollout", False, 4), ("rollout", False, 4), ("exit", True)]
        assert student.training
    finally:
        train.cleanup(run)


def test_device_choice_including_the_paired_layout(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "0")  # the accelerator's local rank is what counts
    rank1 = SimpleNamespace(local_process_index=1, device=torch.device("cuda:1"))
    s = train.student_device(rank1, "paired")
    assert s == torch.device("cuda:2")
    assert train.teacher_device(rank1, "paired", s) == torch.device("cuda:3")
    assert train.student_device(rank1, "auto") == torch.device("cuda:1")
    assert train.teacher_device(rank1, "auto", torch.device("cuda:1")) == torch.device("cuda:1")
    assert train.teacher_device(rank1, "cuda:7", torch.device("cuda:1")) == torch.device("cuda:7")
    assert train.student_device(rank1, "cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="paired"):
        train.student_device(rank1, "paired")


def _fake_accelerator(distributed_type, zero_stage=None, fsdp2=False):
    plugin = SimpleNamespace(zero_stage=zero_stage) if zero_stage is not None else None
    return SimpleNamespace(distributed_type=distributed_type, state=SimpleNamespace(deepspeed_plugin=plugin),
                           is_fsdp2=fsdp2)


def test_gathered_for_generation_picks_the_backend(monkeypatch):
    model = torch.nn.Linear(2, 2)
    calls = []

    @contextmanager
    def gathered_parameters(params, modifier_rank=None):
        calls.append(("zero3", [id(p) for p in params], modifier_rank))
        yield

    fake_deepspeed = SimpleNamespace(zero=SimpleNamespace(GatheredParameters=gathered_parameters))
    monkeypatch.setitem(sys.modules, "deepspeed", fake_deepspeed)
    with train.gathered_for_generation(_fake_accelerator(DistributedType.DEEPSPEED, zero_stage=3), model):
        assert calls == [("zero3", [id(p) for p in model.parameters()], None)]
    calls.clear()
    with train.gathered_for_generation(_fake_accelerator(DistributedType.DEEPSPEED, zero_stage=2), model):
        pass  # ZeRO-2 keeps full parameters on every rank
    zero3 = _fake_accelerator(DistributedType.DEEPSPEED, zero_stage=3)
    with train.gathered_for_generation(zero3, model, enabled=False):
        pass
    assert calls == []

    from torch.distributed.fsdp import FullyShardedDataParallel

    @contextmanager
    def summon(module, **kwargs):
        calls.append(("fsdp", module, kwargs))
        yield

    monkeypatch.setattr(FullyShardedDataParallel, "summon_full_params", staticmethod(summon))
    with train.gathered_for_generation(_fake_accelerator(DistributedType.FSDP), model):
        assert calls == [("fsdp", model, {"recurse": False, "writeback": False})]
    calls.clear()

    @contextmanager
    def unsharded(module):
        calls.append(("fsdp2", module))
        yield

    monkeypatch.setattr(train.distributed, "fsdp2_unsharded", unsharded)  # FSDP2: gathered once (the launched test runs it)
    with train.gathered_for_generation(_fake_accelerator(DistributedType.FSDP, fsdp2=True), model):
        assert calls == [("fsdp2", model)]
    calls.clear()
    for acc in (_fake_accelerator(DistributedType.MULTI_GPU), _fake_accelerator(DistributedType.NO)):
        with train.gathered_for_generation(acc, model):
            pass
    assert calls == []
    assert train.params_sharded(_fake_accelerator(DistributedType.DEEPSPEED, zero_stage=3))
    assert not train.params_sharded(_fake_accelerator(DistributedType.DEEPSPEED, zero_stage=2))
    assert train.optimizer_sharded(_fake_accelerator(DistributedType.DEEPSPEED, zero_stage=2))
    assert not train.optimizer_sharded(_fake_accelerator(DistributedType.MULTI_CPU))


# ---------------------------------------------------------------- schedule, trackers, shipped launch configs
def test_schedule_warms_up_then_decays_to_the_floor():
    f = [train.warmup_cosine(s, warmup=4, total=20, min_ratio=0.1) for s in range(22)]
    assert f[0] == 0 and f[2] == 0.5 and f[4] == 1.0
    assert all(a >= b for a, b in zip(f[4:], f[5:]))
    assert f[20] == pytest.approx(0.1) and f[21] == pytest.approx(0.1)


def test_a_missing_tracker_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail
    cfg = make_config(tmp_path, validation=False, trackers=["tensorboard"])
    with pytest.raises(ConfigError, match=r"specdistill\[tracking\]"):
        train.setup(cfg, sft=True)


def test_tensorboard_tracker_receives_the_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = make_config(tmp_path, validation=False, max_steps=2, save_every=0, grad_accum=1, trackers=["tensorboard"])
    train.train_student(cfg, sft=True)
    assert list(tmp_path.rglob("events.out.tfevents.*"))
    assert sorted(read_rows(tmp_path)) == [1, 2]


CONFIGS = Path(train.__file__).parents[1] / "configs" / "accelerate"


@pytest.mark.parametrize("name, kind, extra", [
    ("ddp.yaml", "MULTI_GPU", {}),
    ("fsdp.yaml", "FSDP", {"fsdp_version": 2}),
    ("deepspeed_zero2.yaml", "DEEPSPEED", {"zero_stage": 2}),
    ("deepspeed_zero3.yaml", "DEEPSPEED", {"zero_stage": 3}),
])
def test_shipped_accelerate_configs_load(name, kind, extra):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / name))
    assert cfg.distributed_type == kind
    section = {**(cfg.fsdp_config or {}), **(cfg.deepspeed_config or {})}
    for k, v in extra.items():
        assert section[k] == v
    raw = yaml.safe_load((CONFIGS / name).read_text())
    assert raw.get("mixed_precision", "no") == "no"  # precision comes from train.mixed_precision


# ---------------------------------------------------------------- a kill during a save
KILLED_RUN = r"""
import os, sys, time
from pathlib import Path

import specdistill.train as train
from specdistill.cli import main

real_save_model = train.student.save_model


def save_model_then_hang(run, path, **options):  # the save of PAUSE_IN stops after model/, as if killed mid-save
    real_save_model(run, path, **options)
    if Path(path).parent.name == os.environ["PAUSE_IN"]:
        Path(os.environ["MARKER"]).write_text(str(path))
        time.sleep(600)


train.student.save_model = save_model_then_hang
sys.exit(main(["sft", sys.argv[1]]))
"""


def test_a_kill_during_a_save_keeps_the_previous_checkpoint_and_auto_resume_finishes(tmp_path):
    import os
    import signal
    import subprocess
    import time

    from specdistill.config import save_config

    out = tmp_path / "run"
    cfg = make_config(out, save_every=2, keep_last=2)
    save_config(cfg, tmp_path / "run.yaml")
    marker = tmp_path / "paused"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PAUSE_IN": ".tmp-step-00000004", "MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path / "run.yaml")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the run never reached the save of step 4"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # The half-written save sits under a temporary name; the step-2 checkpoint is intact and loads.
    partial = out / "checkpoints" / ".tmp-step-00000004"
    assert (partial / "model").exists() and not (partial / "state.json").exists()
    (previous,) = checkpoint.list_checkpoints(out)
    assert previous.name == "step-00000002"
    AutoModelForCausalLM.from_pretrained(previous / "model")
    for name in ("optimizer.pt", "scheduler.pt", "rng-rank0.pt"):
        torch.load(previous / name, weights_only=True)
    before_kill = read_rows(out)
    assert sorted(before_kill) == [1, 2, 3, 4]  # steps 3-4 were logged before the kill

    cfg.train.resume = "auto"
    train.train_student(cfg, sft=True)
    rows = read_rows(out)  # steps 3-4 logged once again, not twice
    assert sorted(rows) == [1, 2, 3, 4]
    for step in (3, 4):
        assert_rows_match(before_kill[step], rows[step])
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step-00000002", "step-00000004"]
    assert not partial.exists() and (out / "final" / "model.safetensors").exists()


# ---------------------------------------------------------------- options: precision, checkpointing, launch check
def test_gradient_checkpointing_with_lora_gives_the_same_steps(tmp_path):
    """Non-reentrant checkpointing still reaches the LoRA weights (frozen embeddings need no input grads)."""
    runs = {}
    for gc in (False, True):
        cfg = make_config(tmp_path / str(gc), validation=False, max_steps=2, save_every=0, warmup_steps=0)
        cfg.model.gradient_checkpointing = gc
        cfg.model.lora.enabled = True
        train.train_student(cfg, sft=True)
        runs[gc] = read_rows(tmp_path / str(gc))
    for step in (1, 2):
        assert_rows_match(runs[False][step], runs[True][step], tol=1e-5)
    assert runs[True][2]["train/grad_norm"] > 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "True" / "final").config.use_cache  # not saved as off


def test_compiled_loss_phase_gives_the_eager_steps(tmp_path):
    """train.compile: the loss phase calls the student (with its backward) and the teacher through torch.compile;
    the logged steps must be the eager ones (to float rounding), with no fallback to eager code."""
    from torch._dynamo.utils import counters

    runs = {}
    for compiled in (False, True):
        cfg = make_config(tmp_path / str(compiled), teacher="tiny-teacher", loss="jsd", validation=False,
                          max_steps=3, save_every=0, compile=compiled)
        cfg.rollout.strategy = "student"
        graphs = counters["stats"]["unique_graphs"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train.train_student(cfg)
        assert not [w for w in caught if "running it eagerly" in str(w.message)]
        assert (counters["stats"]["unique_graphs"] > graphs) == compiled
        runs[compiled] = read_rows(tmp_path / str(compiled))
    for step in (1, 2, 3):
        assert_rows_match(runs[False][step], runs[True][step], tol=1e-4)
    assert runs[True][3]["train/loss"] != runs[True][1]["train/loss"]


def test_bf16_mixed_precision_trains_fp32_weights(tmp_path):
    """bf16 against the same run in fp32: step 1 (same weights, same batch) has a loss that differs by bf16
    rounding only (autocast is on: not equal; it is the same computation: within 2%), and the saved weights
    stay fp32."""
    losses = {}
    for precision in ("bf16", "no"):
        cfg = make_config(tmp_path / precision, validation=False, max_steps=2, save_every=0, mixed_precision=precision)
        train.train_student(cfg, sft=True)  # CPU autocast here; CUDA autocast on GPUs
        losses[precision] = read_rows(tmp_path / precision)[1]["train/loss"]
        weights = checkpoint.read_safetensors(tmp_path / precision / "final")
        assert all(v.dtype == torch.float32 for v in weights.values())
    assert losses["bf16"] != losses["no"]
    assert losses["bf16"] == pytest.approx(losses["no"], rel=0.02)


def _changed_share(run, before: dict) -> float:
    """The share of the decoder's projection weights that the last step changed."""
    student = run.accelerator.unwrap_model(run.student)
    changed = total = 0
    for name, value in student.state_dict().items():
        if ".layers." in name and name.endswith("proj.weight"):
            changed += int((value != before[name]).sum())
            total += value.numel()
    return changed / total


def test_a_bf16_checkpoint_trains_in_fp32_while_its_frozen_teacher_keeps_bf16(tmp_path):
    """The dtype rule: the teacher takes its checkpoint's dtype (auto), the student trains in float32 unless
    model.student_dtype says otherwise. One AdamW step of lr 1e-5 moves each weight by about 1e-5 (Adam's first
    step is lr * g / |g|): fp32 keeps it for every weight, while bf16 (student_dtype=auto here), whose spacing is
    about |w| / 128, keeps it only for weights below about 2.6e-3, some 10% of N(0, 0.02) (the tiny model's init)."""
    from conftest import save_tiny_model

    folders = {}
    for role, seed in (("student", 1), ("teacher", 2)):
        path = save_tiny_model(tmp_path / role, seed=seed)
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).save_pretrained(path)
        folders[role] = str(path)
    shares = {}
    for student_dtype in ("float32", "auto"):
        cfg = make_config(tmp_path / student_dtype, teacher=folders["teacher"], loss="jsd", validation=False,
                          max_steps=1, warmup_steps=0, lr=1e-5, weight_decay=0.0, grad_accum=1)
        cfg.model.student, cfg.rollout.strategy = folders["student"], "skd"
        defaults = student_dtype == "float32"
        if not defaults:
            cfg.model.student_dtype = student_dtype
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = train.setup(cfg)
        try:
            said = [str(w.message) for w in caught if "loses steps below its resolution" in str(w.message)]
            assert bool(said) == (not defaults)  # bf16 weights are said once; fp32 ones need no word
            student = run.accelerator.unwrap_model(run.student)
            want = torch.float32 if defaults else torch.bfloat16
            assert {p.dtype for p in student.parameters()} == {want}
            assert {p.dtype for p in run.teacher.parameters()} == {torch.bfloat16}  # teacher_dtype: auto
            before = {k: v.clone() for k, v in student.state_dict().items()}
            metrics = train.train_step(run)
            assert math.isfinite(metrics["train/loss"])
            shares[student_dtype] = _changed_share(run, before)
        finally:
            train.cleanup(run)
    assert shares["float32"] > 0.95, shares
    assert shares["auto"] < 0.3, shares


def test_processes_that_accelerate_left_unconnected_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="ACCELERATE_USE_CPU=1"):
        train.distributed.check_launch(SimpleNamespace(num_processes=1))
    train.distributed.check_launch(SimpleNamespace(num_processes=2))
    monkeypatch.delenv("WORLD_SIZE")
    train.distributed.check_launch(SimpleNamespace(num_processes=1))


def test_an_fsdp_launch_that_accelerate_runs_as_ddp_on_the_cpu_is_warned_of(monkeypatch):
    """accelerate launch --config_file fsdp.yaml sets ACCELERATE_USE_FSDP; with ACCELERATE_USE_CPU accelerate
    runs MULTI_CPU (DDP) instead, which the run says rather than passing for FSDP."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.warns(UserWarning, match="asks for FSDP, but accelerate runs it as MULTI_CPU"):
        train.distributed.check_launch(SimpleNamespace(num_processes=2, distributed_type=DistributedType.MULTI_CPU))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train.distributed.check_launch(SimpleNamespace(num_processes=2, distributed_type=DistributedType.FSDP))


def test_resume_of_a_student_with_tied_embeddings(tmp_path):
    """save_pretrained drops lm_head when it is tied to the embeddings; resuming must accept that, nothing else."""
    from conftest import save_tiny_model

    student = save_tiny_model(tmp_path / "tied", arch="qwen2", tie_word_embeddings=True)
    cfg = make_config(tmp_path / "full", validation=False, max_steps=2, save_every=1, grad_accum=1, warmup_steps=0)
    cfg.model.student = str(student)
    train.train_student(cfg, sft=True)
    ckpt = checkpoint.list_checkpoints(tmp_path / "full")[0]
    assert "lm_head.weight" not in checkpoint.read_safetensors(ckpt / "model")
    cfg.train.output_dir, cfg.train.resume = str(tmp_path / "resumed"), str(ckpt)
    train.train_student(cfg, sft=True)
    assert_rows_match(read_rows(tmp_path / "full")[2], read_rows(tmp_path / "resumed")[2])

    other = save_tiny_model(tmp_path / "other", arch="llama", hidden=64)
    with pytest.raises(ValueError, match="do not match the student"):
        checkpoint.load_model_weights(AutoModelForCausalLM.from_pretrained(other), ckpt / "model")


# ---------------------------------------------------------------- rollout schedules, mixed rows, top-1 agreement
def test_rollout_schedule_switches_at_its_step_also_after_a_resume_in_the_middle_of_a_stage(tmp_path, monkeypatch):
    """The dataset's responses for steps 1-2, SKD from `step: 2` (steps 3-4), the student's samples from
    `start: 0.8` (step 5): the strategy each step rolls out with, and rollout/stage in its row. A run resumed from
    the step-3 checkpoint, inside the SKD stage, goes on with SKD, then the student, and logs the full run's rows."""
    used = []
    real_rollout = train.step.make_rollout

    def recording_rollout(rcfg, *args, **options):
        used.append(rcfg.settings.strategy)
        return real_rollout(rcfg, *args, **options)

    def config(out, **overrides):
        cfg = make_config(out, teacher="tiny-teacher", loss="fkl", validation=False, max_steps=5, grad_accum=1,
                          save_every=1, keep_last=5, **overrides)
        cfg.rollout.schedule = [{"step": 2, "strategy": "skd", "skd_top_k": 2}, {"start": 0.8, "strategy": "student"}]
        validate(cfg)
        return cfg

    monkeypatch.setattr(train.step, "make_rollout", recording_rollout)
    train.train_student(config(tmp_path / "full"))
    assert used == ["dataset", "dataset", "skd", "skd", "student"]
    full = read_rows(tmp_path / "full")
    assert [full[s]["rollout/stage"] for s in range(1, 6)] == [0, 0, 1, 1, 2]
    assert [full[s].get("tokens/drafted", 0) > 0 for s in range(1, 6)] == [False, False, True, True, False]

    used.clear()
    train.train_student(config(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoints" / "step-00000003")))
    assert used == ["skd", "student"]
    rows = read_rows(tmp_path / "resumed")
    assert sorted(rows) == [4, 5]
    for step in (4, 5):
        assert_rows_match(full[step], rows[step])


def test_mixed_rows_choose_alike_with_one_or_two_processes_and_any_micro_batch_split(tmp_path, monkeypatch):
    """One global batch of 8 rows rolled out by rollout_step in four layouts: 1 process with 1 micro-batch of 8 or
    2 of 4, and 2 processes (each rank's accelerator stood in for) with 2 micro-batches of 2 or 1 of 4. Every global
    row gets the same record, seed, coin (SKD or its reference) and response in each layout."""
    cfg = make_config(tmp_path, teacher="tiny-teacher", loss="fkl", validation=False)
    cfg.rollout.strategy, cfg.rollout.mix, cfg.rollout.skd_top_k = "mixed", ["skd", "dataset"], 2
    run = train.setup(cfg)
    accelerator, cursor = run.accelerator, run.stream.state_dict()
    rows: list = []
    real_rollout = train.step.make_rollout

    def recording_rollout(rcfg, prompts, *args, **options):
        rb = real_rollout(rcfg, prompts, *args, **options)
        seeds = args[-1]
        for i, (example, seed) in enumerate(zip(prompts.examples, seeds)):
            mask = rb.response_mask[i]
            rows.append((example.record.id, seed, rb.response[i][mask].tolist(), rb.teacher_written[i][mask].tolist()))
        return rb

    monkeypatch.setattr(train.step, "make_rollout", recording_rollout)
    layouts = {}
    try:
        for processes, accum, size in [(1, 1, 8), (1, 2, 4), (2, 2, 2), (2, 1, 4)]:
            run.cfg.train.grad_accum, run.cfg.train.batch_size = accum, size
            rows = []
            for rank in range(processes):  # rank-major: rank r's micro-batch i is global micro-batch r * accum + i
                run.accelerator = _fake_accelerator(DistributedType.MULTI_CPU)
                run.accelerator.process_index, run.accelerator.num_processes = rank, processes
                run.accelerator.unwrap_model = accelerator.unwrap_model
                run.stream.load_state_dict(cursor)  # every rank draws the same global batch
                train.rollout_step(run)
            layouts[(processes, accum, size)] = rows
    finally:
        run.accelerator = accelerator
        train.cleanup(run)
    reference = layouts[(1, 1, 8)]
    assert len(reference) == 8 and len({r[0] for r in reference}) == 8
    for layout, got in layouts.items():
        assert got == reference, layout
    from specdistill.rollout import mix_choice

    skd = mix_choice([r[1] for r in reference], cfg.rollout.lam)
    assert 0 < sum(skd) < 8
    assert not any(any(r[3]) for r, s in zip(reference, skd) if not s)  # reference rows: no teacher tokens
    assert any(any(r[3]) for r, s in zip(reference, skd) if s)  # top-2 of a random teacher replaces some drafts


def test_train_top1_agreement_equals_a_brute_force_count(tmp_path, monkeypatch):
    """train/top1_agreement of a step of 2 micro-batches (mixed SKD and reference rows): the trained positions where
    the student's argmax (before the step's update) equals the teacher's, counted one position at a time with
    each model run on its own view's unpadded prompt and the response so far, without a cache."""
    import copy

    cfg = make_config(tmp_path, teacher="tiny-teacher", loss="fkl", validation=False, max_steps=1,
                      warmup_steps=0)
    cfg.rollout.strategy, cfg.rollout.mix, cfg.rollout.skd_top_k = "mixed", ["skd", "dataset"], 2
    run = train.setup(cfg)
    batches = []
    real_rollout_step = train.rollout_step

    def recording_rollout_step(run):
        batches.extend(real_rollout_step(run))
        return batches

    try:
        student = copy.deepcopy(run.accelerator.unwrap_model(run.student)).eval()
        monkeypatch.setattr(train.step, "rollout_step", recording_rollout_step)
        metrics = train.train_step(run)
    finally:
        train.cleanup(run)
    agree = total = 0
    with torch.no_grad():
        for rb in batches:
            P, Q = rb.student_prompt_len, rb.teacher_prompt_len
            for i in range(len(rb.response)):
                views = [(student, rb.student_ids[i, :P][rb.student_mask[i, :P]]),
                         (run.teacher, rb.teacher_ids[i, :Q][rb.teacher_mask[i, :Q]])]
                for j in range(int(rb.response_mask[i].sum())):
                    picks = [model(torch.cat([prompt, rb.response[i, :j]])[None]).logits[0, -1, : run.vocab].argmax()
                             for model, prompt in views]
                    agree += int(picks[0] == picks[1])
                    total += 1
    assert len(batches) == 2 and metrics["tokens/trained"] == total
    assert 0 < agree < total
    assert metrics["train/top1_agreement"] == pytest.approx(agree / total, abs=1e-12)
