"""The `specdistill` command (DESIGN section 4). Each subcommand is a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from pathlib import Path

from .errors import DEBUG_ENV, UserError, one_line


class UsageError(UserError):
    """A command-line argument is wrong (argparse's own checks, or the ranges below); `prog` is the command."""

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are UsageErrors: main prints them on one line and returns 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)", self.prog)


# ---------------------------------------------------------------- argument types: ranges checked where values enter
def int_at_least(low: int):
    """argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def finite_float(low: float | None = None, high: float | None = None, low_open: bool = False):
    """argparse type: a finite number in [low, high] (or (low, high] with low_open)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = (not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low))
               or (high is not None and value > high))
        if bad:
            left = "(" if low_open else "["
            span = f"{left}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise argparse.ArgumentTypeError(f"must be a finite number in {span}, got {text!r}")
        return value

    return parse


def int_list(low: int):
    """argparse type: a comma-separated list of integers >= low ("1,2,4"); the text is kept as given."""

    def parse(text: str) -> str:
        items = [t.strip() for t in str(text).split(",")]
        for item in items:
            try:
                value = int(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected integers >= {low}, comma-separated (e.g. 1,2,4); "
                                                 f"{item!r} in {text!r} is not one") from None
            if value < low:
                raise argparse.ArgumentTypeError(f"every value must be >= {low}; got {value} in {text!r}")
        return text

    return parse


POSITIVE, NON_NEGATIVE = int_at_least(1), int_at_least(0)
TEMPERATURE, TOP_P = finite_float(0.0), finite_float(0.0, 1.0, low_open=True)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    _add_debug(p)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.max_steps=10 (repeatable)")


def _add_debug(p: argparse.ArgumentParser, default=argparse.SUPPRESS) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help=f"show the traceback of an input error too (or set {DEBUG_ENV}=1)")


DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")  # models.DTYPE_CHOICES (torch is not imported here)


def _add_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="the models' dtype; auto (default): each checkpoint's own (its config's dtype, float32 "
                   "where it names none; the presets are float32)")


