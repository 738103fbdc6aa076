import json

import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from specdistill.cli import main


def test_sft_loss_falls_and_the_run_leaves_a_standard_model_folder(tmp_path, capsys):
    out = tmp_path / "sft"
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"student": "tiny-student", "teacher": None},
        "data": {"train": [{"task": "arith"}], "validation": {"task": "arith", "split": "validation"}},
        "rollout": {"max_new_tokens": 24},
        "train": {"output_dir": str(out), "max_steps": 30, "batch_size": 16, "lr": 3e-3, "warmup_steps": 3,
                  "eval_samples": 8, "progress": False},
    }))
    assert main(["sft", str(cfg), "--set", "train.seed=1"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert {"train/lr", "train/grad_norm", "throughput/tokens_per_s"} <= set(rows[0])
    final = [r for r in rows if "val/loss" in r][-1]
    assert final["step"] == 30 and 0 <= final["val/exact_match"] <= 1
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["seed"] == 1 and resolved["train"]["max_steps"] == 30
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tok = AutoTokenizer.from_pretrained(out / "final")
    assert model.config.num_hidden_layers == 2 and tok.chat_template
    assert (out / "samples.jsonl").exists()

    assert main(["eval", "--model", str(out / "final"), "--task", "arith", "--limit", "4", "--json", str(tmp_path / "e.json")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 4 and 0 <= summary["exact_match"] <= 1
    assert len(json.loads((tmp_path / "e.json").read_text())["samples"]) == 4
    assert main(["generate", "--model", str(out / "final"), "--prompt", "What is 2+3*4?", "--max-new-tokens", "8"]) == 0
