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
from specdistill.data.prompt_views import encode_example
from specdistill.models import load_tokenizer

RECORDER = '''
import os

if os.environ.get("SPECDISTILL_TEST_FSDP_ON_CPU") and "LOCAL_RANK" in os.environ:
    # accelerate 1.15 turns an FSDP launch into MULTI_CPU (DDP) when ACCELERATE_USE_CPU is set: it enables FSDP
    # for accelerator devices only. torch's FSDP2 itself runs on gloo, so the test lets accelerate's state say FSDP
    # (in AcceleratorState and the PartialState it refreshes from); accelerate then shards the student with
    # fully_shard as on GPUs, and the trainer runs its FSDP2 paths.
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    real_init = AcceleratorState.__init__

    def fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        real_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = fsdp_on_cpu

if os.environ.get("SPECDISTILL_TEST_RECORD") and "LOCAL_RANK" in os.environ:  # the launched ranks only
    import json
    from pathlib import Path

    import torch

    import specdistill.train as train

    out, rank = Path(os.environ["SPECDISTILL_TEST_RECORD"]), os.environ["RANK"]
    real_rollout, real_cleanup = train.step.make_rollout, train.cleanup

    def recording_rollout(cfg, prompts, *args, **kwargs):
        with open(out / f"ids-rank{rank}.jsonl", "a") as fh:
            fh.write(json.dumps([e.record.id for e in prompts.examples]) + "\\n")
        rb = real_rollout(cfg, prompts, *args, **kwargs)
        with open(out / f"calls-rank{rank}.jsonl", "a") as fh:  # the student's forwards in this rollout
            fh.write(json.dumps(rb.stats.draft_calls) + "\\n")
        return rb

    def dumping_cleanup(run):
        from safetensors.torch import save_file

        model = run.accelerator.unwrap_model(run.student)
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if all(type(v) is torch.Tensor for v in params.values()):  # not FSDP's shards (DTensors)
            save_file(params, str(out / f"params-rank{rank}.safetensors"))
        backend = {"distributed_type": str(run.accelerator.distributed_type),
                   "parameter_types": sorted({type(p).__name__ for p in model.parameters()})}
        (out / f"backend-rank{rank}.json").write_text(json.dumps(backend))
        real_cleanup(run)

    train.step.make_rollout, train.recipe.cleanup = recording_rollout, dumping_cleanup
'''

UNTIMED = ("time/", "throughput/")
DDP_CONFIG = Path(train.__file__).parents[1] / "configs" / "accelerate" / "ddp.yaml"
FSDP_CONFIG = DDP_CONFIG.with_name("fsdp.yaml")


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
    real_rollout = train.step.make_rollout

    def recording_rollout(cfg, prompts, *args, **kwargs):
        one_ids.append([e.record.id for e in prompts.examples])
        return real_rollout(cfg, prompts, *args, **kwargs)

    monkeypatch.setattr(train.step, "make_rollout", recording_rollout)
    train.train_student(distill_config(tmp_path, tmp_path / "one", grad_accum=2))

    # Two processes, launched exactly as documented.
    save_config(distill_config(tmp_path, tmp_path / "two", grad_accum=1), tmp_path / "two.yaml")
    record = launch_two(tmp_path, DDP_CONFIG, tmp_path / "two.yaml")

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


def launch_two(tmp_path: Path, accelerate_config: Path, config: Path, timeout: int = 300, **env_extra) -> Path:
    """`accelerate launch --config_file ACCELERATE_CONFIG --num_processes 2 -m specdistill distill CONFIG` on the
    CPU, the ranks recorded (RECORDER) into the folder returned. ACCELERATE_USE_CPU makes the ranks join over gloo
    (`--cpu` would pick accelerate's single-process launcher, which starts several CPU processes only through
    mpirun). A run that hangs fails at `timeout` seconds."""
    record, hook = tmp_path / f"record-{config.stem}", tmp_path / "hook"
    record.mkdir()
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(RECORDER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "SPECDISTILL_TEST_RECORD": str(record),
           "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]), **env_extra}
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--config_file", str(accelerate_config), "--num_processes", "2",
           "--main_process_port", str(free_port()), "-m", "specdistill", "distill", str(config)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the launcher's agent stops its ranks (SIGKILL would leave them running)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        raise AssertionError(f"the two ranks did not finish in {timeout} s (a collective left unpaired?): "
                             f"{stderr[-3000:]}") from None
    assert proc.returncode == 0, stdout[-3000:] + stderr[-5000:]
    return record


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _response_lengths(cfg: Config) -> dict[str, int]:
    """Trained tokens per record id (the reference response and its EOS)."""
    tok = load_tokenizer(cfg.model.student)
    return {r.id: len(encode_example(r, tok, cfg.data.views).response) for r in load_records(cfg.data.train[0])}


