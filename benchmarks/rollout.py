"""Speed of the draft/verify/decide engine on a teacher/student pair. Prints one JSON line last.

    python benchmarks/rollout.py     # the shipped built-in teacher and runs/builtin/student/final (make it with
                                     # `specdistill sft configs/builtin/student.yaml`)
    python benchmarks/rollout.py --teacher T --student S
    python benchmarks/rollout.py --make-random-pair /tmp/pair     # a random 6-layer d=192 / 2-layer d=96 pair

Measured (greedy decoding unless noted, EOS ignored so every run writes max_new_tokens per row):
  tokens_per_s_b1 / _b16        speculative decoding (greedy policy, --gamma) at batch size 1 and 16
  batch16_over_batch1           tokens_per_s_b16 / tokens_per_s_b1
  parallel_over_sequential      time with one teacher forward per drafted token / time with one per block, gamma=8
  model_time_fraction_b1 / _b16 share of the wall time spent inside the two models' forward calls
  target_tokens_per_s_b1        the teacher decoding alone (same loop, no draft); speedup_vs_target
  skd_over_lower_bound          SKD rollout time (top_k policy K=--top-k, temperature 1, batch 16, --skd-schedule) /
                                (time the student alone needs to sample as many tokens + one teacher forward over
                                the final sequences); skd_model_time_fraction_b16 its share inside the models
  acceptance_rate               speculative greedy at batch 16; skd_acceptance_rate for the SKD rollout
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from specdistill.engine import GreedyPolicy, Sampling, TopKPolicy, generate, make_schedule, sample
from specdistill.models import BUILTIN_TEACHER


def make_random_pair(folder: str, vocab: int = 100) -> tuple[str, str]:
    """Save a random Llama teacher (6 layers, d=192) and student (2 layers, d=96) under folder."""
    paths = []
    for name, layers, width, seed in (("teacher", 6, 192, 1), ("student", 2, 96, 2)):
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=4 * width,
                             num_hidden_layers=layers, num_attention_heads=width // 32, num_key_value_heads=width // 64
                             if width >= 128 else width // 32, max_position_embeddings=1024, initializer_range=0.1,
                             pad_token_id=0, bos_token_id=1, eos_token_id=2)
        path = os.path.join(folder, name)
        LlamaForCausalLM(config).save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def load_prompts(args, tokenizer, vocab: int, count: int) -> list[list[int]]:
    """Token ids of `count` prompts: lines of --prompts (cycled), else the built-in arith test prompts (a model
    folder with a tokenizer), else random ids (a random pair)."""
    if args.prompts:
        if tokenizer is None:
            sys.exit(f"--prompts needs a tokenizer in {args.teacher}")
        with open(args.prompts, encoding="utf-8") as handle:
            lines = [line.rstrip("\n") for line in handle if line.strip()]
        return [tokenizer.encode(lines[i % len(lines)]) for i in range(count)]
    if tokenizer is not None and not args.make_random_pair:  # the built-in arith test prompts, chat-rendered
        from specdistill.config import DatasetConfig, ViewConfig
        from specdistill.data.records import load_records
        from specdistill.data.prompt_views import encode_example

        records = load_records(DatasetConfig(task="arith", split="test"))[:count]
        return [encode_example(r, tokenizer, ViewConfig()).teacher_prompt for r in records]
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 25, (count,), generator=generator).tolist()
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


def left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def run_batches(fn, prompts, batch_size: int, pad: int):
    """Run fn(ids, mask) over prompts in batches; return (tokens, wall_s, model_s, stats list)."""
    tokens, wall, model, stats = 0, 0.0, 0.0, []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[start : start + batch_size], pad)
        began = time.perf_counter()
        out = fn(ids, mask)
        wall += time.perf_counter() - began
        tokens += int(out.lengths.sum())
        model += out.stats.model_time_s
        stats.append(out.stats)
    return tokens, wall, model, stats


def measure(configs: dict, repeats: int) -> dict:
    """Run every configuration (name -> (fn, prompts, batch_size, pad)) once per round, for `repeats` rounds, and
    keep each one's median-time run. Interleaving spreads the load of a shared machine evenly over them."""
    runs = {name: [] for name in configs}
    for _ in range(repeats):
        for name, (fn, prompts, batch_size, pad) in configs.items():
            runs[name].append(run_batches(fn, prompts, batch_size, pad))
    return {name: sorted(rs, key=lambda r: r[1])[len(rs) // 2] for name, rs in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=str(BUILTIN_TEACHER), help="teacher folder (from_pretrained)")
    parser.add_argument("--student", default="runs/builtin/student/final", help="student folder (from_pretrained)")
    parser.add_argument("--prompts", help="file with one prompt per line (needs a tokenizer in --teacher)")
    parser.add_argument("--make-random-pair", metavar="DIR",
                        help="save a random teacher/student pair in DIR and benchmark it")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per row (EOS is ignored)")
    parser.add_argument("--gamma", type=int, default=4, help="drafted tokens per block for the throughput runs")
    parser.add_argument("--b1-prompts", type=int, default=4, help="prompts run one at a time at batch size 1")
    parser.add_argument("--top-k", type=int, default=25, help="K of the SKD run (top_k policy)")
    parser.add_argument("--skd-schedule", default="constant", choices=["constant", "lupi", "heuristic"],
                        help="gamma schedule of the SKD run (starts at --gamma; max_gamma 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median kept)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0 = torch's default); 1 avoids oversubscribing a shared 2-core machine")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.make_random_pair:
        args.teacher, args.student = make_random_pair(args.make_random_pair)
    for path in (args.teacher, args.student):
        if not os.path.isdir(path):
            sys.exit(f"no model folder at {path}; pass --teacher/--student, or --make-random-pair DIR")
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    except (OSError, ValueError):
        tokenizer = None
    pad = teacher.config.pad_token_id or 0
    prompts16 = load_prompts(args, tokenizer, teacher.config.vocab_size, 16)
    prompts1 = prompts16[: args.b1_prompts]
    budget = args.max_new_tokens

    def speculative(gamma, verify="parallel"):
        return lambda ids, mask: generate(student, ids, mask, teacher, ids, mask, policy=GreedyPolicy(), gamma=gamma,
                                          max_new_tokens=budget, verify=verify, pad_token_id=pad)

    def teacher_alone(ids, mask):
        return sample(teacher, ids, mask, max_new_tokens=budget, pad_token_id=pad)

    hot = Sampling(temperature=1.0)
    skd_gamma = make_schedule(args.skd_schedule, args.gamma, max(16, args.gamma))

    def skd(ids, mask):
        return generate(student, ids, mask, teacher, ids, mask, policy=TopKPolicy(k=args.top_k, target=hot),
                        gamma=skd_gamma, draft_sampling=hot, max_new_tokens=budget, pad_token_id=pad)

    def student_alone(ids, mask):
        return sample(student, ids, mask, sampling=hot, max_new_tokens=budget, pad_token_id=pad)

    run_batches(speculative(args.gamma), prompts16[:2], 2, pad)  # warm-up
    runs = measure(
        {
            "b1": (speculative(args.gamma), prompts1, 1, pad),
            "b16": (speculative(args.gamma), prompts16, 16, pad),
            "target": (teacher_alone, prompts1, 1, pad),
            "par8": (speculative(8), prompts1, 1, pad),
            "seq8": (speculative(8, "sequential"), prompts1, 1, pad),
            "skd16": (skd, prompts16, 16, pad),
            "alone16": (student_alone, prompts16, 16, pad),
        },
        args.repeats,
    )
    b1, b16, target, par8, seq8, skd16, alone16 = runs.values()

    # One teacher forward over the SKD run's final sequences (prompt + response), no cache.
    ids, mask = left_pad(prompts16, pad)
    out = skd(ids, mask)
    full_ids = torch.cat([ids, out.tokens], 1)
    full_mask = torch.cat([mask, (torch.arange(out.tokens.shape[1]) < out.lengths[:, None]).long()], 1)
    forward_s = []
    with torch.no_grad():
        for _ in range(args.repeats):
            began = time.perf_counter()
            teacher(input_ids=full_ids, attention_mask=full_mask)
            forward_s.append(time.perf_counter() - began)
    lower_bound = alone16[1] * skd16[0] / alone16[0] + statistics.median(forward_s)

    spec_stats = b16[3][0]
    result = {
        "tokens_per_s_b1": b1[0] / b1[1],
        "tokens_per_s_b16": b16[0] / b16[1],
        "batch16_over_batch1": (b16[0] / b16[1]) / (b1[0] / b1[1]),
        "parallel_over_sequential": seq8[1] / par8[1],
        "model_time_fraction_b1": b1[2] / b1[1],
        "model_time_fraction_b16": b16[2] / b16[1],
        "target_tokens_per_s_b1": target[0] / target[1],
        "speedup_vs_target": (b1[0] / b1[1]) / (target[0] / target[1]),
        "skd_over_lower_bound": skd16[1] / lower_bound,
        "skd_tokens_per_s_b16": skd16[0] / skd16[1],
        "skd_model_time_fraction_b16": skd16[2] / skd16[1],
        "acceptance_rate": spec_stats.acceptance_rate,
        "mean_accepted_length": spec_stats.mean_accepted_length,
        "skd_acceptance_rate": skd16[3][0].acceptance_rate,
        "gamma": args.gamma,
        "skd_schedule": args.skd_schedule,
        "max_new_tokens": budget,
        "threads": torch.get_num_threads(),
        "teacher": args.teacher,
        "student": args.student,
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
