"""The real-model recipes in configs/recipes/: the seeds' settings as the issue states them, a dry run of every
recipe for 2 steps on tiny fixtures of the same architecture with local data, and hub datasets by id.

What the dry runs do not exercise on this CPU: the hub download (the dataset is swapped for a local file), the
real checkpoints (swapped for tests/families.py fixtures), DeepSpeed and the accelerate launch, the paired
GPU layout (the teacher shares the CPU), and the full lengths (responses are cut to a few tokens)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import pytest
import yaml

from conftest import SHARED_DATA
from families import get_family
from specdistill.config import ConfigError, DatasetConfig, FieldMap, load_config
from specdistill.data.records import DataError, load_records
from specdistill.data.tasks import load_task
from specdistill.train import train_student

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes"
GSM8K = SHARED_DATA / "gsm8k"
LUPI = SHARED_DATA / "lupi" / "korean_culture_train_200.json"
# The tiny fixture of each recipe's architecture (Gemma-1 has none: Gemma-2 is the closest, with the same
# tokenizer layout and chat markup; Qwen2 and Qwen2.5 share the qwen2 architecture).
FIXTURE = {"lupi_skd_qwen3": "qwen3", "skd_gsm8k_gemma": "gemma2", "skd_gsm8k_qwen2": "qwen2.5",
           "gkd_summarisation_qwen25": "qwen2.5"}


def recipe(name: str) -> dict:
    return yaml.safe_load((RECIPES / f"{name}.yaml").read_text())


def test_every_recipe_has_a_fixture_and_loads():
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted(FIXTURE)
    for name in FIXTURE:
        load_config(RECIPES / f"{name}.yaml")


def test_the_recipes_hold_the_seeds_settings():
    lupi = load_config(RECIPES / "lupi_skd_qwen3.yaml")
    assert (lupi.model.teacher, lupi.model.student) == ("Qwen/Qwen3-32B", "Qwen/Qwen3-4B")
    r, t = lupi.rollout, lupi.train
    assert (r.strategy, r.policy, r.skd_top_k, r.skd_min_prob, r.teacher_temperature) == ("skd", "top_k", 5, 0.05, 0.7)
    assert (r.gamma, r.gamma_schedule) == (20, "lupi") and lupi.model.teacher_device == "paired"
    assert t.lr == 1e-5 and t.min_lr_ratio == 0.0 and t.warmup_steps == math.ceil(0.1 * t.max_steps)
    assert t.max_steps == math.ceil(5 * 200 / (t.batch_size * t.grad_accum))  # 5 epochs of 200 records
    assert lupi.data.train[0].format == "lupi" and lupi.data.views.teacher_knowledge
    for name, pair in (("skd_gsm8k_gemma", ("google/gemma-7b-it", "google/gemma-2b-it")),
                       ("skd_gsm8k_qwen2", ("Qwen/Qwen2-7B-Instruct", "Qwen/Qwen2-0.5B-Instruct"))):
        cfg = load_config(RECIPES / f"{name}.yaml")
        r, t = cfg.rollout, cfg.train
        assert (cfg.model.teacher, cfg.model.student) == pair
        assert (r.strategy, r.skd_top_k, r.temperature, r.top_p, r.teacher_temperature, r.teacher_top_p) == \
            ("skd", 25, 0.5, 0.5, 0.2, 0.5)
        assert t.lr == 1e-5 and t.mixed_precision == "bf16" and cfg.model.teacher_dtype == "bfloat16"
        processes = 4  # the launch line in the recipe's header
        assert t.max_steps == math.ceil(3 * 7473 / (t.batch_size * t.grad_accum * processes))  # 3 epochs
        assert (cfg.data.train[0].hub, cfg.data.train[0].hub_config) == ("openai/gsm8k", "main")
        assert "deepspeed_zero2.yaml" in (RECIPES / f"{name}.yaml").read_text()
    gkd = load_config(RECIPES / "gkd_summarisation_qwen25.yaml")
    assert (gkd.model.teacher, gkd.model.student) == ("Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-0.5B")
    assert (gkd.loss.name, gkd.loss.temperature, gkd.rollout.strategy) == ("fkl", 2.0, "mixed")


# ---------------------------------------------------------------- dry runs
def summaries_file(path: Path) -> Path:
    """A local stand-in for XSum: {id, document, summary} rows."""
    rows = load_task("arith", "train", 0)[:8]
    path.write_text("".join(json.dumps({"id": f"doc{i}", "document": f"Report {i}. {r['response']}",
                                        "summary": r["query"]}) + "\n" for i, r in enumerate(rows)))
    return path


def local_data(name: str, tmp_path: Path) -> dict[str, Path]:
    """The local file that replaces each dataset of the recipe: split or path -> file."""
    if name.startswith("skd_gsm8k"):
        if not GSM8K.exists():
            pytest.skip(f"the GSM8K copy {GSM8K} is absent (the recipe reads openai/gsm8k from the hub)")
        return {"train": GSM8K / "train.jsonl", "test": GSM8K / "test.jsonl"}
    if name.startswith("lupi"):
        if not LUPI.exists():
            pytest.skip(f"the Korean LUPI set {LUPI} is absent")
        return {"train": LUPI}
    file = summaries_file(tmp_path / "summaries.jsonl")
    return {"train": file, "validation": file}


def dry_run_config(name: str, tmp_path: Path) -> Path:
    """The recipe with the tiny fixtures of its architecture, local data (8 records), the CPU for both models,
    and a 2-step budget with short responses; every other setting as the recipe has it."""
    data, fam, files = recipe(name), get_family(FIXTURE[name]), local_data(name, tmp_path)
    data["model"].update(teacher=str(fam.teacher), student=str(fam.student), teacher_device="auto")
    for ds in data["data"]["train"] + ([data["data"]["validation"]] if data["data"].get("validation") else []):
        ds.pop("hub", None), ds.pop("hub_config", None)
        ds.update(path=str(files[ds.get("split", "train")]), limit=8)
    data["data"]["views"]["max_response_tokens"] = 16
    data["rollout"]["max_new_tokens"] = 12
    data["train"].update(max_steps=2, batch_size=2, warmup_steps=1, eval_every=0, eval_samples=2, save_every=0,
                         output_dir=str(tmp_path / "run"), progress=False)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@pytest.mark.parametrize("name", sorted(FIXTURE))
def test_recipe_runs_two_steps_on_tiny_fixtures_of_its_architecture(name, tmp_path):
    """Each recipe for 2 steps, with its precision (bf16 autocast, a bf16 teacher): the SKD and LUPI-SKD recipes
    do the teacher's work once, their loss phase running no teacher forward (teacher/loss_forwards 0: the rollout's
    logits are used); GKD, whose rollouts do not run the teacher, runs one per micro-batch."""
    cfg = load_config(dry_run_config(name, tmp_path))
    assert cfg.train.mixed_precision == "bf16" and cfg.model.teacher_dtype == "bfloat16"
    train_student(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["train/loss"]) for r in steps)
    if cfg.rollout.strategy == "skd":
        assert all(0 <= r["rollout/token_acceptance"] <= 1 for r in steps)
        assert [r["teacher/loss_forwards"] for r in steps] == [0, 0]
    else:
        assert [r["teacher/loss_forwards"] for r in steps] == [cfg.train.grad_accum] * 2
    assert (tmp_path / "run" / "final" / "config.json").exists()


# ---------------------------------------------------------------- hub datasets by id
def test_a_hub_dataset_loads_through_datasets_by_id_config_and_split(monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        rows = [{"question": "Tom has 1,000 apples and eats 1. How many are left?",
                 "answer": "1000 - 1 = <<1000-1=999>>999\n#### 999"},
                {"question": "What is 2+2?", "answer": "#### 4"}]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DatasetConfig(hub="openai/gsm8k", hub_config="main", split="test",
                        fields=FieldMap(query=["question"], response=["answer"]), limit=1)
    (record,) = load_records(cfg)
    assert calls == [("openai/gsm8k", "main", "test")]
    assert record.query.startswith("Tom has 1,000") and record.response.endswith("#### 999") and record.id == "0"


def test_a_hub_dataset_that_cannot_load_names_itself(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"hub dataset 'openai/gsm8k' \(config 'main', split 'train'\).*no network"):
        load_records(DatasetConfig(hub="openai/gsm8k", hub_config="main"))


def test_a_bad_hub_record_is_named_by_its_hub_id_and_split(monkeypatch):
    rows = [{"question": "What is 2+2?", "answer": "#### 4"}, {"question": "", "answer": "#### 1"}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    cfg = DatasetConfig(hub="openai/gsm8k", hub_config="main", split="test",
                        fields=FieldMap(query=["question"], response=["answer"]))
    with pytest.raises(DataError) as caught:
        load_records(cfg)
    message = str(caught.value)
    assert message.startswith("hub openai/gsm8k (config main, split test): 1 bad record(s) of 2: ")
    assert "openai/gsm8k/test[1]: field 'question' is empty" in message and "None" not in message


def test_a_dataset_names_exactly_one_source(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of 'task', 'path' or 'hub'"):
        load_config(overrides=["data.train=[{task: arith, hub: openai/gsm8k}]"])