# ---------------------------------------------------------------- FSDP2, rollouts whose rows finish at different times
def skd_config(tmp_path: Path, out: Path, grad_accum: int) -> Config:
    """6 SKD steps (top_k K=5, gamma 3, up to 12 new tokens) with a teacher eager to end (its EOS output row
    tripled), so that rows end at different lengths and a step's two micro-batches run different numbers of
    student forwards: 2 processes of one micro-batch each, or one process accumulating both."""
    models = tmp_path / "skd-models"
    if not models.exists():
        from transformers import AutoModelForCausalLM

        save_tiny_model(models / "student", seed=1)
        save_tiny_model(models / "teacher", seed=2, layers=3, initializer_range=0.5)
        teacher = AutoModelForCausalLM.from_pretrained(models / "teacher")
        with torch.no_grad():
            teacher.lm_head.weight[load_tokenizer(str(models / "teacher")).eos_token_id] *= 3.0
        teacher.save_pretrained(models / "teacher")
    cfg = build(Config, {
        "model": {"student": str(models / "student"), "teacher": str(models / "teacher")},
        "data": {"train": [{"task": "arith", "limit": 64}], "views": {"max_response_tokens": 24}},
        "rollout": {"strategy": "skd", "policy": "top_k", "skd_top_k": 5, "gamma": 3, "max_new_tokens": 12},
        "loss": {"name": "fkl"},
        "train": {"output_dir": str(out), "max_steps": 6, "batch_size": 4, "grad_accum": grad_accum, "lr": 1e-2,
                  "warmup_steps": 0, "save_every": 0, "progress": False},
    })
    validate(cfg)
    return cfg


def test_fsdp2_on_two_processes_matches_one_when_the_ranks_rows_finish_at_different_times(tmp_path, monkeypatch):
    """configs/accelerate/fsdp.yaml (FSDP2: the student sharded by decoder layer) on 2 gloo processes against
    one process with the doubled batch: the ranks' rollouts run different numbers of student forwards in the same
    step (recorded), and nothing hangs or pairs the wrong collectives (rollouts run on the student gathered once:
    train.fsdp2_unsharded); every metric of the 6 steps and the final weights equal the one-process run's (DDP
    equals it too: the test above). Without the gathering, the rank that finishes first waits in the step's
    token-count all-reduce while the other waits in a forward's all-gather: the run hangs and fails at 240 s."""
    one_calls: list[int] = []
    real_rollout = train.step.make_rollout

    def recording_rollout(cfg, prompts, *args, **kwargs):
        rb = real_rollout(cfg, prompts, *args, **kwargs)
        one_calls.append(rb.stats.draft_calls)
        return rb

    monkeypatch.setattr(train.step, "make_rollout", recording_rollout)
    train.train_student(skd_config(tmp_path, tmp_path / "one", grad_accum=2))
    save_config(skd_config(tmp_path, tmp_path / "fsdp", grad_accum=1), tmp_path / "fsdp.yaml")
    record = launch_two(tmp_path, FSDP_CONFIG, tmp_path / "fsdp.yaml", timeout=240, SPECDISTILL_TEST_FSDP_ON_CPU="1")
    for r in (0, 1):  # really FSDP2: the student's parameters were DTensor shards
        backend = json.loads((record / f"backend-rank{r}.json").read_text())
        assert backend == {"distributed_type": "DistributedType.FSDP", "parameter_types": ["DTensor"]}, backend

    calls = [[json.loads(line) for line in (record / f"calls-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [list(c) for c in zip(*calls)] == [one_calls[i : i + 2] for i in range(0, 12, 2)]  # rank r: micro-batch r
    assert sum(a != b for a, b in zip(*calls)) >= 3, calls  # the ranks' forwards differ in most steps
    fsdp_rows, one_rows = rows(tmp_path / "fsdp"), rows(tmp_path / "one")
    assert sorted(fsdp_rows) == sorted(one_rows) == [1, 2, 3, 4, 5, 6]
    for s in one_rows:
        keys = {k for k in one_rows[s] if not k.startswith(UNTIMED)}
        assert keys == {k for k in fsdp_rows[s] if not k.startswith(UNTIMED)}
        for k in keys:
            assert fsdp_rows[s][k] == pytest.approx(one_rows[s][k], rel=1e-5, abs=1e-6), (s, k)
    fsdp, one = (checkpoint.read_safetensors(tmp_path / name / "final") for name in ("fsdp", "one"))
    assert fsdp.keys() == one.keys()
    for k, v in one.items():
        torch.testing.assert_close(fsdp[k], v, rtol=0, atol=1e-5)
