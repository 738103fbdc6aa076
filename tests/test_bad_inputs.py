"""A catalogue of users' mistakes: each bad input, through the command line in-process, ends in exit code 2 and
one line on stderr (`specdistill <command>: error: ...`) that names the input and what to do, with no
traceback; the files that were there are left exactly as they were, and nothing new is written.

Config, data, models, checkpoints and every command. Tiny models only (presets, one saved tiny Llama folder)
and one 2-step run shared by the checkpoint cases, so the whole catalogue runs in well under a minute.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import save_tiny_model
from specdistill.cli import main
from specdistill.data.tasks import load_task

ARITH = load_task("arith", "train", 0)[:8]


# ---------------------------------------------------------------- the world the cases share
class World:
    """Files built once for the module: a good data file, a tiny model folder, and a finished 2-step run whose
    checkpoints (steps 1 and 2) the checkpoint cases copy and damage."""

    def __init__(self, root: Path):
        self.root = root
        self.good = write_jsonl(root / "good.jsonl", [{"id": r["id"], "query": r["query"], "response": r["response"]}
                                                     for r in ARITH])
        self.model = save_tiny_model(root / "tiny-llama")
        self.run = root / "template-run"
        code = main(["sft", str(config(root / "template.yaml", self.run))])
        assert code == 0 and (self.run / "checkpoints" / "step-00000002").is_dir()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def config(path: Path, out: Path, **sections) -> Path:
    """A tiny SFT config (2 steps of 2 records, a checkpoint at each) writing to `out`; sections update it."""
    cfg = {"model": {"student": "tiny-student", "teacher": None},
           "data": {"train": [{"task": "arith", "limit": 8}]},
           "rollout": {"max_new_tokens": 4},
           "train": {"output_dir": str(out), "max_steps": 2, "batch_size": 2, "warmup_steps": 0, "save_every": 1,
                     "progress": False, "eval_samples": 2}}
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("world"))


def snapshot(paths: list[Path]) -> dict:
    """Every file under `paths` with a hash of its bytes (folders: their listing), to show nothing changed."""
    seen = {}
    for root in paths:
        for p in sorted([root, *root.rglob("*")]) if root.exists() else []:
            seen[str(p)] = "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
        seen.setdefault(str(root), "absent")
    return seen


# ---------------------------------------------------------------- case builders
# Each builder gets (world, tmp) and returns (argv, paths to watch). A case's own output folder is tmp/"run".
def sft(*overrides, **sections):
    """`specdistill sft <tiny config> --set ...`."""
    def build(w, tmp):
        cfg = config(tmp / "c.yaml", tmp / "run", **sections)
        return ["sft", cfg, *[a for o in overrides for a in ("--set", o)]], [cfg]
    return build


def sft_data(make, **dataset):
    """`specdistill sft` on a data file that make(tmp) writes; the file is watched."""
    def build(w, tmp):
        path = make(tmp)
        cfg = config(tmp / "c.yaml", tmp / "run", data={"train": [{"path": str(path), **dataset}]})
        return ["sft", cfg], [path, cfg]
    return build


def data_check(make, *extra):
    def build(w, tmp):
        path = make(tmp)
        return ["data", "check", path, *extra], [path]
    return build


def config_file(text: bytes | str):
    def build(w, tmp):
        path = tmp / "c.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["sft", path], [path]
    return build


def cli(*argv):
    """A command whose argv may name the world's files: {model}, {good}, {tmp}."""
    def build(w, tmp):
        fill = {"model": str(w.model), "good": str(w.good), "tmp": str(tmp)}
        return [a.format(**fill) if isinstance(a, str) else a for a in argv], [w.good, w.model]
    return build


def with_file(name: str, content: bytes | str, *argv):
    """A command given a file `name` in tmp (written with `content`) as {file}."""
    def build(w, tmp):
        path = tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        fill = {"model": str(w.model), "good": str(w.good), "tmp": str(tmp), "file": str(path)}
        return [a.format(**fill) for a in argv], [path, w.model]
    return build


def tiny_gguf(path: Path, arch: str = "llama", cut: int = 0) -> Path:
    """A small GGUF file written with the gguf package's writer (one 64 x 64 tensor), its last `cut` bytes cut."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((64, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if cut:
        path.write_bytes(path.read_bytes()[:-cut])
    return path


def with_gguf(*argv, **make):
    """A command given tmp/m.gguf (tiny_gguf(**make)) as {file}."""
    def build(w, tmp):
        path = tiny_gguf(tmp / "m.gguf", **make)
        fill = {"model": str(w.model), "good": str(w.good), "tmp": str(tmp), "file": str(path)}
        return [a.format(**fill) for a in argv], [path, w.model]
    return build


def export_qwen2(w, tmp):
    """`export` of a tiny Qwen2 folder: an architecture export does not write."""
    folder = save_tiny_model(tmp / "qwen2", "qwen2")
    return ["export", folder, tmp / "o.gguf"], [folder]


def run_copy(damage=None, *overrides, resume="auto", **sections):
    """The template run copied to tmp/run (optionally damaged), then `sft` with the same config plus overrides."""
    def build(w, tmp):
        shutil.copytree(w.run, tmp / "run")
        if damage:
            damage(tmp / "run")
        cfg = config(tmp / "c.yaml", tmp / "run", **sections)
        extra = [a for o in overrides for a in ("--set", o)]
        return ["sft", cfg, *(["--set", f"train.resume={resume}"] if resume else []), *extra], [tmp / "run"]
    return build


def init_draft(layers: str, out: str = "{tmp}/draft", source: str = "{model}"):
    """`specdistill init-draft` of the world's tiny model; the draft folder must not appear."""
    def build(w, tmp):
        fill = {"model": str(w.model), "good": str(w.good), "tmp": str(tmp)}
        return (["init-draft", "--from", source.format(**fill), "--layers", layers, "--out", out.format(**fill)],
                [w.good, w.model, tmp / "draft"])
    return build


