"""A real GGUF checkpoint through convert and export, checked against transformers and llama.cpp.

1. `specdistill convert IN.gguf OUT/<stem>` (timed; skipped when the folder is already there);
2. `specdistill generate --model OUT/<stem>` on the prompts (greedy) against transformers' own greedy `generate`
   on the same folder with the chat template (`apply_chat_template`), or the plain template without one;
3. `specdistill export OUT/<stem> OUT/<stem>-<outtype>.gguf` for each --outtypes (timed), and llama.cpp's greedy
   output on that file against transformers' greedy output on the converted folder, from the same prompt ids;
   llama.cpp on the source file itself is the baseline (the same weights as the folder; what differs is only how
   llama.cpp computes, e.g. 8-bit activations in quantized matmuls).

One JSON line last: times, and per check how many prompts gave identical tokens, where each first differs, and
transformers' logit margin there between the two tokens, in units of that row's logit std.

    python benchmarks/gguf_round_trip.py models/SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/real
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

PROMPTS = ["What is the capital of France?", "Write one sentence about the sea.",
           "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
           "clips did Natalia sell altogether in April and May?", "List three colours."]


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def compare(pairs: list[tuple[list[int], list[int]]], model=None, prompts=None) -> dict:
    """How many (theirs, reference) pairs are identical; with the model and prompts, transformers' logit margin
    between its own token and the other one at each first difference (small: a near tie, not a wrong layout)."""
    import torch

    diffs = [first_difference(a, b) for a, b in pairs]
    found = {"identical": sum(d is None for d in diffs), "prompts": len(pairs), "first_differences": diffs}
    if model is not None:
        margins = []
        for (theirs, ours), prompt, i in zip(pairs, prompts, diffs):
            if i is None or i >= min(len(theirs), len(ours)):
                continue
            row = model(torch.tensor([prompt + ours[:i]])).logits[0, -1]
            margins.append(round(float((row[ours[i]] - row[theirs[i]]) / row.std()), 4))
        found["margins_in_logit_std"] = margins
    return found


def hf_greedy(model, tokenizer, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    import torch

    ends = model.generation_config.eos_token_id
    out = []
    for ids in prompts:
        row = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=new_tokens, do_sample=False, eos_token_id=ends,
                             pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
        out.append(row)
    return out


def specdistill_generate(folder: Path, prompts: list[str], new_tokens: int) -> list[list[int]]:
    from specdistill.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "p.txt").write_text("\n".join(prompts) + "\n")
        code = main(["generate", "--model", str(folder), "--prompts", str(Path(tmp) / "p.txt"), "--max-new-tokens",
                     str(new_tokens), "--device", "cpu", "--batch-size", "1", "--json", str(Path(tmp) / "o.json")])
        assert code == 0, code
        return [r["token_ids"] for r in json.loads((Path(tmp) / "o.json").read_text())["outputs"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("gguf", help="a GGUF checkpoint")
    p.add_argument("--out", required=True, help="folder for the converted folder and the exported files")
    p.add_argument("--outtypes", default="f32,f16,q8_0")
    p.add_argument("--max-new-tokens", type=int, default=24)
    args = p.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specdistill.data.templates import end_token_ids, render_prompt
    from specdistill.gguf_check import llamacpp_greedy
    from specdistill.llamacpp_server import serve
    from specdistill.gguf_export import export_gguf
    from specdistill.gguf_io import convert_gguf

    torch.set_grad_enabled(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder, result = out / Path(args.gguf).stem, {"gguf": args.gguf, "torch_threads": torch.get_num_threads()}
    if not (folder / "config.json").exists():
        start = time.perf_counter()
        convert_gguf(args.gguf, str(folder))
        result["convert_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    result["folder_load_s"] = round(time.perf_counter() - start, 1)
    model.generation_config.eos_token_id = end_token_ids(tokenizer, model)
    messages = [[{"role": "user", "content": text}] for text in PROMPTS]
    if tokenizer.chat_template:  # transformers' own way to the prompt
        ids = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
               for m in messages]
    else:
        ids = [tokenizer(render_prompt(tokenizer, m), add_special_tokens=False).input_ids for m in messages]
    reference = hf_greedy(model, tokenizer, ids, args.max_new_tokens)
    result["generate_vs_transformers"] = compare(list(zip(specdistill_generate(folder, PROMPTS, args.max_new_tokens),
                                                          reference)))
    result["sample"] = tokenizer.decode(reference[0])
    with serve(args.gguf, n_ctx=512) as server:
        theirs = [llamacpp_greedy(server, prompt, args.max_new_tokens) for prompt in ids]
    result["source_llamacpp_vs_transformers"] = compare(list(zip(theirs, reference)), model, ids)
    for outtype in args.outtypes.split(","):
        file = out / f"{folder.name}-{outtype}.gguf"
        file.unlink(missing_ok=True)
        start = time.perf_counter()
        summary = export_gguf(str(folder), str(file), outtype)
        entry = {"export_s": round(time.perf_counter() - start, 1), "bytes": summary["bytes"],
                 "tokenizer": summary["tokenizer"]}
        with serve(file, n_ctx=512) as server:
            theirs = [llamacpp_greedy(server, prompt, args.max_new_tokens) for prompt in ids]
        entry["llamacpp_vs_transformers"] = compare(list(zip(theirs, reference)), model, ids)
        result[outtype] = entry
        print(json.dumps({outtype: entry}), flush=True)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
