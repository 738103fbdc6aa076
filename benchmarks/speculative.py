"""Speculative decoding with a distilled draft on the built-in pair: speedup over the target alone and over
transformers' assisted generation (batch size 1), and batched throughput. Prints one JSON line last.

--modes picks the engine's mode: "eager" (default) or "compiled" (its `compile` option: both models' forwards
through torch.compile, graphs compiled during the untimed warmup); both decode the same tokens. The
target-alone baseline runs through the same engine in the same mode; transformers' assisted generation
(`hf_assisted_*`) runs as shipped, eagerly, in either. Greedy decoding, constant gamma; figures in docs/metrics.md.

    python benchmarks/speculative.py --draft runs/skd/final [--target builtin-teacher] [--modes eager|compiled]

Run each mode in its own process (--modes eager, then --modes compiled), so that neither mode's figures depend
on state the other left behind (compiled graphs, dynamo's hooks).
"""

import argparse
import json
import platform

import torch

from specdistill.cli.bench import bench_prompts
from specdistill.evaluate.speculative import bench_pair
from specdistill.models import load_model, load_tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="builtin-teacher")
    p.add_argument("--draft", default="runs/builtin/student/final")
    p.add_argument("--task", default="arith")
    p.add_argument("--limit", type=int, default=64, help="test prompts")
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure, interleaved; medians kept")
    p.add_argument("--modes", default="eager", help="engine modes to run, comma-separated: eager, compiled")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.target)
    target, draft = load_model(args.target, tokenizer=tok).eval(), load_model(args.draft, tokenizer=tok).eval()
    prompts, _ = bench_prompts(argparse.Namespace(prompts=None, task=args.task, limit=args.limit, draft_view="target"), tok)
    out = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
           "target": args.target, "draft": args.draft, "task": args.task, "prompts": len(prompts),
           "target_layers": target.config.num_hidden_layers, "draft_layers": draft.config.num_hidden_layers}
    for mode in args.modes.split(","):
        if mode not in ("eager", "compiled"):
            raise SystemExit(f"--modes: unknown mode {mode!r}; allowed: eager, compiled")
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            r = bench_pair(target, draft, prompts, tok, gamma=args.gamma, max_new_tokens=args.max_new_tokens,
                           batch_size=bs, compare_hf=bs == 1, compile=mode == "compiled", repeats=args.repeats)
            out.setdefault(mode, {})[f"b{bs}"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
