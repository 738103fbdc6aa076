"""The distributed path on a CPU: 6 SKD steps on 2 gloo processes under FSDP2 (configs/accelerate/fsdp.yaml)
and under DDP (ddp.yaml), against one process with the doubled batch. One JSON line last.

The run is tests/test_train_multiprocess.py's: tiny random Llamas with the built-in tokenizer (a 2-layer student,
a 3-layer teacher eager to end, so that the ranks' rows finish at different times), SKD with top_k K=5, gamma 3,
up to 12 new tokens, forward KL, batch 4 per process. accelerate 1.15 enables FSDP on accelerators only, so the
FSDP launch lets accelerate's state say FSDP as the test does (RECORDER); torch's FSDP2 shards the student over
gloo. `steps_s` is the 6 steps' own time (the metrics' time/rollout_s + time/loss_s, main process), `launch_s`
the whole command (process start, imports, model loading, checkpoint and final folder included; `run_s` for the
one process, which runs in the benchmark's own process: no start or imports); the figures
are medians over --rounds, the three runs taking turns.

    python benchmarks/fsdp_cpu.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def steps_seconds(out: Path) -> tuple[float, list[float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return sum(r["time/rollout_s"] + r["time/loss_s"] for r in rows), [r["train/loss"] for r in rows]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    from specdistill import train
    from specdistill.config import save_config
    from test_train_multiprocess import DDP_CONFIG, FSDP_CONFIG, launch_two, skd_config

    runs = {"fsdp": [], "ddp": [], "one_process": []}
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for r in range(args.rounds):
            began = time.perf_counter()
            train.train_student(skd_config(root, root / f"one-{r}", grad_accum=2))
            runs["one_process"].append((time.perf_counter() - began, *steps_seconds(root / f"one-{r}")))
            for name, accelerate_config, env in (("fsdp", FSDP_CONFIG, {"SPECDISTILL_TEST_FSDP_ON_CPU": "1"}),
                                                 ("ddp", DDP_CONFIG, {})):
                cfg = root / f"{name}-{r}.yaml"
                save_config(skd_config(root, root / f"{name}-{r}", grad_accum=1), cfg)
                began = time.perf_counter()
                launch_two(root, accelerate_config, cfg, timeout=600, **env)
                runs[name].append((time.perf_counter() - began, *steps_seconds(root / f"{name}-{r}")))
            print(json.dumps({k: v[-1][:2] for k, v in runs.items()}), flush=True)
    summary = {"steps": 6, "processes": 2, "rounds": args.rounds}
    one = runs["one_process"][-1][2]
    for name, rows in runs.items():  # one process runs in this process: its whole run, without a launch
        summary[f"{name}_{'run' if name == 'one_process' else 'launch'}_s"] = round(statistics.median(x[0] for x in rows), 2)
        summary[f"{name}_steps_s"] = round(statistics.median(x[1] for x in rows), 3)
        losses[name] = max(abs(a - b) / abs(b) for a, b in zip(rows[-1][2], one))
    summary["fsdp_steps_over_ddp"] = round(summary["fsdp_steps_s"] / summary["ddp_steps_s"], 3)
    summary["max_rel_loss_diff_fsdp_vs_one_process"] = losses["fsdp"]
    summary["max_rel_loss_diff_ddp_vs_one_process"] = losses["ddp"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
