"""On-policy distillation steps per second: specdistill's trainer against TRL's GKDTrainer, in one run.

Both train the same student against the same teacher (GKD with lambda=1: the student samples every response,
temperature 1.0, no top-k/top-p; generalised JSD with beta=0.5; seq_kd off) on the same arith prompts, in the
same order, rendered through the same chat template, with the same batch size, max_new_tokens, optimizer
(AdamW, lr, warmup + cosine to 0.1x, clip 1.0), fp32 on the CPU and the same number of torch threads. No
evaluation, logging or checkpointing happens inside the timed region. A step is timed from the end of the
previous optimizer step to the end of this one (data, rollout, loss, backward, optimizer; TRL through an
on_step_end callback), after --warmup untimed steps. The last line printed is one JSON object.

The two trainers run one after the other, --rounds times, alternating, from fresh trainers each round; the
figures are medians over rounds and `speedup` is the median of the per-round ratios, so that a change in the
machine's load hits both sides alike.

specdistill runs with its documented `rollout.compile` and `train.compile` options on (--no-compile: both off):
the student's forwards in the rollout, and the student's (with its backward) and the teacher's forwards in the
loss phase, go through torch.compile (inductor), which gives the eager tokens and losses to float rounding. Its
graphs are compiled during the untimed warmup steps (`specdistill_warmup_s` includes that time); the JSON counts
any graph compiled during the timed steps (`specdistill_graphs_compiled_in_timed_steps`, 0 expected). TRL runs
as shipped.

    OMP_NUM_THREADS=1 python benchmarks/train_step.py                 # random tiny-teacher / tiny-student presets
    OMP_NUM_THREADS=1 python benchmarks/train_step.py --steps 5 --warmup 2 --rounds 1
    OMP_NUM_THREADS=1 python benchmarks/train_step.py --teacher builtin-teacher --student runs/builtin/student/final

gen_tokens_per_step: response tokens trained per step (up to and including each row's EOS), summed over the
batch; gen_width_per_step: decoded columns per step (the longest row; a batch stops once every row ended).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time

import torch


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", help="teacher folder/hub id (or builtin-teacher); default: a random tiny-teacher")
    p.add_argument("--student", help="student folder/hub id; default: a random tiny-student")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for both")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=5, help="alternating runs of both trainers; medians are reported")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="specdistill's rollout.compile and train.compile: torch.compile the rollout's and the loss "
                        "phase's forwards (compiled in the untimed warmup)")
    p.add_argument("--trl-compile", action="store_true",
                   help="TRL with its own torch_compile option (transformers' Trainer compiles the trained model)")
    args = p.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        p.error("--warmup, --steps and --rounds must be >= 1")
    return args


def build_pair(folder: str) -> tuple[str, str]:
    """Save the random tiny-teacher / tiny-student presets with the built-in tokenizer under folder."""
    from specdistill.data.tokenizer import build_tokenizer
    from specdistill.models import load_model

    tokenizer, paths = build_tokenizer(), []
    for name, seed in (("tiny-teacher", 1), ("tiny-student", 0)):
        path = os.path.join(folder, name)
        load_model(name, tokenizer=tokenizer, seed=seed).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def summarise(ends: list[float], warmup: int, steps: int) -> dict:
    """ends[i]: clock at the end of step i; ends[warmup - 1] starts the timed region."""
    durations = [b - a for a, b in zip(ends[warmup - 1 :], ends[warmup : warmup + steps])]
    return {"steps_per_s": steps / sum(durations), "median_step_s": statistics.median(durations)}


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled so far in this process."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def run_specdistill(args, teacher: str, student: str, out: str) -> tuple[dict, list, object]:
    """Time train_step calls (setup, validation and the final save are outside); return the records drawn."""
    from specdistill import train
    from specdistill.config import Config, build, validate
    from specdistill.data.prompt_views import collate

    total = args.warmup + args.steps
    cfg = build(Config, {
        "model": {"teacher": teacher, "student": student},
        "data": {"train": [{"task": "arith"}]},
        "rollout": {"strategy": "student", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": args.max_new_tokens,
                    "compile": args.compile},
        "loss": {"name": "jsd", "beta": 0.5, "temperature": 1.0},
        "train": {"output_dir": out, "max_steps": total, "batch_size": args.batch_size, "lr": args.lr,
                  "weight_decay": 0.0, "warmup_steps": 10, "min_lr_ratio": 0.1, "max_grad_norm": 1.0,
                  "seed": args.seed, "save_every": 0, "eval_every": 0, "progress": False, "threads": args.threads,
                  "compile": args.compile},
    })
    validate(cfg)
    widths, make_rollout = [], train.step.make_rollout

    def recording_rollout(*a, **k):  # measurement only: the decoded width of each rollout
        rb = make_rollout(*a, **k)
        widths.append(rb.response.shape[1])
        return rb

    run = train.setup(cfg)
    train.step.make_rollout = recording_rollout
    try:
        stream = copy.deepcopy(run.stream)  # replays exactly the records the steps below draw
        batches = [stream.next_batch(s, 1, args.batch_size)[0] for s in range(total)]
        first_prompts = collate(train.encode(run, batches[0]), run.tokenizer.pad_token_id)
        tokens, ends, began = [], [], time.perf_counter()
        for i in range(total):
            if i == args.warmup:
                graphs = compiled_graphs()
            metrics = train.train_step(run)
            run.step += 1
            ends.append(time.perf_counter())
            tokens.append(metrics["tokens/trained"])
    finally:
        train.step.make_rollout = make_rollout
        train.cleanup(run)
    result = summarise(ends, args.warmup, args.steps)
    timed = slice(args.warmup, total)
    result["gen_tokens_per_step"] = statistics.mean(tokens[timed])
    result["gen_width_per_step"] = statistics.mean(widths[timed])
    result["warmup_s"] = ends[args.warmup - 1] - began
    result["graphs_compiled_in_timed_steps"] = compiled_graphs() - graphs
    return result, batches, first_prompts


def run_trl(args, teacher: str, student: str, batches: list, first_prompts, out: str) -> dict:
    """TRL's GKDTrainer on the same records in the same order (sequential sampler), timed by a callback."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())

    class CountingGKDTrainer(GKDTrainer):
        """GKDTrainer unchanged, but records what each on-policy generation produced."""

        tokens, widths = [], []

        def generate_on_policy_outputs(self, model, inputs, generation_config):
            ids, mask, labels = GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)
            self.tokens.append(int((labels != -100).sum()))
            self.widths.append(ids.shape[1] - inputs["prompts"].shape[1])
            return ids, mask, labels

    tokenizer = AutoTokenizer.from_pretrained(student)
    tokenizer.padding_side = "left"
    models = [AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32) for p in (student, teacher)]
    for m in models:  # stop at the chat template's end token, as specdistill does
        if m.generation_config.eos_token_id is None:
            m.generation_config.eos_token_id = tokenizer.eos_token_id
    rows = [{"messages": [{"role": "user", "content": r.query}, {"role": "assistant", "content": r.response}]}
            for batch in batches for r in batch]
    total = args.warmup + args.steps
    config = GKDConfig(
        output_dir=out, max_steps=total, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        learning_rate=args.lr, weight_decay=0.0, warmup_steps=10, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, max_grad_norm=1.0, optim="adamw_torch",
        lmbda=1.0, beta=0.5, temperature=1.0, max_new_tokens=args.max_new_tokens, seq_kd=False,
        activation_checkpointing=False, bf16=False, fp16=False, use_cpu=True, seed=args.seed,
        train_sampling_strategy="sequential", dataloader_num_workers=0, save_strategy="no", eval_strategy="no",
        report_to=[], logging_steps=10**6, disable_tqdm=True, torch_compile=args.trl_compile,
    )
    clock = Clock()
    trainer = CountingGKDTrainer(model=models[0], teacher_model=models[1], args=config,
                                 train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[clock])
    trl_prompts = trainer.data_collator(rows[: args.batch_size])  # same prompt token ids as specdistill?
    if not (torch.equal(trl_prompts["prompts"], first_prompts.student_ids)
            and torch.equal(trl_prompts["prompt_attention_mask"].bool(), first_prompts.student_mask)):
        raise SystemExit("TRL and specdistill tokenised the first batch of prompts differently")
    torch.set_num_threads(args.threads)
    trainer.train()
    if len(clock.ends) != total:
        raise SystemExit(f"TRL ran {len(clock.ends)} steps, expected {total}")
    result = summarise(clock.ends, args.warmup, args.steps)
    timed = slice(args.warmup, total)
    result["gen_tokens_per_step"] = statistics.mean(trainer.tokens[timed])
    result["gen_width_per_step"] = statistics.mean(trainer.widths[timed])
    result["activation_checkpointing"] = bool(trainer.args.activation_checkpointing)  # True would disable the KV cache
    return result


