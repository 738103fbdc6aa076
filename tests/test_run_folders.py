"""Safe run folders: no run overwrites or adopts another run's files, a resume checks that the checkpoint's run had
the same config, and a damaged latest checkpoint is refused by path with the previous intact one offered. Each
case shows that nothing was lost: every file of the earlier run is byte for byte as it was.

Runs are tiny (the tiny-student preset, batch 2, 2-4 steps) and go through the command line in-process.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from specdistill import checkpoint
from specdistill.cli import main


def write_config(path: Path, out: Path, **train) -> Path:
    path.write_text(yaml.safe_dump({
        "model": {"student": "tiny-student", "teacher": None},
        "data": {"train": [{"task": "arith", "limit": 16}]},
        "rollout": {"max_new_tokens": 4},
        "train": {"output_dir": str(out), "max_steps": 4, "batch_size": 2, "lr": 1e-3, "warmup_steps": 0,
                  "save_every": 2, "keep_last": 3, "progress": False, **train},
    }))
    return path


def sft(cfg: Path, capsys, *overrides: str) -> tuple[int, str]:
    code = main(["sft", str(cfg), *[a for o in overrides for a in ("--set", o)]])
    return code, capsys.readouterr().err


def files(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def steps_logged(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_fresh_run_into_a_used_folder_refuses_and_overwrite_replaces_the_whole_run(tmp_path, capsys):
    out = tmp_path / "run"
    first = write_config(tmp_path / "a.yaml", out)
    assert sft(first, capsys)[0] == 0
    before = files(out)
    assert "checkpoints/step-00000004/model/model.safetensors" in before and steps_logged(out) == [1, 2, 3, 4]

    # Another run (another seed and learning rate, two steps) into the same folder: refused, every file as it was.
    second = write_config(tmp_path / "b.yaml", out, lr=3e-3, seed=7, max_steps=2, save_every=1)
    code, err = sft(second, capsys)
    assert code == 2 and "already holds files" in err and "train.resume=auto" in err and "train.overwrite" in err
    assert files(out) == before

    # resume=auto does not adopt the first run's checkpoint either: its config differs, and says where.
    code, err = sft(second, capsys, "train.resume=auto")
    assert code == 2 and "train.max_steps: 4 -> 2" in err and "train.seed: 0 -> 7" in err
    assert files(out) == before

    # train.overwrite: the first run's files go as a whole; nothing of it is left to adopt or to mix with.
    assert sft(second, capsys, "train.overwrite=true")[0] == 0
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step-00000001", "step-00000002"]
    assert steps_logged(out) == [1, 2]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 3e-3
    assert files(out)["final/model.safetensors"] != before["final/model.safetensors"]


def test_resume_with_a_changed_config_is_refused_naming_each_difference(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", out)
    assert sft(cfg, capsys)[0] == 0
    before = files(out)
    half = out / "checkpoints" / "step-00000002"

    code, err = sft(cfg, capsys, f"train.resume={half}", "train.batch_size=3", "train.weight_decay=0.1")
    line = err.strip()
    assert code == 2 and "\n" not in line and str(half) in line and "2 key(s)" in line
    assert "train.batch_size: 2 -> 3" in line and "train.weight_decay: 0.0 -> 0.1" in line
    assert files(out) == before  # config.yaml, metrics, checkpoints and final/ are the first run's

    # What does not change the run may change on resume (logging, checkpoint cadence, threads); resuming from
    # step 2 with the same config trains steps 3-4 exactly as before, bit for bit.
    assert sft(cfg, capsys, f"train.resume={half}", "train.log_every=2", "train.keep_last=4", "train.threads=1")[0] == 0
    assert steps_logged(out) == [1, 2, 4]
    after = files(out)
    assert after["checkpoints/step-00000004/model/model.safetensors"] == \
        before["checkpoints/step-00000004/model/model.safetensors"]
    assert after["final/model.safetensors"] == before["final/model.safetensors"]


def test_resume_with_a_changed_lr_applies_it_and_records_it(tmp_path, capsys):
    """train.lr may change on resume (to go on after a divergence at a lower rate): the rest of the schedule scales
    to the new rate, the log shows the rate each step applied, and config.yaml and the next checkpoints record it.
    (Once the restored schedule kept the old rate while config.yaml recorded the new one.)"""
    from specdistill.train import warmup_cosine

    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", out)
    assert sft(cfg, capsys)[0] == 0
    first = {json.loads(line)["step"]: json.loads(line)["train/lr"] for line in (out / "metrics.jsonl").open()}
    code = main(["sft", str(cfg), "--set", f"train.resume={out / 'checkpoints' / 'step-00000002'}", "--set",
                 "train.lr=5e-4"])
    assert code == 0 and "train.lr: 0.001 in the checkpoint's run, 0.0005 from step 3 on" in capsys.readouterr().out
    rows = {json.loads(line)["step"]: json.loads(line)["train/lr"] for line in (out / "metrics.jsonl").open()}
    assert [rows[s] for s in (1, 2)] == [first[1], first[2]]
    for step in (3, 4):
        assert rows[step] == pytest.approx(5e-4 * warmup_cosine(step - 1, 0, 4, 0.1))
        assert rows[step] == pytest.approx(first[step] / 2)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 5e-4
    state = json.loads((out / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert state["config"]["train"]["lr"] == 5e-4


def test_a_damaged_latest_checkpoint_is_refused_by_path_and_the_previous_one_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", out)
    assert sft(cfg, capsys)[0] == 0
    reference = files(out)
    latest, previous = out / "checkpoints" / "step-00000004", out / "checkpoints" / "step-00000002"
    optimizer = latest / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])  # a save cut short by a full disk
    before = files(out)

    code, err = sft(cfg, capsys, "train.resume=auto")
    line = err.strip()
    assert code == 2 and "\n" not in line and "Traceback" not in line and "weights_only" not in line
    assert f"checkpoint {latest} is damaged: optimizer.pt" in line
    assert f"the previous intact checkpoint is {previous}: resume from it with train.resume={previous}" in line
    assert files(out) == before  # nothing was loaded, truncated or removed

    # Doing what the message says finishes the run as it first ran; the damaged checkpoint is replaced.
    assert sft(cfg, capsys, f"train.resume={previous}")[0] == 0
    assert checkpoint.damage(latest) is None
    assert steps_logged(out) == [1, 2, 3, 4]
    after = files(out)
    for name in ("final/model.safetensors", "checkpoints/step-00000004/model/model.safetensors",
                 "checkpoints/step-00000004/optimizer.pt"):
        assert after[name] == reference[name], name


def test_a_run_stopped_before_its_first_checkpoint_restarts_only_as_itself(tmp_path, capsys):
    """resume=auto with no checkpoint restarts the run when the folder holds this same run (its config.yaml and
    rows logged before the stop); another run's leftovers are refused. A folder with only the config of a run
    that stopped before its first step is free to reuse."""
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", out)
    assert sft(cfg, capsys)[0] == 0
    for p in (out / "checkpoints", out / "final"):
        checkpoint.remove_run_files([p])  # as if killed after logging steps 1-4 but before any save
    before = files(out)
    code, err = sft(cfg, capsys, "train.resume=auto", "train.seed=1")
    assert code == 2 and "already holds files" in err and files(out) == before
    assert sft(cfg, capsys, "train.resume=auto")[0] == 0
    assert steps_logged(out) == [1, 2, 3, 4]  # the stale rows were dropped, each step logged once

    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "config.yaml").write_text("train: {}\n")
    (stub / "metrics.jsonl").write_text("")
    assert sft(write_config(tmp_path / "d.yaml", stub, max_steps=1, save_every=0), capsys)[0] == 0


def test_a_record_whose_view_cannot_fit_stops_the_run_before_its_first_step(tmp_path, capsys):
    """Every record is encoded at setup: one over data.views.max_prompt_tokens, far down a file that the first
    steps would not reach, stops the run at once (on every rank alike), not hours in."""
    rows = [{"id": f"r{i}", "query": f"What is {i}+1?", "response": f"{i + 1}"} for i in range(200)]
    rows[-1]["query"] = "Why? " * 400  # ~2,000 characters: over 512 tokens of the built-in character tokenizer
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": {"student": "tiny-student", "teacher": None}, "data": {"train": [{"path": str(data)}]},
           "rollout": {"strategy": "dataset"}, "loss": {"name": "ce"},
           "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 2, "warmup_steps": 0,
                     "progress": False}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["sft", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "record r199" in err and "max_prompt_tokens=512" in err and "\n" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
