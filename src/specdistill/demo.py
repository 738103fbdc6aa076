"""`specdistill demo`: the built-in end-to-end run, offline on a CPU.

1. the teacher: the shipped built-in teacher, or retrained with `--retrain` (configs/builtin/teacher.yaml);
2. the student's warm start: SFT of the tiny student on the student view (configs/builtin/student.yaml);
3. evaluation of both on the test splits of `arith` and `facts`;
4. a report: report.md (also printed), report.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import DatasetConfig, load_config
from .data.records import load_records
from .data.tasks import get_task
from .evaluate.quality import evaluate_records
from .models import load_model, load_tokenizer
from .train import run_training

QUICK = {"student_steps": 120, "teacher_steps": 300, "eval_limit": 100}
FULL = {"student_steps": 400, "teacher_steps": 1600, "eval_limit": None}


def train_recipe(name: str, out: Path, steps: int, seed: int) -> tuple[Path, float]:
    """Run a built-in SFT recipe into out/<name>; return the model folder and the seconds it took."""
    cfg = load_config(f"configs/builtin/{name}.yaml", [
        f"train.output_dir={out / name}", f"train.max_steps={steps}", f"train.seed={seed}", "train.save_every=0"])
    start = time.perf_counter()
    run_training(cfg, sft=True)
    return out / name / "final", time.perf_counter() - start


def evaluate_model(path: str, view: str, limit: int | None) -> dict:
    """Exact match on both built-in test splits from one view."""
    tok = load_tokenizer(path)
    model = load_model(path, tokenizer=tok).eval()
    views = load_config("configs/builtin/teacher.yaml").data.views
    scores = {}
    for task in ("arith", "facts"):
        records = load_records(DatasetConfig(task=task, split="test"))[:limit]
        result = evaluate_records(model, tok, records, views, get_task(task).scorer, view, max_new_tokens=40, batch_size=64)
        scores[task] = result["exact_match"]
    return scores


def render_report(rows: list[dict]) -> str:
    lines = ["| model | view | arith exact match | facts exact match | training time (s) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['view']} | {r['arith']:.3f} | {r['facts']:.3f} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def run_demo(out: str = "runs/demo", quick: bool = False, retrain: bool = False, seed: int = 0) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = QUICK if quick else FULL
    if retrain:
        teacher, teacher_s = train_recipe("teacher", out_dir, plan["teacher_steps"], seed)
    else:
        teacher, teacher_s = "builtin-teacher", 0.0
    student, student_s = train_recipe("student", out_dir, plan["student_steps"], seed)
    rows = [
        {"model": "teacher", "view": "teacher (with knowledge)", "train_s": teacher_s,
         **evaluate_model(str(teacher), "teacher", plan["eval_limit"])},
        {"model": "teacher", "view": "student (closed book)", "train_s": teacher_s,
         **evaluate_model(str(teacher), "student", plan["eval_limit"])},
        {"model": "student (SFT)", "view": "student (closed book)", "train_s": student_s,
         **evaluate_model(str(student), "student", plan["eval_limit"])},
    ]
    report = {"quick": quick, "seed": seed, "teacher": str(teacher), "rows": rows}
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    table = render_report(rows)
    (out_dir / "report.md").write_text("# specdistill demo\n\n" + table + "\n")
    print(table)
    return report