def _add_prompt_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a YAML config, or a run's config.yaml: its data.views settings (system prompts, "
                   "template_options such as enable_thinking, the knowledge template, few_shot, the limits, "
                   "use_chat_template) and its datasets' field mapping make the prompts as training made them "
                   "(default: the default views, with no limits but the models' positions)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="specdistill", description="Distil students that their teachers accept as drafts.")
    _add_debug(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="built-in end-to-end run: teacher, student, distillation, report")
    p.add_argument("--quick", action="store_true", help="fewer steps and samples (under 3 minutes on 2 CPU cores); "
                   "the same as --plan quick")
    p.add_argument("--plan", default="default", choices=["default", "paper", "quick"],
                   help="default: make demo (10 minutes with set-up on 2 CPU cores); paper: longer training and the "
                   "whole test splits, as in docs/results.md")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo); a demo run again "
                   "into it replaces the earlier demo's runs")
    p.add_argument("--retrain", action="store_true", help="retrain the built-in teacher instead of using the shipped one")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="first seed (default 0)")
    p.add_argument("--seeds", type=POSITIVE, default=None, help="train every method with this many seeds; the "
                   "report gives the mean and its 95%% interval (default: the plan's, 3 for default, 5 for paper, 2 "
                   "for quick)")
    p.add_argument("--results", default=None, help="also write the report, with its figures, as this markdown file "
                   "(make results: docs/results.md; its figures go to img/ beside it)")

    for name, text in (("sft", "supervised fine-tuning (CE on response tokens)"), ("distill", "distil a student from a teacher")):
        _add_config_args(sub.add_parser(name, help=text))

    p = sub.add_parser("eval", help="score a model on a built-in task or a data file")
    p.add_argument("--model", required=True, help="model folder, hub id or preset")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="built-in task: arith or facts")
    src.add_argument("--data", help="data file (JSON, JSONL, CSV, parquet) with references")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--view", default="student", choices=["student", "teacher"], help="teacher = with knowledge")
    p.add_argument("--limit", type=POSITIVE, default=None, help="score the first N records only")
    p.add_argument("--max-new-tokens", type=POSITIVE, default=64)
    p.add_argument("--batch-size", type=POSITIVE, default=32)
    p.add_argument("--device", default="auto")
    _add_dtype(p)
    p.add_argument("--metrics", default=None, metavar="NAMES",
                   help="comma-separated: exact_match,chrf,bleu,rouge_l,perplexity (default: every one the records "
                   "allow). exact_match needs --task or a GSM8K `#### N` answer; the others need reference "
                   "responses. chrf and bleu are on sacrebleu's 0-100 scale, rouge_l and exact_match 0-1")
    p.add_argument("--teacher", help="a teacher model: also report top1_agreement, the share of reference-response "
                   "positions where the two models' argmax tokens agree (each reading its own view)")
    p.add_argument("--json", dest="json_out", help="write the scores and samples to this JSON file")
    _add_prompt_config(p)

    p = sub.add_parser("generate", help="generate from a model, alone or with a draft (speculative decoding)")
    p.add_argument("--model", required=True, help="the target model")
    p.add_argument("--draft", help="a draft model: speculative decoding (greedy at T=0, lossless sampling at T>0)")
    p.add_argument("--gamma", type=POSITIVE, default=4, help="drafted tokens per block (with --draft)")
    p.add_argument("--gamma-schedule", default="constant", choices=["constant", "lupi", "heuristic"])
    p.add_argument("--batch-size", type=POSITIVE, default=16)
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="one prompt (a user message; the chat template is applied)")
    prompt.add_argument("--prompts", help="a file with one prompt per line, or a .jsonl/.json/.parquet data file "
                                          "read as training reads it: text records {query, ...} or pre-tokenized "
                                          "rows {prompt_ids: [...]} (no template)")
    p.add_argument("--view", default="student", choices=["student", "teacher"],
                   help="the view of the records the models read (teacher: with its system prompt, few-shot examples "
                   "and knowledge; the two are the same without --config or knowledge)")
    p.add_argument("--temperature", type=TEMPERATURE, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=TOP_P, default=1.0)
    p.add_argument("--max-new-tokens", type=POSITIVE, default=64)
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--device", default="auto")
    _add_dtype(p)
    p.add_argument("--draft-device", help="the draft's device (default: --device), e.g. cpu beside a cuda target")
    p.add_argument("--json", dest="json_out", help="write texts, token ids and statistics to this JSON file")
    _add_prompt_config(p)

    p = sub.add_parser("bench", help="measure drafts as the target's speculative drafter")
    p.add_argument("--engine", default="specdistill", choices=["specdistill", "llamacpp"],
                   help="specdistill (default): this engine on transformers models; llamacpp: llama.cpp's server "
                   "(xllamacpp) on GGUF files, target alone and with each draft, greedy, with its own counters beside "
                   "specdistill's acceptance and predicted speedup for the same pair (docs/deploy.md)")
    p.add_argument("--target", required=True)
    p.add_argument("--draft", required=True, help="a draft model; several, comma-separated (A,B,C), are compared in "
                   "one table (and one plot with --plot), each at its best gamma")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--task", default="arith", help="built-in task whose test prompts to use (default arith)")
    src.add_argument("--prompts", help="a file with one prompt per line (user messages), or a .jsonl/.json/.parquet "
                                       "data file read as training reads it: text records {query, ...} or "
                                       "pre-tokenized rows {prompt_ids: [...]}")
    p.add_argument("--limit", type=POSITIVE, default=64, help="number of prompts (default 64)")
    p.add_argument("--gamma", default=None, help="drafted tokens per block; a list sweeps: 1,2,4,8; auto = the gamma "
                   "in 1..16 with the best predicted speedup, from the acceptance of an untimed run at gamma 4 and "
                   "the measured forward costs (default: 4 for one draft, auto for several)")
    p.add_argument("--gamma-schedule", default="constant", choices=["constant", "lupi", "heuristic"])
    p.add_argument("--batch-size", type=int_list(1), default="1", help="batch size; a list gives several: 1,8")
    p.add_argument("--temperature", type=TEMPERATURE, default=0.0, help="0 = greedy; > 0: lossless speculative sampling")
    p.add_argument("--top-p", type=TOP_P, default=1.0, help="nucleus mass kept when sampling, in (0, 1]; 1 = off")
    p.add_argument("--max-new-tokens", type=POSITIVE, default=64)
    p.add_argument("--draft-view", default="target", choices=["target", "student"],
                   help="the draft reads the target's prompt (default) or the student view, without knowledge")
    p.add_argument("--compare-hf", action="store_true",
                   help="also run transformers' assisted generation (batch 1); its draft reads the target's prompt, "
                   "so the engine run it is compared with does too, whatever --draft-view says")
    p.add_argument("--repeats", type=POSITIVE, default=3, help="timed runs per figure, interleaved; the median is kept")
    p.add_argument("--compile", action="store_true",
                   help="run the engine with torch.compile'd model forwards (same tokens; graphs compile during warmup)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--device", default="auto")
    _add_dtype(p)
    p.add_argument("--draft-device", help="the draft's device (default: --device), e.g. cpu beside a cuda target")
    p.add_argument("--json", dest="json_out", help="write every figure to this JSON file")
    p.add_argument("--plot", help="write the acceptance-per-position and speedup-vs-gamma plot to this PNG (several "
                   "drafts: predicted and measured speedup of each)")
    _add_prompt_config(p)
    p.add_argument("--threads", type=POSITIVE, default=2, help="--engine llamacpp: llama.cpp's threads (default 2)")
    p.add_argument("--hf-target", help="--engine llamacpp: a Hugging Face folder of the target for specdistill's side "
                   "of the table (default: the target GGUF, loaded through transformers)")
    p.add_argument("--hf-draft", help="--engine llamacpp: Hugging Face folders of the drafts, comma-separated in the "
                   "order of --draft (default: the draft GGUFs, loaded through transformers)")

    p = sub.add_parser("init-draft", help="a draft cut from a model's own layers (embeddings, chosen decoder layers, "
                       "final norm, LM head, tokenizer)")
    p.add_argument("--from", dest="source", required=True, help="the source model: folder, hub id or preset")
    p.add_argument("--layers", required=True, help="a count N (keeps the first N-1 layers and the last) or 0-based "
                   "layer indices in increasing order, comma-separated (0,1,2,29)")
    p.add_argument("--out", required=True, help="a new folder for the draft (written atomically)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the dtype the source loads in and the draft is saved in")

    p = sub.add_parser("convert", help="a GGUF checkpoint as a plain Hugging Face folder (dequantized once, so later "
                       "runs load it in seconds)")
    p.add_argument("gguf", metavar="IN.gguf", help="the GGUF file (llama.cpp's format)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="a new (or empty) folder; a folder with a model is refused")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the weights' dtype in the folder (default float32)")

    p = sub.add_parser("export", help="a model folder as one GGUF file for llama.cpp and Ollama (llama, mistral, "
                       "gemma3_text)")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a Hugging Face model folder (a run's final/)")
    p.add_argument("out", metavar="OUT.gguf", help="the file to write (an existing file is refused)")
    p.add_argument("--outtype", default="f16", choices=["f32", "f16", "q8_0"],
                   help="the 2-D weights' type (norms stay f32): f32 exact, f16 (default) within 2^-11 relative, "
                   "q8_0 within 1/226 of each 32-weight block's largest (docs/models.md)")

    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="report every bad record with its line or index")
    c.add_argument("file")
    c.add_argument("--config", help="use the field mapping and views of this config")
    c.add_argument("--format", default="auto", choices=["auto", "lupi", "json", "jsonl", "csv", "parquet", "tokens"])
    for command in (*sub.choices.values(), c):
        if "--debug" not in command._option_string_actions:
            _add_debug(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code: 0, 2 for a user's mistake (one line on stderr: the command, then
    the message), 3 for a diverged training run. Any other exception is a bug and propagates with its traceback
    (exit 1). --debug or SPECDISTILL_DEBUG=1 prints the traceback of a user's mistake too."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug, prog = os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in argv, "specdistill"
    try:
        args = build_parser().parse_args(argv)
        debug, prog = debug or args.debug, f"specdistill {args.command}"
        with _reporting(args.command):
            return COMMANDS[args.command](args) or 0
    except (UserError, FileNotFoundError) as exc:
        if debug:
            traceback.print_exc()
        print(f"{getattr(exc, 'prog', None) or prog}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2


def _reporting(command: str):
    """Phase lines and progress bars on stderr for the commands that run over many prompts (progress.py)."""
    import contextlib

    from .progress import reporting

    return reporting(command) if command in ("bench", "eval", "generate") else contextlib.nullcontext()


def cmd_train(args) -> int:
    import os

    from .config import load_config
    from .train import TrainingDiverged, train_student

    cfg = load_config(args.config, args.overrides)
    try:
        metrics = train_student(cfg, sft=args.command == "sft")
    except TrainingDiverged as exc:
        print(f"specdistill {args.command}: error: {exc}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, indent=1))
        print(f"model saved to {Path(cfg.train.output_dir) / 'final'}")
    return 0


def check_output_file(path: str | None, flag: str) -> None:
    """An output file (--json, --plot) must be writable where asked: checked before any work, so that a long run
    does not fail at its end."""
    if path is None:
        return
    target = Path(path)
    if not str(path).strip() or target.is_dir():
        raise UsageError(f"{flag} {path!r}: give a file path, not a folder")
    if not target.parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {target.parent} does not exist; create it first")
    if not os.access(target.parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"{flag} {path}: cannot write there (permission denied)")


def _check_models(*specs: tuple[str, str | None]) -> None:
    """(flag, model spec) pairs: each given spec must be able to load (models.check_model_spec)."""
    from .models import check_model_spec

    for flag, spec in specs:
        if spec is not None:
            check_model_spec(spec, flag)


def _check_devices(args) -> None:
    from .models import check_device

    check_device(args.device, "--device")
    if getattr(args, "draft_device", None):
        check_device(args.draft_device, "--draft-device")


def _check_prompts_fit(model, prompts: list[list[int]], max_new_tokens: int, flag: str, labels: list[str]) -> None:
    """Refuse a prompt that leaves the model fewer than --max-new-tokens positions (it would decode garbage)."""
    from .models import max_positions

    limit = max_positions(model)
    for label, ids in zip(labels, prompts):
        if limit is not None and len(ids) + max_new_tokens > limit:
            raise UserError(f"{label} is {len(ids)} tokens; with --max-new-tokens {max_new_tokens} it needs "
                            f"{len(ids) + max_new_tokens} positions, but {flag} has {limit} (max_position_embeddings); "
                            f"the prompt is refused, not cut: shorten it or lower --max-new-tokens")


def _load_for_inference(spec: str, device: str, dtype: str, tokenizer=None):
    from .models import load_model, load_tokenizer, resolve_device

    tokenizer = tokenizer or load_tokenizer(spec)
    model = load_model(spec, dtype, resolve_device(device), tokenizer).eval()
    return model, tokenizer


def _load_pair(main: str, other: str | None, args, other_device: str | None = None, other_role: str = "draft"):
    """(main model, other model or None, tokenizer). The tokenizers are compared before any model is loaded (and
    before the loading phase is said): a pair that does not share one is refused, naming both and the first
    differing token. other_role: how the loading phase names the other model."""
    from .models import check_same_tokenizer, load_tokenizer
    from .progress import phase

    tokenizer = load_tokenizer(main)
    if other:
        check_same_tokenizer(tokenizer, load_tokenizer(other), names=(main, other))
    phase(f"loading {main}" + (f" and the {other_role} {other}" if other else ""))
    model, _ = _load_for_inference(main, args.device, args.dtype, tokenizer)
    second = _load_for_inference(other, other_device or args.device, args.dtype, tokenizer)[0] if other else None
    return model, second, tokenizer


def cmd_eval(args) -> int:
    from .config import DatasetConfig
    from .data.prompts import prompt_settings
    from .data.records import load_records
    from .data.tasks import get_task
    from .evaluate.metrics import parse_metrics, sacrebleu_signatures, select_metrics
    from .evaluate.quality import agreement_on_records, evaluate_records
    from .progress import phase

    check_output_file(args.json_out, "--json")
    _check_devices(args)
    if args.task:
        get_task(args.task)
    views, fields = prompt_settings(args.config, args.data)
    ds = DatasetConfig(task=args.task, split=args.split) if args.task else DatasetConfig(path=args.data, fields=fields)
    records = load_records(ds)[: args.limit]
    scorer = get_task(args.task).scorer if args.task else None  # None: GSM8K `####` matching
    rows = [{**r.extra, "response": r.response} for r in records]
    try:
        requested = parse_metrics(args.metrics) if args.metrics else None  # None: every metric that applies
        metrics, skipped = select_metrics(requested, rows, scorer is not None)
    except ValueError as exc:  # checked before the model loads
        print(f"specdistill eval: error: {exc}", file=sys.stderr)
        return 2
    if args.teacher and any(r.response is None for r in records):
        print("specdistill eval: error: --teacher measures top-1 agreement on reference responses; the records "
              "need a response field (or use --task)", file=sys.stderr)
        return 2
    _check_models(("--model", args.model), ("--teacher", args.teacher))
    model, teacher, tokenizer = _load_pair(args.model, args.teacher, args, other_role="teacher")
    from .data.views import check_encodable, record_texts

    check_encodable(record_texts(records, views), tokenizer, args.model)
    phase(f"scoring {len(records)} record(s): {', '.join(metrics)}")
    result = evaluate_records(model, tokenizer, records, views, scorer, args.view, args.max_new_tokens,
                              args.batch_size, metrics)
    summary = {"model": args.model, "task": args.task or args.data, "split": args.split, "view": args.view,
               **({"config": args.config} if args.config else {}), **{m: result[m] for m in metrics},
               "n": result["n"]}
    if teacher is not None:
        summary["teacher"] = args.teacher
        phase("top-1 agreement with the teacher")
        summary["top1_agreement"] = agreement_on_records(model, teacher, tokenizer, records, views, args.batch_size)
    if skipped:
        summary["skipped"] = skipped
    if {"chrf", "bleu"} & set(metrics):
        summary["sacrebleu"] = {k: v for k, v in sacrebleu_signatures().items() if k in metrics}
    print(json.dumps(summary))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({**summary, "samples": result["samples"]}, indent=1))
    return 0


def cmd_generate(args) -> int:
    from .data.prompts import encode_prompts, prompt_labels, prompt_records, prompt_settings
    from .data.records import Record
    from .evaluate.quality import generate_ids
    from .evaluate.speculative import run_speculative
    from .progress import phase

    if args.prompt is not None and not args.prompt.strip():
        raise UsageError("--prompt: the prompt is empty; give the text of a user message")
    if args.draft_device and not args.draft:
        raise UsageError("--draft-device places the draft: give --draft too")
    check_output_file(args.json_out, "--json")
    _check_devices(args)
    _check_models(("--model", args.model), ("--draft", args.draft))
    views, fields = prompt_settings(args.config, args.prompts)
    records = ([Record(id="1", query=args.prompt, where="--prompt")] if args.prompt is not None
               else prompt_records(args.prompts, fields))
    labels = prompt_labels(records)
    model, draft, tokenizer = _load_pair(args.model, args.draft, args, args.draft_device)
    prompts = encode_prompts(records, tokenizer, views, args.view)
    for flag, m in (("--model", model), ("--draft", draft)):
        if m is not None:
            _check_prompts_fit(m, prompts, args.max_new_tokens, flag, labels)
    stats = None
    phase(f"generating {len(prompts)} prompt(s)" + (f", speculative at gamma {args.gamma}" if draft else ""))
    if draft is not None:
        outputs, gen_stats, _ = run_speculative(
            model, draft, prompts, tokenizer, gamma=args.gamma, schedule=args.gamma_schedule, temperature=args.temperature,
            top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed)
        stats = gen_stats.metrics() | {"rollout/per_position_acceptance": gen_stats.per_position_acceptance}
    else:
        outputs = generate_ids(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, args.temperature,
                               args.top_p, args.seed)
    decoded = tokenizer.batch_decode(outputs, skip_special_tokens=True)
    for text in decoded:
        print(text)
    if args.json_out:
        rows = [{"prompt": r.query, "text": d, "token_ids": o} for r, d, o in zip(records, decoded, outputs)]
        Path(args.json_out).write_text(json.dumps({"outputs": rows, "stats": stats}, indent=1))
    if stats:
        print(json.dumps({k: v for k, v in stats.items() if not k.startswith("time/")}), file=sys.stderr)
    return 0


def _bench_records(args, fields):
    """The records whose prompts bench runs: --prompts (a text or data file) or the task's test split."""
    from .config import DatasetConfig
    from .data.prompts import prompt_records
    from .data.records import load_records
    from .data.tasks import get_task

    if args.prompts:
        return prompt_records(args.prompts, fields)[: args.limit]
    get_task(args.task)
    return load_records(DatasetConfig(task=args.task, split="test"))[: args.limit]


def _bench_prompts(args, tokenizer, views=None, records=None):
    """(target prompts, draft prompts): the target reads the teacher view, the draft that too or the student
    view (--draft-view), each made as training makes it. views, records: by default those without --config."""
    from .data.prompts import INFERENCE_VIEWS, encode_prompts

    views = views or INFERENCE_VIEWS
    records = _bench_records(args, None) if records is None else records

    target = encode_prompts(records, tokenizer, views, "teacher")
    return target, (encode_prompts(records, tokenizer, views) if args.draft_view == "student" else target)


def _check_bench_args(args):
    """Everything bench can check before loading a model: outputs, devices, models, the prompts' source and
    settings. Returns the draft specs (--draft A,B,C), the records and the views."""
    from .data.prompts import prompt_settings

    check_output_file(args.json_out, "--json")
    check_output_file(args.plot, "--plot")
    _check_devices(args)
    names = [d.strip() for d in args.draft.split(",") if d.strip()]
    _check_models(("--target", args.target), *(("--draft", name) for name in names))
    views, fields = prompt_settings(args.config, args.prompts)
    return names, _bench_records(args, fields), views


def _check_bench_prompts(args, target, draft, prompts, draft_prompts, records) -> None:
    from .data.prompts import prompt_labels

    labels = prompt_labels(records) if args.prompts else [f"prompt {i + 1} of task {args.task}"
                                                          for i in range(len(prompts))]
    _check_prompts_fit(target, prompts, args.max_new_tokens, "--target", labels)
    _check_prompts_fit(draft, draft_prompts, args.max_new_tokens, "--draft", labels)


def _bench_gammas(spec: str | None, drafts: int) -> list:
    """--gamma: "auto" or a list of whole numbers >= 1; None = 4 for one draft, auto for several."""
    if spec is None:
        return ["auto"] if drafts > 1 else [4]
    if spec.strip() == "auto":
        return ["auto"]
    from .errors import UserError

    allowed = "give auto or whole numbers >= 1, comma-separated (e.g. 1,2,4,8)"
    gammas = []
    for item in (t.strip() for t in spec.split(",")):
        if not item.lstrip("-").isdigit():
            raise UserError(f"--gamma {spec!r}: {item!r} in {spec!r} is not a whole number; {allowed}")
        if int(item) < 1:
            raise UserError(f"--gamma {spec!r}: {item} is not >= 1; {allowed}")
        gammas.append(int(item))
    return gammas


def _bench_llamacpp(args, names: list[str], records, views) -> int:
    """`bench --engine llamacpp`: llama.cpp's server on the GGUF pair(s), beside specdistill's engine."""
    from .evaluate.llamacpp import bench_llamacpp, check_llamacpp_args, format_llamacpp_table
    from .models import load_tokenizer, resolve_device

    folders = check_llamacpp_args(args.target, names, args.hf_target, args.hf_draft, args.temperature, args.compare_hf)
    gammas = [4] if args.gamma is None else _bench_gammas(args.gamma, 1)
    if gammas == ["auto"]:
        raise UsageError("--gamma auto: --engine llamacpp takes whole numbers (e.g. 4 or 2,4,8), one server each")
    tokenizer = load_tokenizer(args.hf_target or args.target)
    prompts, _ = _bench_prompts(args, tokenizer, views, records)
    report = bench_llamacpp(args.target, names, prompts, tokenizer, gammas, args.max_new_tokens, args.threads,
                            args.repeats, args.hf_target, folders, args.dtype, resolve_device(args.device))
    for row in report["results"]:
        print(json.dumps(row))
    print(format_llamacpp_table(report["results"]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    return 0


def cmd_bench(args) -> int:
    from .evaluate.plots import plot_bench, plot_drafts
    from .evaluate.speculative import bench_pair, choose_gamma, draft_comparison, format_comparison, measure_forward_costs
    from .models import check_same_tokenizer, load_tokenizer
    from .progress import phase

    names, records, views = _check_bench_args(args)
    if args.engine == "llamacpp":
        return _bench_llamacpp(args, names, records, views)
    gammas = _bench_gammas(args.gamma, len(names))
    tokenizer = load_tokenizer(args.target)
    for name in names:  # every pair is checked before any model loads
        check_same_tokenizer(tokenizer, load_tokenizer(name), names=(args.target, name))
    phase(f"loading the target {args.target}")
    target, _ = _load_for_inference(args.target, args.device, args.dtype, tokenizer)
    prompts, draft_prompts = _bench_prompts(args, tokenizer, views, records)
    opts = dict(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
                draft_prompts=draft_prompts, compile=args.compile)
    results, sizes = [], {}
    for d, name in enumerate(names, 1):
        phase(f"draft {d}/{len(names)}: loading {name}")
        draft, _ = _load_for_inference(name, args.draft_device or args.device, args.dtype, tokenizer)
        _check_bench_prompts(args, target, draft, prompts, draft_prompts, records)
        sizes[name] = {"layers": draft.config.get_text_config().num_hidden_layers,
                       "parameters": sum(p.numel() for p in draft.parameters())}
        for bs in [int(x) for x in str(args.batch_size).split(",")]:
            for gamma in gammas:
                phase(f"draft {d}/{len(names)} {name}, batch size {bs}, gamma {gamma}: {len(prompts)} prompt(s)")
                choice = None
                if gamma == "auto":
                    costs = measure_forward_costs(target, draft, prompts[0], bs, compile=args.compile)
                    choice = choose_gamma(target, draft, prompts, tokenizer, costs, batch_size=bs, **opts)
                r = bench_pair(target, draft, prompts, tokenizer, gamma=choice["gamma"] if choice else gamma,
                               schedule=args.gamma_schedule, batch_size=bs, compare_hf=args.compare_hf and bs == 1,
                               repeats=args.repeats, **opts)  # its costs measured between its timed runs
                r = {"draft": name, **r, **({"gamma_auto": choice} if choice else {})}
                results.append(r)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                                  if k not in ("per_position_acceptance", "predicted_by_gamma")}))
    report = {"target": args.target, "draft": args.draft, "device": str(next(target.parameters()).device),
              "task": None if args.prompts else args.task, **({"config": args.config} if args.config else {}),
              "results": results}
    if len(names) > 1:
        report["comparison"] = draft_comparison(results, sizes)
        print(format_comparison(report["comparison"]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    if args.plot and len(names) > 1:
        plot_drafts(report["comparison"], results, args.plot, f"drafts for target {args.target}")
    elif args.plot:
        plot_bench(results, args.plot, f"draft {args.draft} for target {args.target}")
    return 0


def cmd_data(args) -> int:
    from .config import FieldMap, load_config
    from .data.prompts import configured_fields
    from .data.records import check_file, detect_format, is_lupi, read_rows

    fields = configured_fields(load_config(args.config), args.file) if args.config else FieldMap()
    n, problems = check_file(args.file, fields, args.format)
    fmt = detect_format(args.file, args.format)
    if not problems and fmt == "json" and is_lupi(read_rows(args.file, fmt)):
        fmt = "lupi"
    for p in problems:
        print(p)
    print(f"{args.file}: {n} records, {len(problems)} bad (format: {fmt})")
    return 1 if problems else 0


def cmd_init_draft(args) -> int:
    from .drafts import init_draft

    summary = init_draft(args.source, args.layers, args.out, args.dtype)
    print(json.dumps(summary))
    print(f"draft saved to {summary['out']}")
    return 0


def cmd_demo(args) -> int:
    from .study.demo import run_demo

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out}: is a file; give a folder for the demo's runs and report")
    run_demo(out=args.out, quick=args.quick, retrain=args.retrain, seed=args.seed, seeds=args.seeds, plan_name=args.plan,
             results=args.results)
    return 0


def cmd_convert(args) -> int:
    from .gguf_io import convert_gguf, is_gguf_spec
    from .models import DTYPES

    if not is_gguf_spec(args.gguf):
        raise UsageError(f"IN.gguf {args.gguf!r}: give a .gguf file (a Hugging Face folder needs no conversion)")
    print(json.dumps(convert_gguf(args.gguf, args.out_dir, DTYPES[args.dtype])))
    return 0


def cmd_export(args) -> int:
    from .gguf_export import export_gguf

    print(json.dumps(export_gguf(args.model_dir, args.out, args.outtype)))
    return 0


COMMANDS = {"sft": cmd_train, "distill": cmd_train, "eval": cmd_eval, "generate": cmd_generate, "bench": cmd_bench,
            "data": cmd_data, "demo": cmd_demo, "init-draft": cmd_init_draft, "convert": cmd_convert,
            "export": cmd_export}

if __name__ == "__main__":
    sys.exit(main())