def rows(*extra) -> list[dict]:
    return [{"id": r["id"], "query": r["query"], "response": r["response"]} for r in ARITH[:3]] + list(extra)


def jsonl(rows_, name="d.jsonl"):
    return lambda tmp: write_jsonl(tmp / name, rows_)


def raw(name: str, content: bytes | str):
    def make(tmp):
        path = tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path
    return make


def parquet(rows_):
    def make(tmp):
        path = tmp / "d.parquet"
        pd.DataFrame(rows_).to_parquet(path)
        return path
    return make


def truncate(rel: str, keep: float = 0.5):
    def damage(run: Path):
        f = run / rel
        f.write_bytes(f.read_bytes()[: int(f.stat().st_size * keep)])
    return damage


def overwrite(rel: str, content: bytes):
    def damage(run: Path):
        (run / rel).write_bytes(content)
    return damage


class NotATensor:  # a pickled object that torch.load(weights_only=True) must refuse
    pass


def unsafe_pickle(rel: str):
    def damage(run: Path):
        torch.save({"state": NotATensor()}, run / rel)
    return damage


# ---- damaged model folders: the world's tiny model copied to tmp/broken, damaged, given to a command
def bad_model(damage, command: str):
    """`command` (generate, bench, eval or distill) reading a copy of the world's tiny model folder that damage(folder)
    broke: as --model (generate, eval), as bench's --draft, as distill's model.teacher."""
    def build(w, tmp):
        folder = tmp / "broken"
        shutil.copytree(w.model, folder)
        damage(folder)
        argv = {"generate": ["generate", "--model", folder, "--prompt", "hi", "--max-new-tokens", "2"],
                "bench": ["bench", "--target", w.model, "--draft", folder, "--limit", "1", "--max-new-tokens", "2",
                          "--repeats", "1"],
                "eval": ["eval", "--model", folder, "--task", "arith", "--limit", "1", "--max-new-tokens", "2"],
                "distill": ["distill", config(tmp / "c.yaml", tmp / "run", loss={"name": "fkl"},
                                              model={"student": str(w.model), "teacher": str(folder)})]}[command]
        return argv, [folder, w.model]
    return build


def as_pickled_weights(obj=None, keep: float = 1.0):
    """The folder's weights as a pytorch_model.bin (its safetensors removed): its state dict, or `obj`, cut to
    `keep` of its bytes."""
    def damage(folder: Path):
        from transformers import AutoModelForCausalLM

        state = AutoModelForCausalLM.from_pretrained(folder).state_dict() if obj is None else obj
        (folder / "model.safetensors").unlink()
        torch.save(state, folder / "pytorch_model.bin")
        truncate("pytorch_model.bin", keep)(folder)
    return damage


def missing_shard(folder: Path):
    """Saved in shards with their index (as hub checkpoints are), then the second shard deleted."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder, max_shard_size="20KB")
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and (folder / "model.safetensors.index.json").is_file()
    shards[1].unlink()


def wrong_shape_in_header(folder: Path):
    """A header whose first tensor's shape is doubled (same length, same offsets): the file is as long as its
    header says, so only safetensors' own read finds it (the error transformers raises is turned into one line)."""
    f = folder / "model.safetensors"
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    first = next(k for k in header if k != "__metadata__")
    header[first]["shape"][0] *= 2
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    f.write_bytes(data[:8] + text.ljust(n) + data[8 + n :])


MODEL_DAMAGE = {  # name -> (damage, words of the message besides the file's name and what to do)
    "truncated": (truncate("model.safetensors"), ["model.safetensors is", "bytes, but its header says", "truncated"]),
    "empty": (overwrite("model.safetensors", b""), ["model.safetensors is empty"]),
    "missing-shard": (missing_shard, ["model.safetensors.index.json lists", "1 are missing", "model-00002-of-"]),
    "unsafe-pickle": (as_pickled_weights({"weight": NotATensor()}),
                      ["pytorch_model.bin holds objects other than tensors", "weights_only=True"]),
    "bad-header": (wrong_shape_in_header, ["model.safetensors cannot be read", "invalid shape"]),
}
MODEL_DAMAGE_ONCE = {  # each in one command
    "generate": ("truncated-bin", as_pickled_weights(keep=0.5), ["pytorch_model.bin is not a whole torch file"]),
    "eval": ("empty-bin", as_pickled_weights(keep=0.0), ["pytorch_model.bin is empty"]),
}
MODEL_CASES = [(f"model-{name}-{command}", bad_model(damage, command), [*words, "download the folder again"])
               for command in ("generate", "bench", "eval", "distill") for name, (damage, words) in MODEL_DAMAGE.items()]
