"""`accelerate launch --num_processes 2 --cpu -m specdistill distill CONFIG` (gloo) against one process.

Both runs see the same global batch of 2 micro-batches of 4 per step: one process accumulates both
(grad_accum=2), two processes take one each (grad_accum=1). The ranks' record ids and final parameters are
recorded by a sitecustomize module that the test puts on PYTHONPATH, so the library carries no test hooks and
the command is exactly the documented one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model

from specdistill import checkpoint, train
from specdistill.config import Config, build, save_config, validate
from specdistill.data.records import load_records
from specdistill.data.views import encode_example
from specdistill.models import load_tokenizer

RECORDER = '''
import os

if os.environ.get("SPECDISTILL_TEST_RECORD") and "LOCAL_RANK" in os.environ:  # the launched ranks only
    import json
    from pathlib import Path

    import specdistill.train as train

    out, rank = Path(os.environ["SPECDISTILL_TEST_RECORD"]), os.environ["RANK"]
    real_rollout, real_cleanup = train.make_rollout, train.cleanup

    def recording_rollout(cfg, prompts, *args, **kwargs):
        with open(out / f"ids-rank{rank}.jsonl", "a") as fh:
            fh.write(json.dumps([e.record.id for e in prompts.examples]) + "\\n")
        return real_rollout(cfg, prompts, *args, **kwargs)

    def dumping_cleanup(run):
        from safetensors.torch import save_file

        model = run.accelerator.unwrap_model(run.student)
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        save_file(params, str(out / f"params-rank{rank}.safetensors"))
        real_cleanup(run)

    train.make_rollout, train.cleanup = recording_rollout, dumping_cleanup
'''

UNTIMED = ("time/", "throughput/")
DDP_CONFIG = Path(train.__file__).parent / "configs" / "accelerate" / "ddp.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distill_config(tmp_path: Path, out: Path, grad_accum: int) -> Config:
    models = tmp_path / "models"
    if not models.exists():
        save_tiny_model(models / "student", seed=1)
        save_tiny_model(models / "teacher", seed=2, layers=3, initializer_range=0.5)  # peaked: a real signal
    cfg = build(Config, {
        "model": {"student": str(models / "student"), "teacher": str(models / "teacher")},
        "data": {"train": [{"task": "arith", "limit": 64}], "validation": {"task": "arith", "split": "validation"},
                 "views": {"max_response_tokens": 24}},
        "rollout": {"strategy": "dataset", "max_new_tokens": 6},
        "loss": {"name": "jsd", "beta": 0.5},
        "train": {"output_dir": str(out), "max_steps": 3, "batch_size": 4, "grad_accum": grad_accum, "lr": 1e-2,
                  "warmup_steps": 0, "eval_every": 3, "eval_samples": 5, "save_every": 0, "progress": False},
    })
    validate(cfg)
    return cfg


def rows(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, monkeypatch):
    # One process, in this process: both micro-batches of each step accumulated.
    one_ids: list[list[str]] = []
    real_rollout = train.make_rollout

    def recording_rollout(cfg, prompts, *args, **kwargs):
        one_ids.append([e.record.id for e in prompts.examples])
        return real_rollout(cfg, prompts, *args, **kwargs)

    monkeypatch.setattr(train, "make_rollout", recording_rollout)
    train.run_training(distill_config(tmp_path, tmp_path / "one", grad_accum=2))

    # Two processes, launched exactly as documented.
    record = tmp_path / "record"
    record.mkdir()
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(RECORDER)
    save_config(distill_config(tmp_path, tmp_path / "two", grad_accum=1), tmp_path / "two.yaml")
    # The shipped DDP config on CPU: ACCELERATE_USE_CPU makes the ranks join over gloo. (`--cpu` would pick
    # accelerate's single-process launcher, which starts several CPU processes only through mpirun.)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "SPECDISTILL_TEST_RECORD": str(record),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), os.environ.get("PYTHONPATH", "")])}
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--config_file", str(DDP_CONFIG), "--num_processes", "2",
           "--main_process_port", str(free_port()), "-m", "specdistill", "distill", str(tmp_path / "two.yaml")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    # Ranks trained on disjoint records: rank r's step s is micro-batch r of the one-process run's step s.
    rank_ids = [[json.loads(line) for line in (record / f"ids-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert len(rank_ids[0]) == len(rank_ids[1]) == 3
    for s in range(3):
        assert not set(rank_ids[0][s]) & set(rank_ids[1][s])
        assert [rank_ids[0][s], rank_ids[1][s]] == one_ids[2 * s : 2 * s + 2]

    # Identical parameters on both ranks, equal to the one-process run's.
    p0, p1 = (_load(record / f"params-rank{r}.safetensors") for r in (0, 1))
    assert p0.keys() == p1.keys() and all(torch.equal(p0[k], p1[k]) for k in p0)
    one = checkpoint.read_safetensors(tmp_path / "one" / "final")
    for k, v in one.items():
        torch.testing.assert_close(p0[k], v, rtol=0, atol=1e-5)

    # Metrics are global: tokens/trained sums both ranks' response tokens; the curves match one process.
    two_rows, one_rows = rows(tmp_path / "two"), rows(tmp_path / "one")
    assert sorted(two_rows) == sorted(one_rows) == [1, 2, 3]
    lengths = _response_lengths(distill_config(tmp_path, tmp_path / "x", 1))
    for s in (1, 2, 3):
        assert two_rows[s]["tokens/trained"] == sum(lengths[i] for r in (0, 1) for i in rank_ids[r][s - 1])
        keys = {k for k in one_rows[s] if not k.startswith(UNTIMED)}
        assert keys == {k for k in two_rows[s] if not k.startswith(UNTIMED)}
        for k in keys:
            assert two_rows[s][k] == pytest.approx(one_rows[s][k], rel=1e-5, abs=1e-5), (s, k)
    assert "val/loss" in two_rows[3] and "val/exact_match" in two_rows[3]


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _response_lengths(cfg: Config) -> dict[str, int]:
    """Trained tokens per record id (the reference response and its EOS)."""
    tok = load_tokenizer(cfg.model.student)
    return {r.id: len(encode_example(r, tok, cfg.data.views).response) for r in load_records(cfg.data.train[0])}
