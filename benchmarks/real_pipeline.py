"""The whole path on the two real models (docs/models.md), one JSON line last:

SmolLM2-135M-Instruct (Llama, ChatML, tied embeddings):
  converted (make real-models); greedy `generate` equal to transformers' own greedy generate with its chat
  template; a 6-layer draft cut (`init-draft --layers 6`: layers 0-4 and 29); 20 steps of SKD on GSM8K training
  questions; the cut and the trained draft exported to GGUF and served by llama.cpp beside the teacher's own
  Q4_1 GGUF (`bench --engine llamacpp`): lossless, llama.cpp's acceptance beside specdistill's.
Gemma-3-270M base (262,144 ids, sliding window 512, no chat template: the plain template):
  converted; a 4-layer draft cut (layers 0-2 and 17); greedy `generate --draft` equal to the target's own
  (and to transformers' greedy generate on the same prompt ids); 3 steps of SKD with its full vocabulary;
  exported and served by llama.cpp.

    make real-models && python benchmarks/real_pipeline.py            # about 25 minutes on 2 CPU cores
    python benchmarks/real_pipeline.py --only smollm2 --skd-steps 4   # a quicker look

Every command runs in-process through `specdistill.cli.main`, as a user would type it; its work folder is
runs/real_pipeline (replaced by each run). A stage that fails is reported with its error and the stages that
need it are skipped, so the line always says what ran. The GSM8K questions are ../shared/data/gsm8k/train.jsonl
(beside the repository), else `hub: openai/gsm8k` where a hub is reachable.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
CHAT_PROMPTS = ["What is the capital of France?", "Natalia sold 48 clips in April and half as many in May. How "
                "many clips did she sell in all?", "Write one sentence about the sea.", "List three colours."]
BASE_PROMPTS = ["The capital of France is", "Once upon a time, there was a", "Water boils at a temperature of"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=str(ROOT / "models"), help="the folder make real-models wrote")
    p.add_argument("--work", default=str(ROOT / "runs" / "real_pipeline"))
    p.add_argument("--only", choices=["smollm2", "gemma3"], action="append")
    p.add_argument("--skd-steps", type=int, default=20, help="SmolLM2's SKD steps (Gemma: --gemma-skd-steps)")
    p.add_argument("--gemma-skd-steps", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="llama.cpp's threads")
    return p.parse_args()


class Stages:
    """Runs named stages, timing each; a failed stage's error is kept and the stages that need it are skipped."""

    def __init__(self, model: str):
        self.model, self.result, self.failed = model, {}, {}

    def run(self, name: str, fn, needs: tuple[str, ...] = ()):
        missing = [n for n in needs if n not in self.result]
        if missing:
            self.failed[name] = f"skipped: needs {', '.join(missing)}"
            return None
        start = time.perf_counter()
        print(f"real_pipeline: {self.model}: {name}", file=sys.stderr, flush=True)
        try:
            value = fn()
        except Exception as exc:  # a stage's failure is a figure of the run: kept, and the others go on
            self.failed[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            return None
        self.result[name] = {**(value if isinstance(value, dict) else {"value": value}),
                             "seconds": round(time.perf_counter() - start, 1)}
        return value


def cli(*argv) -> str:
    """`specdistill ARGV` in-process; returns its stdout (its stderr, phases included, passes through); a non-zero
    exit is an error naming the command."""
    from specdistill.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    if code != 0:
        raise RuntimeError(f"specdistill {argv[0]} exited {code}")
    return out.getvalue()


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def prompt_ids(model_dir: str, texts: list[str]) -> list[list[int]]:
    """The prompt ids specdistill's generate and bench use for these user messages (its template rule, BOS)."""
    from specdistill.data.prompts import INFERENCE_VIEWS, encode_prompts
    from specdistill.data.records import Record
    from specdistill.models import load_tokenizer

    records = [Record(id=str(i + 1), query=t) for i, t in enumerate(texts)]
    return encode_prompts(records, load_tokenizer(model_dir), INFERENCE_VIEWS)


def chat_template_ids(model_dir: str, texts: list[str]) -> list[list[int]]:
    """transformers' own prompt ids for these user messages: apply_chat_template with the generation prompt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"]) for t in texts]


@torch.no_grad()
def transformers_greedy(model_dir: str, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """transformers' own greedy generate on the prompt ids, up to and including the first end id."""
    from transformers import AutoModelForCausalLM

    from specdistill.data.templates import end_token_ids
    from specdistill.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ends = end_token_ids(tokenizer, model)
    outputs = []
    for ids in prompts:
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=ends,
                             pad_token_id=tokenizer.pad_token_id, top_p=None, top_k=None, temperature=None)
        new = out[0, len(ids):].tolist()
        stop = next((j for j, i in enumerate(new) if i in ends), None)
        outputs.append(new if stop is None else new[: stop + 1])
    return outputs


