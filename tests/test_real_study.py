"""The real-model study's plan on tiny fixtures: its job list (counts, one budget and lr for every method, the
seeds), the budgets' estimate, the resume keys and reuse of finished jobs, the claims and verdicts on hand-made
numbers, and one end-to-end run on a tiny Llama family pair (no real model)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from specdistill.study import real as real_study
from specdistill.study.claims import aggregate, judge
from specdistill.study.real_plan import (METHODS, PLANS, UNDISTILLED, WARM_LABEL, estimate, job_folder,
                                         method_settings, plan_jobs, warm_settings)
from specdistill.study.real_report import headline, paper_claims, speed_claims
from specdistill.study.stats import HOLDS, REVERSED, UNDECIDED

DATA = {"train": "train.jsonl", "test": "test.jsonl", "folder": "."}


def full_jobs(tmp_path, plan=None):
    plan = plan or PLANS["full"]
    warm = {d: (f"warm{d}", warm_settings(plan, d, DATA)) for d in plan["depths"]}
    return plan_jobs(plan, DATA, tmp_path, "teacher", warm, {d: f"cut{d}" for d in plan["depths"]})


def test_the_job_list_gives_every_method_the_same_budget_and_seeds(tmp_path):
    plan = PLANS["full"]
    jobs = full_jobs(tmp_path)
    assert len(plan["depths"]) == 2 and plan["seeds"] >= 3 and len(METHODS) == 7
    assert len(jobs) == 2 * plan["seeds"] * (7 + 2)  # + the undistilled cut draft and the warm start, measured
    trained = [j for j in jobs if j["config"]]
    for label in [m.label for m in METHODS] + [UNDISTILLED, WARM_LABEL]:
        for depth in plan["depths"]:
            assert sorted(j["seed"] for j in jobs if (j["label"], j["depth"]) == (label, depth)) == [0, 1, 2]
    budgets = {tuple(o for o in j["overrides"] if o.split("=")[0] in ("train.max_steps", "train.lr",
                                                                        "train.batch_size", "rollout.max_new_tokens"))
               for j in trained}
    assert budgets == {(f"rollout.max_new_tokens={plan['max_new_tokens']}", f"train.max_steps={plan['steps']}",
                        f"train.batch_size={plan['batch_size']}", f"train.lr={plan['lr']}")}
    for j in trained:  # each starts from its depth's warm start
        assert f"model.student=warm{j['depth']}" in j["overrides"]
    assert len({j["out"] for j in jobs}) == len(jobs)


def test_the_estimates_fit_their_budgets():
    full, quick = estimate(PLANS["full"], 2), estimate(PLANS["quick"], 2)
    assert full["total"] <= 2.5 * 3600 and quick["total"] <= 20 * 60
    assert quick["total"] < full["total"]
    assert all(v > 0 for v in full.values()) and full["total"] == pytest.approx(
        sum(v for k, v in full.items() if k != "total"), abs=len(full))
    more = estimate({**PLANS["full"], "steps": 2 * PLANS["full"]["steps"]}, 2)
    assert more["training and acceptance (parallel)"] > full["training and acceptance (parallel)"]


def test_the_pace_probe_times_only_its_timed_call_and_scales_against_the_reference(monkeypatch):
    # a fake clock and model: the warm-up call (2 tokens) is not timed; the timed call writes 2 x 16 tokens in
    # 4 s, so 8 tokens/s, half the reference 16: pace 2.0 (a slower machine: every stage about twice its estimate)
    from specdistill.study import real_measure

    calls, ticks = [], iter([10.0, 14.0])
    monkeypatch.setattr(real_measure, "generate_ids", lambda model, tok, prompts, n, **kw: calls.append(
        (len(prompts), n)) or [[1] * n for _ in prompts])
    monkeypatch.setattr(real_measure.time, "perf_counter", lambda: next(ticks))
    monkeypatch.setattr(real_measure, "load_tokenizer", lambda path: "tok")
    monkeypatch.setattr(real_measure, "load_model", lambda path, tokenizer: torch.nn.Linear(1, 1))
    pace = real_measure.machine_pace("teacher", [[1, 2], [3, 4], [5, 6]], reference_tokens_per_s=16.0)
    assert calls == [(1, 2), (2, 16)]
    assert pace == {"tokens_per_s": 8.0, "reference_tokens_per_s": 16.0, "pace": 2.0}


def test_the_resume_key_follows_the_settings(tmp_path):
    plan, m = PLANS["full"], METHODS[0]
    warm = warm_settings(plan, 2, DATA)
    a = job_folder(tmp_path, "x", method_settings(plan, m, 2, 0, warm))
    assert a == job_folder(tmp_path, "x", method_settings(dict(plan), m, 2, 0, dict(warm)))
    assert a != job_folder(tmp_path, "x", method_settings({**plan, "steps": plan["steps"] + 1}, m, 2, 0, warm))
    assert a != job_folder(tmp_path, "x", method_settings(plan, m, 2, 1, warm))
    changed_warm = warm_settings({**plan, "warm_steps": 1}, 2, DATA)  # a new warm start: every method anew
    assert a != job_folder(tmp_path, "x", method_settings(plan, m, 2, 0, changed_warm))
    assert {j["out"] for j in full_jobs(tmp_path)} == {j["out"] for j in full_jobs(tmp_path)}


def rows_of(values: dict[tuple[str, str], list[float]], metric: str) -> list[dict]:
    return aggregate([{"world": w, "method": m, "seed": s, metric: v} for (w, m), vs in values.items()
                      for s, v in enumerate(vs)], (metric,))


def test_speed_claims_and_the_headline_on_hand_made_numbers():
    rows = rows_of({("6-layer", UNDISTILLED): [0.40, 0.42, 0.41], ("6-layer", "SKD"): [1.30, 1.25, 1.35],
                    ("6-layer", "SFT on gold"): [0.9, 1.1, 1.0], ("2-layer", UNDISTILLED): [0.5, 0.52, 0.51],
                    ("2-layer", "SKD"): [0.8, 0.82, 0.81]}, "measured_speedup")
    verdicts = {c.text: judge(c, rows)["verdict"] for c in speed_claims(rows) if judge(c, rows)}
    assert verdicts["6-layer, specdistill: the undistilled cut draft slows decoding"] == HOLDS
    assert verdicts["6-layer, specdistill: the SKD draft speeds decoding up"] == HOLDS
    assert verdicts["6-layer, specdistill: the SFT on gold draft speeds decoding up"] == UNDECIDED
    assert verdicts["2-layer, specdistill: the SKD draft speeds decoding up"] == REVERSED
    assert not any("llama.cpp" in t for t in verdicts)  # no llama.cpp figures: no llama.cpp verdict
    table = "\n".join(headline(rows))
    assert "| 6-layer | specdistill | 0.41 [" in table and "SKD: 1.30 [" in table
    lines = {line.split("|")[1].strip(): line for line in headline(rows)[2:]}
    assert lines["6-layer"].endswith(f"**{HOLDS}** |") and lines["2-layer"].endswith(f"**{REVERSED}** |")


def test_the_papers_claims_apply_per_depth():
    rows = rows_of({("6-layer", "SFT on gold"): [0.1, 0.2, 0.15], ("6-layer", "SKD"): [0.5, 0.6, 0.55]},
                   "acceptance_rate")
    claims = paper_claims(rows)
    judged = [judge(c, rows) for c in claims]
    texts = {j["claim"].text: j["verdict"] for j in judged if j}
    assert texts == {"6-layer: SKD's student is accepted more often than SFT's": HOLDS}
    assert all(c.world == "6-layer" for c in claims)


def tiny_gsm8k(folder: Path) -> Path:
    folder.mkdir()
    for split, n in (("train", 12), ("test", 6)):
        rows = [{"question": f"What is {i}+{i + 1}?", "answer": f"{i}+{i + 1}={2 * i + 1}\n#### {2 * i + 1}"}
                for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


TINY = {"depths": [1], "seeds": 2, "train_limit": 8, "answer_limit": 6, "test_limit": 4, "warm_steps": 2, "steps": 1,
        "batch_size": 4, "max_new_tokens": 8, "quality_new_tokens": 8, "bench_prompts": 2, "timing_prompts": 2,
        "timing_new_tokens": 6, "gammas": [1, 2], "cost_repeats": 1, "methods": ["SFT on gold", "supervised KD"],
        "peers": False, "llamacpp": False}


def test_the_plan_end_to_end_on_a_tiny_pair_and_its_resume(tmp_path):
    from families import get_family

    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(get_family("llama3").teacher, models / "smollm2-135m-instruct")
    data, out, page = tiny_gsm8k(tmp_path / "gsm8k"), tmp_path / "run", tmp_path / "docs" / "real.md"
    report = real_study.run_real(str(models), str(out), str(page), plan=TINY, data=str(data))
    methods = {r["method"] for r in report["rows"]}
    assert methods == {UNDISTILLED, WARM_LABEL, "SFT on gold", "supervised KD"}
    for row in report["rows"]:
        assert row["seeds"] == [0, 1] and row["world"] == "1-layer"
        for key in ("quality", "acceptance_rate", "sampled_acceptance_rate", "measured_speedup"):
            assert math.isfinite(row[key]), (row["method"], key)
    assert all(r["lossless"] and r["matches_target_greedy"] for r in report["runs"])
    text = page.read_text()
    assert "Distillation turns a cut draft" in text and "(img/real_speedup_per_method.png)" in text
    assert report["pace"]["tokens_per_s"] > 0 and f"pace {report['pace']['pace']:.2f}" in text
    assert (tmp_path / "docs" / "img" / "real_quality_vs_acceptance.png").stat().st_size > 1000
    # a second run reuses every finished job (the workers are spawned, so the files tell): nothing retrained
    finished = {p: p.stat().st_mtime_ns for p in out.glob("jobs/*/*.json")}
    weights = {p: p.stat().st_mtime_ns for p in out.glob("jobs/*/train/final/*.safetensors")}
    assert len(weights) == 2 * 2 + 1  # two methods x two seeds, and the warm start
    again = real_study.run_real(str(models), str(out), None, plan=TINY, data=str(data))
    assert {p: p.stat().st_mtime_ns for p in out.glob("jobs/*/*.json")} == finished
    assert {p: p.stat().st_mtime_ns for p in out.glob("jobs/*/train/final/*.safetensors")} == weights
    assert [r["quality"] for r in again["runs"]] == [r["quality"] for r in report["runs"]]
    # a changed budget is a new job: its folder is new, the old one stays
    real_study.run_real(str(models), str(out), None, plan={**TINY, "steps": 2, "methods": ["SFT on gold"],
                                                           "seeds": 1}, data=str(data))
    assert len(list(out.glob("jobs/sft_on_gold_1l_s0-*"))) == 2


def test_a_missing_data_folder_is_one_line(tmp_path, capsys):
    code = real_study.main(["--models", str(tmp_path), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert code == 2 and "no GSM8K copy" in capsys.readouterr().err


class FakeTimer:
    """A stand-in for real.Timer with hand-made speeds (gamma 2 best in both engines); it logs every call."""

    log: list = []
    speeds = {1: 0.8, 2: 1.2, 3: 1.1}

    def __init__(self, engine, plan, teacher, target_gguf):
        self.engine = engine

    def alone(self, prompts):
        self.log.append((self.engine, "alone", prompts))
        return {"tokens_per_s": 10.0, "index": len(self.log) - 1}

    def draft(self, run, prompts, gamma, alone):
        self.log.append((self.engine, run["method"], run["seed"], gamma, alone["index"], prompts))
        return {real_study.SPEEDUP[self.engine]: self.speeds[gamma]}


def test_timing_picks_each_engines_gamma_on_training_prompts_and_times_the_target_once_per_group(tmp_path,
                                                                                                 monkeypatch):
    from families import get_family
    from specdistill.study.real_measure import test_prompts

    teacher, data = str(get_family("llama3").teacher), tiny_gsm8k(tmp_path / "gsm8k")
    (data / "test.jsonl").write_text("".join(json.dumps({"question": f"What is {i}*2?", "answer": f"#### {2 * i}"})
                                             + "\n" for i in range(6)))
    paths = {"train": str(data / "train.jsonl"), "test": str(data / "test.jsonl"), "folder": str(data)}
    plan = {**PLANS["full"], **TINY, "gammas": [1, 2, 3], "llamacpp_gammas": [1, 3, 2], "llamacpp": True}

    def runs():
        return [{"world": "1-layer", "depth": 1, "seed": s, "method": m, "student": "x",
                 "out": str(tmp_path / f"{m}-{s}")} for s in (0, 1) for m in (UNDISTILLED, WARM_LABEL, "SKD")]

    monkeypatch.setattr(real_study, "Timer", FakeTimer)
    timed = runs()
    picked = real_study.time_drafts(timed, plan, paths, teacher, "target.gguf", tmp_path)
    train = [list(p) for p in test_prompts(paths["train"], plan["timing_prompts"], teacher)]
    test = [list(p) for p in test_prompts(paths["test"], plan["test_limit"], teacher)[: plan["timing_prompts"]]]
    assert train != test
    for engine in ("specdistill", "llamacpp"):
        assert picked[engine]["1"]["gamma"] == 2 and picked[engine]["1"]["by_gamma"] == {"1": 0.8, "2": 1.2,
                                                                                          "3": 1.1}
        calls = [c for c in FakeTimer.log if c[0] == engine]
        pick, rest = calls[:4], calls[4:]  # the target alone, then the warm start at each gamma, on training prompts
        assert [c[-1] for c in pick] == [train] * 4 and {c[1] for c in pick[1:]} == {WARM_LABEL}
        alones = [i for i, c in enumerate(FakeTimer.log) if c[0] == engine and c[1] == "alone"]
        assert len(alones) == 1 + 2  # the pick, then one per seed
        drafts = [c for c in rest if c[1] != "alone"]
        assert len(drafts) == 6 and {c[3] for c in drafts} == {2} and all(c[-1] == test for c in drafts)
        for c in drafts:  # each draft against the target alone timed just before its own seed's group
            assert c[4] == max(i for i in alones if i < FakeTimer.log.index(c))
            assert FakeTimer.log[c[4]][0] == engine
    assert {(r["measured_speedup"], r["llamacpp_speedup"]) for r in timed} == {(1.2, 1.2)}
    FakeTimer.log.clear()
    again = runs()
    real_study.time_drafts(again, plan, paths, teacher, "target.gguf", tmp_path)
    assert FakeTimer.log == [] and again == timed  # resumed: every figure read back, nothing timed again