def main():
    args = parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    torch.set_num_threads(args.threads)
    import transformers
    import trl
    from specdistill.models import BUILTIN_TEACHER

    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as tmp:
        teacher, student = args.teacher, args.student
        if teacher == "builtin-teacher":  # a specdistill preset name; TRL needs its folder
            teacher = str(BUILTIN_TEACHER)
        if not (teacher and student):
            default_teacher, default_student = build_pair(os.path.join(tmp, "pair"))
            teacher, student = teacher or default_teacher, student or default_student
        rounds = []
        for r in range(args.rounds):
            ours, batches, first_prompts = run_specdistill(args, teacher, student, os.path.join(tmp, f"specdistill{r}"))
            theirs = run_trl(args, teacher, student, batches, first_prompts, os.path.join(tmp, f"trl{r}"))
            rounds.append((ours, theirs))
    ratios = [ours["steps_per_s"] / theirs["steps_per_s"] for ours, theirs in rounds]

    def median(side: int, key: str) -> float:
        return statistics.median(r[side][key] for r in rounds)

    report = {
        "specdistill_steps_per_s": round(median(0, "steps_per_s"), 3),
        "trl_steps_per_s": round(median(1, "steps_per_s"), 3),
        "speedup": round(statistics.median(ratios), 3), "speedup_per_round": [round(x, 3) for x in ratios],
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "steps": args.steps,
        "warmup": args.warmup, "rounds": args.rounds, "threads": args.threads, "trl_version": trl.__version__,
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
        "teacher": args.teacher or "tiny-teacher (random)", "student": args.student or "tiny-student (random)",
    }
    for key in ("median_step_s", "gen_tokens_per_step", "gen_width_per_step"):
        report[f"specdistill_{key}"], report[f"trl_{key}"] = round(median(0, key), 4), round(median(1, key), 4)
    report["specdistill_rollout_compile"] = report["specdistill_train_compile"] = args.compile
    report["specdistill_warmup_s"] = round(max(r[0]["warmup_s"] for r in rounds), 2)  # compiling is in round 1
    report["specdistill_graphs_compiled_in_timed_steps"] = sum(r[0]["graphs_compiled_in_timed_steps"] for r in rounds)
    report["trl_activation_checkpointing"] = rounds[0][1]["activation_checkpointing"]
    report["trl_torch_compile"] = args.trl_compile
    print(json.dumps(report))


if __name__ == "__main__":
    main()
