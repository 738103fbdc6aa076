"""What the CPU tests cannot show, checked on CUDA in one command (under 8 minutes on one GPU). Prints one JSON
line last, with one entry per check ({"ok": bool, ...figures}); exits 1 if any check fails.

    python benchmarks/gpu_check.py [--families qwen3,gemma3] [--skd-steps 20]

Checks, on tiny random pairs in real families' formats (tests/families.py: padded vocabularies of different
sizes, lists of end ids, published chat templates, Gemma's sliding window):
- split:    teacher on cuda, student on cpu: speculative greedy decoding equals the teacher's own greedy
            decoding, and SKD sampling gives the tokens of the one-device run on cpu;
- paired:   the `paired` layout (student cuda:0, teacher cuda:1) where two GPUs are present;
- bf16:     bf16 weights on cuda: speculative greedy decoding against the target alone (share of rows equal);
- compiled: rollouts with compile=True give the eager tokens (fp32, cuda);
- generate: `specdistill generate --draft` on cuda (greedy) equals the teacher's own transformers greedy generate;
- skd:      `specdistill distill` with SKD for --skd-steps steps: student on cuda with the teacher on cpu, and
            bf16 on cuda with compiled rollouts; finite losses, acceptance logged, a final folder saved.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the family fixtures

from families import TEACHER_ROWS, TOKENIZER_SIZE, get_family  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from specdistill.cli import main as cli  # noqa: E402
from specdistill.data.templates import end_token_ids  # noqa: E402
from specdistill.engine import GREEDY, Sampling, generate, make_policy, sample  # noqa: E402
from specdistill.models import load_tokenizer  # noqa: E402

V = TOKENIZER_SIZE
CUDA = "cuda"  # --device cpu runs every check on the CPU instead (a dry run of this script)
QUESTIONS = ["What is 23+2*7?", "Name three colours of the sea.", "한국의 전통 음식은 무엇인가요?", "What is 5+5*5?"]


def batch(tok, texts, device):
    seqs = [tok(tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True),
                add_special_tokens=False).input_ids for t in texts]
    width = max(map(len, seqs))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.bool, device=device)
    return ids, mask


def pair(fam, student_device, teacher_device, dtype=torch.float32):
    load = lambda p, d: AutoModelForCausalLM.from_pretrained(p, dtype=dtype).to(d).eval()  # noqa: E731
    return load(fam.student, student_device), load(fam.teacher, teacher_device)


def spec(student, teacher, tok, s_dev, t_dev, policy, sampling=GREEDY, compile=False, seed=0):
    s_ids, s_mask = batch(tok, QUESTIONS, s_dev)
    t_ids, t_mask = batch(tok, QUESTIONS, t_dev)
    return generate(student, s_ids, s_mask, teacher, t_ids, t_mask, policy=policy, draft_sampling=sampling, gamma=3,
                    max_new_tokens=32, eos_token_id=end_token_ids(tok, teacher), vocab_size=V, seed=seed,
                    compile=compile).rows()


def alone(teacher, tok, device):
    ids, mask = batch(tok, QUESTIONS, device)
    return sample(teacher, ids, mask, max_new_tokens=32, eos_token_id=end_token_ids(tok, teacher), vocab_size=V,
                  chunk=1).rows()


def check_split(fam, tok):
    student, teacher = pair(fam, "cpu", CUDA)
    greedy = spec(student, teacher, tok, "cpu", CUDA, make_policy("greedy"))
    skd = make_policy("top_k", k=5, target=Sampling(1.0))
    split_skd = spec(student, teacher, tok, "cpu", CUDA, skd, Sampling(1.0))
    cpu_student, cpu_teacher = pair(fam, "cpu", "cpu")
    one_device = spec(cpu_student, cpu_teacher, tok, "cpu", "cpu", skd, Sampling(1.0))
    same = sum(a == b for a, b in zip(split_skd, one_device))
    base = alone(teacher, tok, CUDA)
    return {"ok": greedy == base and same >= len(QUESTIONS) - 1, "greedy_lossless": greedy == base,
            "greedy_rows_equal": f"{sum(a == b for a, b in zip(greedy, base))}/{len(QUESTIONS)}",
            "gaps_where_rows_differ": divergence_gaps(teacher, tok, greedy, base),
            "skd_rows_equal_to_cpu": f"{same}/{len(QUESTIONS)}"}


@torch.no_grad()
def divergence_gaps(teacher, tok, rows, reference) -> list[float]:
    """For each row that differs from its reference, the teacher's gap between its two best logits (one full
    forward, fp32) at the first differing position: a near-tie (gap ~1e-6) is rounding, not a wrong token."""
    gaps = []
    for question, row, ref in zip(QUESTIONS, rows, reference):
        j = next((j for j, (a, b) in enumerate(zip(row, ref)) if a != b), None)
        if j is None:
            continue
        ids, _ = batch(tok, [question], CUDA)
        ids = torch.cat([ids, torch.tensor([ref[:j]], dtype=torch.long, device=ids.device)], 1)
        top = teacher(ids).logits[0, -1, :V].float().topk(2).values
        gaps.append(float(top[0] - top[1]))
    return gaps


def check_paired(fam, tok):
    if CUDA != "cuda" or torch.cuda.device_count() < 2:
        return {"ok": True, "skipped": f"{torch.cuda.device_count()} GPU(s); the paired layout needs 2"}
    student, teacher = pair(fam, "cuda:0", "cuda:1")
    greedy = spec(student, teacher, tok, "cuda:0", "cuda:1", make_policy("greedy"))
    return {"ok": greedy == alone(teacher, tok, "cuda:1")}


def check_bf16(fam, tok):
    student, teacher = pair(fam, CUDA, CUDA, torch.bfloat16)
    greedy = spec(student, teacher, tok, CUDA, CUDA, make_policy("greedy"))
    base = alone(teacher, tok, CUDA)
    equal = sum(a == b for a, b in zip(greedy, base))
    in_range = all(0 <= t < V for row in greedy for t in row)
    # bf16 logits of a block forward and of one-token forwards may round differently; rows may then diverge.
    return {"ok": in_range and equal >= len(QUESTIONS) // 2, "rows_equal_to_target_alone": f"{equal}/{len(QUESTIONS)}"}


def check_compiled(fam, tok):
    student, teacher = pair(fam, CUDA, CUDA)
    skd = make_policy("top_k", k=5, target=Sampling(1.0))
    eager = spec(student, teacher, tok, CUDA, CUDA, skd, Sampling(1.0))
    began = time.perf_counter()
    compiled = spec(student, teacher, tok, CUDA, CUDA, skd, Sampling(1.0), compile=True)
    first_s = time.perf_counter() - began
    again = spec(student, teacher, tok, CUDA, CUDA, skd, Sampling(1.0), compile=True, seed=1)
    return {"ok": compiled == eager and len(again) == len(QUESTIONS), "first_compiled_run_s": round(first_s, 1)}


def check_generate(fam, tok, tmp: Path):
    out = tmp / "generate.json"
    code = cli(["generate", "--model", str(fam.teacher), "--draft", str(fam.student), "--prompt", QUESTIONS[0],
                "--device", CUDA, "--max-new-tokens", "32", "--json", str(out)])
    ours = json.loads(out.read_text())["outputs"][0]["token_ids"] if code == 0 else None
    teacher = AutoModelForCausalLM.from_pretrained(fam.teacher).to(CUDA).eval()
    ids, _ = batch(tok, QUESTIONS[:1], CUDA)
    ends = end_token_ids(tok, teacher)
    hf = teacher.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=32,
                          eos_token_id=ends, pad_token_id=tok.pad_token_id,
                          suppress_tokens=list(range(V, TEACHER_ROWS)))[0, ids.shape[1]:].tolist()
    cut = next((j for j, t in enumerate(hf) if t in ends), None)
    hf = hf if cut is None else hf[: cut + 1]
    return {"ok": code == 0 and ours == hf, "rc": code, "tokens": len(ours or [])}


def check_skd(fam, tmp: Path, steps: int):
    results = {}
    for name, model, rollout in (
        ("student_cuda_teacher_cpu", {"student_device": CUDA, "teacher_device": "cpu"}, {}),
        ("bf16_compiled", {"student_dtype": "bfloat16", "teacher_dtype": "bfloat16"}, {"compile": True}),
    ):
        out = tmp / name
        cfg = {"model": {"teacher": str(fam.teacher), "student": str(fam.student), **model},
               "data": {"train": [{"task": "arith"}]},
               "rollout": {"strategy": "skd", "policy": "top_k", "skd_top_k": 5, "gamma": 3, "max_new_tokens": 24, **rollout},
               "loss": {"name": "fkl"},
               "train": {"output_dir": str(out), "max_steps": steps, "batch_size": 8, "lr": 1e-3, "warmup_steps": 2,
                         "progress": False}}
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        began = time.perf_counter()
        code = cli(["distill", str(path)])
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] if code == 0 else []
        ok = (code == 0 and len(rows) == steps and all(math.isfinite(r["train/loss"]) for r in rows)
              and all("rollout/acceptance_rate" in r for r in rows) and (out / "final" / "config.json").exists())
        results[name] = {"ok": ok, "rc": code, "seconds": round(time.perf_counter() - began, 1),
                         "last_loss": rows[-1]["train/loss"] if rows else None,
                         "acceptance": rows[-1].get("rollout/acceptance_rate") if rows else None}
    return {"ok": all(r["ok"] for r in results.values()), **results}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default="qwen3,gemma3")
    p.add_argument("--skd-steps", type=int, default=20)
    p.add_argument("--device", default="cuda", help="cpu: a dry run of the same checks on the CPU")
    p.add_argument("--checks", default="split,paired,bf16,compiled,generate,skd", help="which checks to run")
    args = p.parse_args()
    global CUDA
    CUDA = args.device
    if CUDA == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"ok": False, "error": "no CUDA device"}))
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 comparisons of block and one-token forwards
    torch.backends.cudnn.allow_tf32 = False
    gpu = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}" if CUDA == "cuda" else "cpu (dry run)"
    report = {"machine": f"{gpu}, {platform.machine()}",
              "torch": torch.__version__}
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    for name in args.families.split(","):
        fam, tok = get_family(name), load_tokenizer(str(get_family(name).teacher))
        checks = {"split": lambda: check_split(fam, tok), "paired": lambda: check_paired(fam, tok),
                  "bf16": lambda: check_bf16(fam, tok), "compiled": lambda: check_compiled(fam, tok),
                  "generate": lambda: check_generate(fam, tok, tmp)}
        if name == args.families.split(",")[0]:
            checks["skd"] = lambda: check_skd(fam, tmp, args.skd_steps)
        checks = {k: v for k, v in checks.items() if k in args.checks.split(",")}
        for check, run in checks.items():
            began = time.perf_counter()
            try:
                result = run()
            except Exception as exc:  # noqa: BLE001 - report every check, then fail
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-800:]}
            result["s"] = round(time.perf_counter() - began, 1)
            report[f"{name}/{check}"] = result
            print(f"{name}/{check}: {json.dumps(result)}", file=sys.stderr, flush=True)
    report["ok"] = all(v["ok"] for k, v in report.items() if isinstance(v, dict))
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