MODEL_CASES += [(f"model-{name}-{command}", bad_model(damage, command), [*words, "download the folder again"])
                for command, (name, damage, words) in MODEL_DAMAGE_ONCE.items()]


LONG = "x" * 1100  # longer than the presets' 1024 positions
KOREAN = "한국의 전통 가옥은 어떻게 난방하나요?"
CKPT1 = "step-00000001"

# (id, builder, words the one-line message must hold)
CASES = [
    # ---- config values: finite numbers, counts, schedules that can train
    ("lr-inf", sft("train.lr=.inf"), ["train.lr", "finite"]),
    ("lr-nan", sft("train.lr=nan"), ["train.lr", "finite"]),
    ("lr-zero", sft("train.lr=0"), ["train.lr", "> 0"]),
    ("lr-negative", sft("train.lr=-1e-3"), ["train.lr", "> 0"]),
    ("max-steps-zero", sft("train.max_steps=0"), ["max_steps", ">= 1"]),
    ("max-steps-huge", sft("train.max_steps=99999999999999999999999"), ["train.max_steps", "too large"]),
    ("max-steps-text", sft("train.max_steps=abc"), ["train.max_steps", "expected int", "'abc'"]),
    ("batch-size-negative", sft("train.batch_size=-2"), ["batch_size", ">= 1"]),
    ("warmup-negative", sft("train.warmup_steps=-1"), ["train.warmup_steps", ">= 0"]),
    ("warmup-one-step", sft("train.warmup_steps=5", "train.max_steps=1"), ["train.warmup_steps", "would not train"]),
    ("weight-decay-negative", sft("train.weight_decay=-0.1"), ["train.weight_decay", ">= 0"]),
    ("min-lr-ratio", sft("train.min_lr_ratio=2"), ["train.min_lr_ratio", "[0, 1]"]),
    ("seed-negative", sft("train.seed=-1"), ["train.seed", ">= 0"]),
    ("eval-samples-zero", sft("train.eval_samples=0"), ["train.eval_samples", ">= 1"]),
    ("keep-last-zero", sft("train.keep_last=0"), ["train.keep_last", ">= 1"]),
    ("grad-norm-negative", sft("train.max_grad_norm=-1"), ["train.max_grad_norm", ">= 0"]),
    ("log-every-zero", sft("train.log_every=0"), ["train.log_every", ">= 1"]),
    ("save-every-negative", sft("train.save_every=-1"), ["train.save_every", ">= 0"]),
    ("tracker-unknown", sft("train.trackers=[mlflow]"), ["train.trackers", "'mlflow'", "tensorboard, wandb"]),
    ("precision-unknown", sft("train.mixed_precision=fp8"), ["train.mixed_precision", "'fp8'", "bf16"]),
    ("key-typo", sft("train.lrr=1"), ["unknown config key 'train.lrr'", "did you mean 'train.lr'"]),
    ("key-renamed", sft("rollout.top_k=5"), ["rollout.top_k", "renamed", "rollout.skd_top_k"]),
    ("temperature-negative", sft("rollout.temperature=-1"), ["rollout.temperature", ">= 0"]),
    ("top-p-zero", sft("rollout.top_p=0"), ["rollout.top_p", "(0, 1]"]),
    ("gamma-zero", sft("rollout.gamma=0"), ["rollout.gamma", "[1, rollout.max_gamma"]),
    ("lam-over-one", sft("rollout.lam=1.5"), ["rollout.lam", "[0, 1]"]),
    ("ema-zero", sft("rollout.ema=0"), ["rollout.ema", "(0, 1]"]),
    ("entropy-gain-negative", sft("rollout.entropy_gain=-1"), ["rollout.entropy_gain", ">= 0"]),
    ("strategy-unknown", sft("rollout.strategy=skdd"), ["rollout.strategy", "'skdd'", "dataset, teacher"]),
    ("beta-over-one", sft("loss.beta=2"), ["loss.beta", "[0, 1]"]),
    ("loss-temperature-zero", sft("loss.temperature=0"), ["loss.temperature", "> 0"]),
    ("rank-top-k-one", sft("loss.rank_top_k=1"), ["loss.rank_top_k", ">= 2"]),
    ("chunk-size-zero", sft("loss.chunk_size=0"), ["loss.chunk_size", ">= 1"]),
    ("sparse-top-k-zero", sft("loss.sparse_top_k=0"), ["loss.sparse_top_k", ">= 1 or null"]),
    ("lora-dropout-one", sft("model.lora.dropout=1"), ["model.lora.dropout", "[0, 1)"]),
    ("lora-rank-zero", sft("model.lora.r=0"), ["model.lora.r", ">= 1"]),
    ("device-unknown", sft("model.student_device=gpu"), ["model.student_device", "'gpu'", "not a device"]),
    ("device-absent", sft("model.teacher_device=cuda:99"), ["model.teacher_device", "cuda:99"]),
    ("train-empty", sft("data.train=[]"), ["data.train", "at least one dataset"]),
    ("task-unknown", sft("data.train=[{task: nope}]"), ["data.train[0].task", "'nope'", "arith, arith_styles, facts, grids"]),
    ("task-and-path", sft("data.train=[{task: arith, path: x.jsonl}]"), ["data.train[0]", "exactly one"]),
    ("limit-negative", sft("data.train=[{task: arith, limit: -3}]"), ["data.train[0].limit", ">= 1"]),
    ("limit-zero", sft("data.train=[{task: arith, limit: 0}]"), ["data.train[0].limit", ">= 1"]),
    ("weight-negative", sft("data.train=[{task: arith, weight: -1}]"), ["data.train[0].weight", ">= 0"]),
    ("prompt-limit-zero", sft("data.views.max_prompt_tokens=0"), ["data.views.max_prompt_tokens", ">= 1"]),
    ("prompt-limit-negative", sft("data.views.max_prompt_tokens=-5"), ["data.views.max_prompt_tokens", ">= 1"]),
    ("response-limit-one", sft("data.views.max_response_tokens=1"), ["data.views.max_response_tokens", ">= 2"]),
    ("template-unknown-field", sft("data.views.knowledge_template='{knowledge} {question}'"),
     ["knowledge_template", "{question}", "{knowledge} and {query}"]),
    ("template-without-knowledge", sft("data.views.knowledge_template='Q: {query}'"),
     ["knowledge_template", "both", "teacher_knowledge: false"]),
    ("template-open-brace", sft("data.views.knowledge_template='{query'"), ["knowledge_template", "brace"]),
    ("few-shot-shape", sft("data.views.few_shot=[{query: q}]"),
     ["data.views.few_shot[0]", "{query: text, response: text}"]),
    ("schedule-start", sft("data.schedule=[{start: 1.5, weights: [1]}]"), ["data.schedule[0].start", "[0, 1)"]),
    ("data-seed-negative", sft("data.seed=-1"), ["data.seed", ">= 0"]),
    # ---- --set and the config file itself
    ("set-no-equals", sft("trainmax_steps"), ["trainmax_steps", "section.field=value"]),
    ("set-broken-yaml", sft("train.lr=["), ["train.lr=[", "not valid YAML", "line 1, column 2"]),
    ("set-empty-key", sft(".lr=1"), ["'.lr=1'", "section.field"]),
    ("set-into-value", sft("train.max_steps.x=1"), ["'max_steps' is not a section"]),
    ("config-empty", config_file(""), ["c.yaml", "the file is empty"]),
    ("config-list", config_file("- 1\n- 2\n"), ["c.yaml", "must be a mapping"]),
    ("config-broken-yaml", config_file("train: [unclosed\n"), ["c.yaml", "not valid YAML", "line 2"]),
    ("config-not-utf8", config_file(b"train:\n  output_dir: \xff\xfe\n"), ["c.yaml", "not UTF-8"]),
    ("config-section-typo", config_file("trian:\n  lr: 1\n"), ["unknown config key 'trian'", "did you mean 'train'"]),
    ("config-missing", cli("sft", "{tmp}/none.yaml"), ["config file not found", "none.yaml"]),
    ("config-folder", cli("sft", "{tmp}"), ["is a folder", "YAML config"]),
    # ---- models
    ("warm-start-missing", lambda w, tmp: (["distill", "configs/skd.yaml", "--set", f"train.output_dir={tmp}/run"], []),
     ["model.student=runs/builtin/student/final", "no such folder", "specdistill sft configs/builtin/student.yaml"]),
    ("student-missing", sft("model.student=./no/such/model"), ["model.student=./no/such/model", "no such folder"]),
    ("student-is-file", lambda w, tmp: sft(f"model.student={w.good}")(w, tmp),
     ["model.student=", "good.jsonl", "is a file"]),
    ("student-no-config", lambda w, tmp: (tmp / "empty").mkdir() or sft(f"model.student={tmp / 'empty'}")(w, tmp),
     ["model.student=", "no config.json"]),
    ("student-empty", sft("model.student=''"), ["model.student", "give a model"]),
    ("teacher-none-for-kd", lambda w, tmp: (["distill", config(tmp / "c.yaml", tmp / "run", loss={"name": "fkl"})],
                                            []), ["needs a teacher", "model.teacher"]),
    ("teacher-missing", lambda w, tmp: (["distill", config(tmp / "c.yaml", tmp / "run", loss={"name": "fkl"},
                                                           model={"student": "tiny-student",
                                                                  "teacher": "runs/nope/final"})], []),
     ["model.teacher=runs/nope/final", "no such folder", "final/ when it finishes"]),
    # ---- data, through training
    ("data-missing", sft_data(lambda tmp: tmp / "none.jsonl"), ["data file not found", "none.jsonl"]),
    ("data-format-unknown", sft_data(raw("d.txt", "query\n")), ["cannot tell the format", "'.txt'"]),
    ("data-folder", sft_data(lambda tmp: tmp), ["is a folder", "data file"]),
    ("data-empty", sft_data(raw("d.jsonl", "")), ["d.jsonl", "holds no records"]),
    ("data-broken-line", sft_data(raw("d.jsonl", json.dumps(rows()[0]) + "\n{\"query\": \n")),
     ["d.jsonl:2", "broken JSON", "data check"]),
    ("data-not-utf8", sft_data(raw("d.jsonl", (json.dumps(rows()[0]) + "\n").encode() + b'{"query": "caf\xe9"}\n')),
     ["d.jsonl:2", "not UTF-8", "byte offset"]),
    ("data-int-query", sft_data(jsonl(rows({"id": "n", "query": 42}))),
     ["d.jsonl:4", "'query' must be a string", "int 42"]),
    ("data-no-query", sft_data(jsonl(rows({"id": "n", "prompt_text": "q"}))), ["d.jsonl:4", "missing query field",
                                                                               "keys present: id, prompt_text"]),
    ("data-duplicate-id", sft_data(jsonl(rows(dict(rows()[0])))), ["d.jsonl:4", "repeats the id", "d.jsonl:1"]),
    ("data-empty-response", sft_data(jsonl(rows({"id": "e", "query": "q", "response": " "}))),
     ["d.jsonl:4", "'response' is empty"]),
    ("data-json-object", sft_data(raw("d.json", '{"rows": []}'), format="json"),
     ["d.json", "must be a list of objects", "rows"]),
    ("data-csv-extra-cell", sft_data(raw("d.csv", "query,response\nq,a\nq2,a2,extra\n")), ["d.csv:3", "3 cells",
                                                                                            "header has 2"]),
    ("data-parquet-garbage", sft_data(raw("d.parquet", b"not parquet at all")),
     ["d.parquet", "cannot read as parquet"]),
    ("data-parquet-int-query", sft_data(parquet([{"query": 1, "response": "a"}])),
     ["d.parquet[0]", "must be a string"]),
    ("data-lupi-keys", sft_data(raw("d.json", json.dumps(rows())), format="lupi"),
     ["d.json[0]", "format lupi needs the keys", "'category'"]),
    ("data-unencodable", sft_data(jsonl(rows({"id": "ko", "query": KOREAN, "response": "ok"}))),
     ["record ko (d.jsonl:4), its query", "unknown", "'한'"]),
    # ---- checkpoints and run folders
    ("run-folder-used", run_copy(None, resume=None),
     ["already holds files", "train.resume=auto", "train.overwrite=true"]),
    ("output-is-file", lambda w, tmp: (["sft", config(tmp / "c.yaml", w.good)], [w.good]),
     ["train.output_dir=", "is a file"]),
    ("resume-changed-seed", run_copy(None, "train.seed=5"), ["cannot resume", "step-00000002", "train.seed: 0 -> 5"]),
    ("resume-changed-schedule", run_copy(None, "train.warmup_steps=1", "train.min_lr_ratio=0.5"),
     ["2 key(s)", "train.warmup_steps: 0 -> 1", "train.min_lr_ratio: 0.1 -> 0.5"]),
    ("resume-changed-batch", run_copy(None, "train.batch_size=3"), ["train.batch_size: 2 -> 3", "start a new run"]),
    ("resume-changed-data", run_copy(None, "data.train=[{task: facts, limit: 8}]"),
     ["data.train[0].task: 'arith' -> 'facts'"]),
    ("resume-missing-path", run_copy(None, resume="/no/such/checkpoint"), ["/no/such/checkpoint", "state.json"]),
    ("ckpt-truncated-weights", run_copy(truncate("checkpoints/step-00000002/model/model.safetensors")),
     ["step-00000002 is damaged", "model.safetensors", "previous intact checkpoint is", CKPT1]),
    ("ckpt-garbage-optimizer", run_copy(overwrite("checkpoints/step-00000002/optimizer.pt", b"garbage")),
     ["is damaged", "optimizer.pt is not a whole torch file", CKPT1]),
    ("ckpt-truncated-state", run_copy(truncate("checkpoints/step-00000002/state.json", 0.3)),
     ["is damaged", "state.json cannot be read", CKPT1]),
    ("ckpt-unsafe-pickle", run_copy(unsafe_pickle("checkpoints/step-00000002/scheduler.pt")),
     ["scheduler.pt", "cannot be loaded safely"]),
    ("ckpt-all-damaged", run_copy(lambda run: [truncate(f"checkpoints/{s}/optimizer.pt")(run)
                                               for s in (CKPT1, "step-00000002")]),
     ["is damaged", "no earlier intact checkpoint"]),
    # ---- generate
    ("generate-empty-prompt", cli("generate", "--model", "tiny-student", "--prompt", "  "), ["--prompt", "empty"]),
    ("generate-batch-zero", cli("generate", "--model", "tiny-student", "--prompt", "hi", "--batch-size", "0"),
     ["--batch-size", ">= 1", "got 0"]),
    ("generate-new-tokens-zero", cli("generate", "--model", "tiny-student", "--prompt", "hi", "--max-new-tokens", "0"),
     ["--max-new-tokens", ">= 1"]),
    ("generate-temperature-negative",
     cli("generate", "--model", "tiny-student", "--prompt", "hi", "--temperature", "-1"),
     ["--temperature", "finite number"]),
    ("generate-temperature-inf", cli("generate", "--model", "tiny-student", "--prompt", "hi", "--temperature", "inf"),
     ["--temperature", "finite number"]),
    ("generate-top-p-zero", cli("generate", "--model", "tiny-student", "--prompt", "hi", "--top-p", "0"),
     ["--top-p", "(0.0, 1.0]"]),
    ("generate-gamma-zero", cli("generate", "--model", "tiny-student", "--draft", "tiny-student", "--prompt", "hi",
                                "--gamma", "0"), ["--gamma", ">= 1"]),
    ("generate-prompts-missing", cli("generate", "--model", "tiny-student", "--prompts", "{tmp}/none.txt"),
     ["--prompts", "none.txt", "no such file"]),
    ("generate-prompts-empty",
     with_file("p.txt", "\n  \n", "generate", "--model", "tiny-student", "--prompts", "{file}"),
     ["--prompts", "holds no prompts"]),
    ("generate-prompts-not-utf8", with_file("p.txt", b"hi\nbad \xff\n", "generate", "--model", "tiny-student",
                                            "--prompts", "{file}"), ["p.txt:2", "not UTF-8", "byte offset 7"]),
    ("generate-draft-device-alone",
     cli("generate", "--model", "tiny-student", "--prompt", "hi", "--draft-device", "cpu"),
     ["--draft-device", "--draft"]),
    ("generate-model-missing", cli("generate", "--model", "{tmp}/none", "--prompt", "hi"),
     ["--model=", "no such folder"]),
    ("generate-json-no-folder",
     cli("generate", "--model", "tiny-student", "--prompt", "hi", "--json", "{tmp}/no/o.json"),
     ["--json", "does not exist"]),
    ("generate-device-unknown", cli("generate", "--model", "tiny-student", "--prompt", "hi", "--device", "gpu0"),
     ["--device", "'gpu0'", "not a device"]),
    ("generate-past-positions", cli("generate", "--model", "{model}", "--prompt", LONG), ["--prompt is", "positions",
                                                                                          "--model has 512"]),
    ("generate-unencodable", cli("generate", "--model", "{model}", "--prompt", KOREAN),
     ["--prompt", "unknown", "'한'"]),
    # ---- bench
    ("bench-gamma-text", cli("bench", "--target", "tiny-teacher", "--draft", "tiny-student", "--gamma", "4,x"),
     ["--gamma", "'x' in '4,x'"]),
    ("bench-gamma-zero", cli("bench", "--target", "tiny-teacher", "--draft", "tiny-student", "--gamma", "0"),
     ["--gamma", ">= 1"]),
    ("bench-batch-zero", cli("bench", "--target", "tiny-teacher", "--draft", "tiny-student", "--batch-size", "0"),
     ["--batch-size", ">= 1"]),
    ("bench-batch-text", cli("bench", "--target", "tiny-teacher", "--draft", "tiny-student", "--batch-size", "1,a"),
     ["--batch-size", "'a'"]),
    ("bench-repeats-zero", cli("bench", "--target", "tiny-teacher", "--draft", "tiny-student", "--repeats", "0"),
     ["--repeats", ">= 1"]),
    ("bench-limit-zero", cli("bench", "--target", "tiny-teacher", "--draft", "tiny-student", "--limit", "0"),
     ["--limit", ">= 1"]),
    ("bench-task-unknown", cli("bench", "--target", "tiny-teacher", "--draft", "tiny-student", "--task", "nope"),
     ["unknown task 'nope'", "arith, arith_styles, facts, grids"]),
    ("bench-prompts-empty", with_file("p.txt", "", "bench", "--target", "tiny-teacher", "--draft", "tiny-student",
                                      "--prompts", "{file}"), ["--prompts", "holds no prompts"]),
    ("bench-plot-no-folder", cli("bench", "--target", "tiny-teacher", "--draft", "tiny-student", "--plot",
                                 "{tmp}/no/p.png"), ["--plot", "does not exist"]),
    ("bench-draft-missing", cli("bench", "--target", "tiny-teacher", "--draft", "./none/final"),
     ["--draft=./none/final", "no such folder"]),
    ("bench-target-required", cli("bench", "--draft", "tiny-student"), ["--target", "required"]),
    ("bench-llamacpp-folder", with_file("p.txt", "hi\n", "bench", "--engine", "llamacpp", "--target", "{model}",
                                        "--draft", "{model}", "--prompts", "{file}"),
     ["--target=", "tiny-llama", "serves GGUF files", "specdistill export"]),
    # ---- init-draft (the world's tiny model has 2 layers)
    ("init-draft-layers-repeated", init_draft("0,0"), ["--layers 0,0", "layer 0 is repeated", "increasing order"]),
    ("init-draft-layers-unordered", init_draft("1,0"), ["--layers 1,0", "0 comes after 1", "increasing order"]),
    ("init-draft-layers-out-of-range", init_draft("0,2"), ["--layers 0,2", "layer 2 is out of range", "0..1"]),
    ("init-draft-count-zero", init_draft("0"), ["--layers 0", "has 2 layers", "count must be in 1..1"]),
    ("init-draft-count-all", init_draft("2"), ["--layers 2", "has 2 layers", "count must be in 1..1"]),
    ("init-draft-layers-text", init_draft("first"), ["--layers 'first'", "not a whole number"]),
    ("init-draft-out-holds-a-model", init_draft("1", out="{model}"), ["--out", "already holds a model",
                                                                       "new (or empty) folder"]),
    ("init-draft-out-is-a-file", init_draft("1", out="{good}"), ["--out", "good.jsonl", "is a file"]),
    ("init-draft-from-missing", init_draft("1", source="./none/final"), ["--from=./none/final", "no such folder"]),
    # ---- eval
    ("eval-limit-zero", cli("eval", "--model", "tiny-student", "--task", "arith", "--limit", "0"), ["--limit", ">= 1"]),
    ("eval-batch-zero", cli("eval", "--model", "tiny-student", "--task", "arith", "--batch-size", "0"),
     ["--batch-size", ">= 1"]),
    ("eval-new-tokens-zero", cli("eval", "--model", "tiny-student", "--task", "arith", "--max-new-tokens", "0"),
     ["--max-new-tokens", ">= 1"]),
    ("eval-task-unknown", cli("eval", "--model", "tiny-student", "--task", "nope"), ["unknown task 'nope'"]),
    ("eval-data-missing", cli("eval", "--model", "tiny-student", "--data", "{tmp}/none.jsonl"),
     ["data file not found"]),
    ("eval-data-empty", with_file("d.jsonl", "", "eval", "--model", "tiny-student", "--data", "{file}"),
     ["d.jsonl", "holds no records"]),
    ("eval-metric-unknown", cli("eval", "--model", "tiny-student", "--data", "{good}", "--metrics", "meteor"),
     ["'meteor'", "allowed: exact_match"]),
    ("eval-json-is-folder", cli("eval", "--model", "tiny-student", "--task", "arith", "--json", "{tmp}"),
     ["--json", "not a folder"]),
    ("eval-model-missing", cli("eval", "--model", "./none", "--task", "arith"), ["--model=./none", "no such folder"]),
    ("eval-no-source", cli("eval", "--model", "tiny-student"), ["--task --data", "required"]),
    # ---- GGUF files: as model specs, convert and export
    ("gguf-not-gguf", with_file("m.gguf", "not a model\n", "generate", "--model", "{file}", "--prompt", "hi"),
     ["--model=", "m.gguf", "not a GGUF file", "b'GGUF'"]),
    ("gguf-truncated", with_gguf("generate", "--model", "{file}", "--prompt", "hi", cut=4000),
     ["--model=", "m.gguf", "damaged GGUF file", "truncated"]),
    ("gguf-header-cut", with_gguf("generate", "--model", "{file}", "--prompt", "hi", cut=16500),
     ["--model=", "m.gguf", "damaged GGUF file", "header ends early"]),
    ("gguf-architecture", with_gguf("generate", "--model", "{file}", "--prompt", "hi", arch="rwkv6"),
     ["--model=", "m.gguf", "architecture 'rwkv6'", "it loads:", "llama"]),
    ("gguf-missing", cli("generate", "--model", "{tmp}/none.gguf", "--prompt", "hi"),
     ["--model=", "none.gguf", "no such file"]),
    ("gguf-draft-not-gguf", with_file("d.gguf", "x", "generate", "--model", "{model}", "--draft", "{file}",
                                      "--prompt", "hi"), ["--draft=", "d.gguf", "not a GGUF file"]),
    ("student-gguf-truncated", lambda w, tmp: sft(f"model.student={tiny_gguf(tmp / 's.gguf', cut=4000)}")(w, tmp),
     ["model.student=", "s.gguf", "truncated"]),
    ("convert-into-model", with_gguf("convert", "{file}", "{model}"), ["holds a model", "never overwrites"]),
    ("convert-not-gguf", with_file("m.gguf", "x", "convert", "{file}", "{tmp}/out"), ["m.gguf", "not a GGUF file"]),
    ("convert-not-gguf-name", cli("convert", "{good}", "{tmp}/out"), ["IN.gguf", "good.jsonl", ".gguf file"]),
    ("convert-architecture", with_gguf("convert", "{file}", "{tmp}/out", arch="rwkv6"),
     ["m.gguf", "architecture 'rwkv6'", "it loads:"]),
    ("export-architecture", export_qwen2, ["qwen2", "model type 'qwen2'", "llama, mistral, gemma3_text"]),
    ("export-out-exists", with_file("o.gguf", "x", "export", "{model}", "{file}"), ["o.gguf", "already exists"]),
    ("export-not-a-folder", cli("export", "{tmp}/none", "{tmp}/o.gguf"), ["none", "no config.json"]),
    ("export-not-gguf-name", cli("export", "{model}", "{tmp}/o.bin"), ["o.bin", "must end in .gguf"]),
    ("export-outtype", cli("export", "{model}", "{tmp}/o.gguf", "--outtype", "q4_0"), ["--outtype", "'q4_0'"]),
    # ---- data check, demo and the command itself
    ("check-missing", cli("data", "check", "{tmp}/none.jsonl"), ["data file not found"]),
    ("check-format-unknown", data_check(raw("d.txt", "x")), ["cannot tell the format", "'.txt'"]),
    ("check-folder", cli("data", "check", "{tmp}", "--format", "jsonl"), ["is a folder"]),
    ("check-config-missing", cli("data", "check", "{good}", "--config", "{tmp}/none.yaml"), ["config file not found"]),
    ("demo-seeds-zero", cli("demo", "--seeds", "0"), ["--seeds", ">= 1"]),
    ("demo-out-file", cli("demo", "--out", "{good}"), ["--out", "is a file"]),
    ("command-unknown", cli("frobnicate"), ["invalid choice", "'frobnicate'"]),
    ("config-argument-missing", cli("distill"), ["the following arguments are required: config"]),
]
def past_positions(w, tmp):
    """A record whose student view (1,100 characters) leaves the preset's 1,024 positions no room for its response:
    refused at the first batch, naming the record (the run has written its config only)."""
    path = write_jsonl(tmp / "d.jsonl", rows({"id": "long", "query": LONG, "response": "ok"}))
    cfg = config(tmp / "c.yaml", tmp / "run", data={"train": [{"path": str(path), "limit": 4}],
                                                     "views": {"max_prompt_tokens": 2000}})
    return ["sft", cfg, "--set", "train.batch_size=4", "--set", "train.max_steps=1"], [path, cfg]