def generated(model_dir: str, prompts_file: Path, out: Path, max_new_tokens: int, draft: str | None = None):
    cli("generate", "--model", model_dir, *(["--draft", draft] if draft else []), "--prompts", prompts_file,
        "--max-new-tokens", max_new_tokens, "--batch-size", 1, "--json", out)
    return [row["token_ids"] for row in json.loads(out.read_text())["outputs"]]


def skd_config(path: Path, teacher: str, student: str, out: Path, steps: int, batch_size: int,
               max_new_tokens: int) -> Path:
    """An SKD config on GSM8K training questions (the student drafts, the teacher keeps its top-5; forward KL)."""
    data = ({"path": str(GSM8K), "limit": 400} if GSM8K.is_file() else
            {"hub": "openai/gsm8k", "hub_config": "main", "split": "train", "limit": 400})
    cfg = {"model": {"teacher": teacher, "student": student},
           "data": {"train": [data]},
           "rollout": {"strategy": "skd", "policy": "top_k", "skd_top_k": 5, "gamma": 4, "temperature": 1.0,
                       "max_new_tokens": max_new_tokens},
           "loss": {"name": "fkl"},
           "train": {"output_dir": str(out), "max_steps": steps, "batch_size": batch_size, "lr": 3.0e-4,
                     "warmup_steps": 2, "eval_every": 0, "save_every": 0, "progress": False}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def trained(config: Path, out: Path) -> dict:
    cli("distill", config)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "train/loss" in r]
    keep = ("train/loss", "rollout/acceptance_rate", "rollout/token_acceptance")
    return {"folder": str(out / "final"), "steps": len(steps), "first": {k: steps[0].get(k) for k in keep},
            "last": {k: steps[-1].get(k) for k in keep}}


def exported(folder: str, out: Path) -> dict:
    """`specdistill export` of a draft folder, q8_0: a cut draft and a run's final/ carry the record of the GGUF
    the target came from (gguf_source.json), so export writes the target file's own vocabulary."""
    summary = last_json(cli("export", folder, out, "--outtype", "q8_0"))
    return {"gguf": str(out), "tokenizer": summary["tokenizer"], "bytes": summary["bytes"]}


def served(target_gguf: str, hf_target: str, drafts: dict[str, tuple[str, str]], prompts_file: Path,
           report_file: Path, max_new_tokens: int, threads: int) -> dict:
    """bench --engine llamacpp of each draft (name: (gguf, folder)) at gamma 4, its report in `report_file`; both
    engines' figures."""
    names = list(drafts)
    cli("bench", "--engine", "llamacpp", "--target", target_gguf, "--draft", ",".join(drafts[n][0] for n in names),
        "--hf-target", hf_target, "--hf-draft", ",".join(drafts[n][1] for n in names), "--prompts", prompts_file,
        "--gamma", 4, "--max-new-tokens", max_new_tokens, "--repeats", 1, "--threads", threads,
        "--json", report_file)
    report = json.loads(report_file.read_text())
    keep_ours = ("acceptance_rate", "token_acceptance", "vllm_mean_acceptance_length", "cost_ratio_c", "predicted_speedup")
    keep_theirs = ("drafted", "accepted", "acceptance_rate", "mean_acceptance_length", "tokens_per_s",
                   "target_tokens_per_s", "speedup", "outputs_identical")
    rows = {name: {"llamacpp": {k: row["llamacpp"].get(k) for k in keep_theirs},
                   "specdistill": {k: row["specdistill"].get(k) for k in keep_ours}}
            for name, row in zip(names, report["results"])}
    return {"prompts": report["prompts"], "lossless": all(r["llamacpp"]["outputs_identical"] for r in rows.values()),
            "drafts": rows}