CASES += MODEL_CASES
CASES += [("data-past-positions", past_positions, ["record long (d.jsonl:4)", "positions", "refused, not cut",
                                                   "data.views.max_prompt_tokens"])]


def assert_one_line_error(code: int, err: str, command: str, words: list[str]) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1] if err.strip() else ""
    assert line.startswith(f"specdistill{(' ' + command) if command else ''}") and ": error: " in line, err
    for word in words:
        assert word in line, (word, line)
    return line


@pytest.mark.parametrize("name, build, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_exit_2(world, tmp_path, capsys, monkeypatch, name, build, words):
    case = tmp_path / "case"
    case.mkdir()
    monkeypatch.chdir(case)  # relative paths (the shipped configs' runs/...) resolve in an empty folder
    argv, watched = build(world, case)
    had_run = (case / "run").exists()
    before = snapshot([Path(p) for p in watched])
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    command = str(argv[0]) if argv and str(argv[0]) in ("sft", "distill", "eval", "generate", "bench", "data",
                                                       "demo", "init-draft") else ""
    line = assert_one_line_error(code, err, command, words)
    assert "weights_only=False" not in line  # torch's advice to unpickle anything is never passed on
    assert snapshot([Path(p) for p in watched]) == before, "a file that was there changed"
    if not had_run and name != "data-past-positions":  # (that one fails at its first step, after its config.yaml)
        assert not (case / "run").exists(), "the failed command wrote a run folder"
    outputs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--json", "--plot")]
    assert not any(Path(p).is_file() for p in outputs), "an output file was written"


def test_the_catalogue_covers_every_area():
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names)) and len(names) >= 80
    areas = {"config": ("lr-", "train-", "set-", "config-", "key-"), "data": ("data-",), "models": ("student-",
             "teacher-", "warm-start"), "model folders": ("model-",), "checkpoints": ("ckpt-", "resume-", "run-folder"),
             "generate": ("generate-",), "bench": ("bench-",), "init-draft": ("init-draft-",), "eval": ("eval-",),
             "data check": ("check-",),
             "demo": ("demo-",), "gguf": ("gguf-", "convert-", "export-")}
    for area, prefixes in areas.items():
        assert any(n.startswith(prefixes) for n in names), area


def test_debug_shows_the_traceback_and_internal_errors_keep_theirs(world, tmp_path, capsys, monkeypatch):
    """--debug (or SPECDISTILL_DEBUG=1) prints the traceback of a user's mistake, still exit 2; an unexpected
    exception is not caught (a traceback, exit 1 from the interpreter)."""
    assert main(["generate", "--model", "tiny-student", "--prompt", " ", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("specdistill generate: error: --prompt")
    monkeypatch.setenv("SPECDISTILL_DEBUG", "1")
    assert main(["data", "check", str(tmp_path / "none.jsonl")]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("SPECDISTILL_DEBUG")

    import specdistill.cli as cli_module

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setitem(cli_module.COMMANDS, "data", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["data", "check", str(world.good)])