def smollm2(args, paths: dict, work: Path) -> Stages:
    s, n = Stages("smollm2"), args.max_new_tokens
    folder, gguf = paths["folder"], paths["gguf"]
    prompts = work / "chat_prompts.txt"
    prompts.write_text("\n".join(CHAT_PROMPTS) + "\n")
    s.run("converted", lambda: {"folder": folder, "gguf": gguf})
    def same_as_transformers():
        ours = generated(folder, prompts, work / "g.json", n)
        ids = chat_template_ids(folder, CHAT_PROMPTS)  # transformers' own prompts, not specdistill's
        theirs = transformers_greedy(folder, ids, n)
        return {"equal": ours == theirs, "prompt_ids_equal": ids == prompt_ids(folder, CHAT_PROMPTS),
                "prompts": len(ours), "tokens": sum(map(len, ours)),
                "text": json.loads((work / "g.json").read_text())["outputs"][0]["text"][:80]}

    s.run("generate_equals_transformers", same_as_transformers, needs=("converted",))
    cut = work / "smollm2-draft6"
    s.run("draft_cut", lambda: last_json(cli("init-draft", "--from", folder, "--layers", 6, "--out", cut)),
          needs=("converted",))
    config = skd_config(work / "skd_smollm2.yaml", folder, str(cut), work / "skd_smollm2", args.skd_steps, 4, n)
    s.run("skd", lambda: trained(config, work / "skd_smollm2"), needs=("draft_cut",))
    s.run("exported", lambda: {"cut": exported(str(cut), work / "smollm2-draft6.gguf"),
                               "trained": exported(str(work / "skd_smollm2" / "final"),
                                                   work / "smollm2-skd.gguf")}, needs=("skd",))
    s.run("served", lambda: served(gguf, folder, {"cut": (str(work / "smollm2-draft6.gguf"), str(cut)),
                                                  "trained": (str(work / "smollm2-skd.gguf"),
                                                              str(work / "skd_smollm2" / "final"))},
                                   prompts, work / "llamacpp_smollm2.json", n, args.threads), needs=("exported",))
    return s


def gemma3(args, paths: dict, work: Path) -> Stages:
    s, n = Stages("gemma3"), min(args.max_new_tokens, 16)  # its 262,144-id head makes each token dear
    folder, gguf = paths["folder"], paths["gguf"]
    prompts = work / "base_prompts.txt"
    prompts.write_text("\n".join(BASE_PROMPTS) + "\n")
    s.run("converted", lambda: {"folder": folder, "gguf": gguf})
    cut = work / "gemma3-draft4"
    s.run("draft_cut", lambda: last_json(cli("init-draft", "--from", folder, "--layers", 4, "--out", cut)),
          needs=("converted",))

    def lossless():
        ids = prompt_ids(folder, BASE_PROMPTS)
        alone = generated(folder, prompts, work / "g_alone.json", n)
        spec = generated(folder, prompts, work / "g_draft.json", n, str(cut))
        from specdistill.models import load_tokenizer

        bos = load_tokenizer(folder).bos_token_id
        return {"equal": spec == alone, "equals_transformers": alone == transformers_greedy(folder, ids, n),
                "prompts_start_with_bos": all(p[:1] == [bos] for p in ids), "prompts": len(ids),
                "text": json.loads((work / "g_alone.json").read_text())["outputs"][0]["text"][:80]}

    s.run("generate_draft_lossless", lossless, needs=("draft_cut",))
    config = skd_config(work / "skd_gemma3.yaml", folder, str(cut), work / "skd_gemma3", args.gemma_skd_steps, 2, 16)
    s.run("skd", lambda: trained(config, work / "skd_gemma3"), needs=("draft_cut",))
    s.run("exported", lambda: exported(str(work / "skd_gemma3" / "final"), work / "gemma3-skd.gguf"),
          needs=("skd",))
    s.run("served", lambda: served(gguf, folder, {"trained": (str(work / "gemma3-skd.gguf"),
                                                              str(work / "skd_gemma3" / "final"))},
                                   prompts, work / "llamacpp_gemma3.json", n, args.threads), needs=("exported",))
    return s


def main():
    args = parse_args()
    from specdistill.real_models import real_models

    start, work = time.perf_counter(), Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    names = args.only or ["smollm2", "gemma3"]
    with contextlib.redirect_stdout(sys.stderr):  # its progress lines; stdout keeps the one JSON line
        paths = real_models(Path(args.models), [], names)  # make real-models' steps: skipped where done
    line = {"benchmark": "real_pipeline", "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads", "data": str(GSM8K if GSM8K.is_file() else
                                                                                  "hub: openai/gsm8k")}
    for name in names:
        stages = {"smollm2": smollm2, "gemma3": gemma3}[name](args, paths[name], work)
        line[name] = {**stages.result, **({"failed": stages.failed} if stages.failed else {})}
        (work / f"{name}.json").write_text(json.dumps(line[name], indent=1))  # kept if a later model's run is cut
    line["seconds"] = round(time.perf_counter() - start, 1)
    line["ran"] = [f"{m}.{k}" for m in names for k in line[m] if k != "failed"]
    line["not_ran"] = [f"{m}.{k}: {v}" for m in names for k, v in line[m].get("failed", {}).items()]
    print(json.dumps(line))


if __name__ == "__main__":
    main()
