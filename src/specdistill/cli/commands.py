"""The commands' handlers but bench's (bench.py): each is a thin layer over the library."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .args import UsageError
from .checks import (check_devices, check_models, check_output_file, check_prompts_fit, check_run_config,
                     load_pair)


def cmd_train(args) -> int:
    from ..config import load_config
    from ..train import TrainingDiverged, train_student

    cfg = load_config(args.config, args.overrides)
    check_run_config(cfg, args.config)
    try:
        metrics = train_student(cfg, sft=args.command == "sft")
    except TrainingDiverged as exc:
        print(f"specdistill {args.command}: error: {exc}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, indent=1))
        print(f"model saved to {Path(cfg.train.output_dir) / 'final'}")
    return 0


def cmd_eval(args) -> int:
    from ..config import DatasetConfig
    from ..data.prompts import prompt_settings
    from ..data.records import load_records
    from ..data.tasks import get_task
    from ..evaluate.metrics import parse_metrics, sacrebleu_signatures, select_metrics
    from ..evaluate.quality import agreement_on_records, evaluate_records
    from ..progress import phase

    check_output_file(args.json_out, "--json")
    check_devices(args)
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
    check_models(("--model", args.model), ("--teacher", args.teacher))
    model, teacher, tokenizer = load_pair(args.model, args.teacher, args, other_role="teacher")
    from ..data.prompt_views import check_encodable, record_texts

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
    from ..data.prompts import encode_prompts, prompt_labels, prompt_records, prompt_settings
    from ..data.records import Record
    from ..evaluate.quality import generate_ids
    from ..evaluate.speculative import run_speculative
    from ..progress import phase

    if args.prompt is not None and not args.prompt.strip():
        raise UsageError("--prompt: the prompt is empty; give the text of a user message")
    if args.draft_device and not args.draft:
        raise UsageError("--draft-device places the draft: give --draft too")
    check_output_file(args.json_out, "--json")
    check_devices(args)
    check_models(("--model", args.model), ("--draft", args.draft))
    views, fields = prompt_settings(args.config, args.prompts)
    records = ([Record(id="1", query=args.prompt, where="--prompt")] if args.prompt is not None
               else prompt_records(args.prompts, fields))
    labels = prompt_labels(records)
    model, draft, tokenizer = load_pair(args.model, args.draft, args, args.draft_device)
    prompts = encode_prompts(records, tokenizer, views, args.view)
    for flag, m in (("--model", model), ("--draft", draft)):
        if m is not None:
            check_prompts_fit(m, prompts, args.max_new_tokens, flag, labels)
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


def cmd_data(args) -> int:
    from ..config import FieldMap, load_config
    from ..data.prompts import configured_fields
    from ..data.records import check_file, detect_format, is_lupi, read_rows

    cfg = load_config(args.config) if args.config else None
    if cfg is not None:
        check_run_config(cfg, args.config)
    fields = configured_fields(cfg, args.file) if cfg is not None else FieldMap()
    n, problems = check_file(args.file, fields, args.format)
    fmt = detect_format(args.file, args.format)
    if not problems and fmt == "json" and is_lupi(read_rows(args.file, fmt)):
        fmt = "lupi"
    for p in problems:
        print(p)
    print(f"{args.file}: {n} records, {len(problems)} bad (format: {fmt})")
    return 1 if problems else 0


def cmd_init_draft(args) -> int:
    from ..drafts import init_draft

    summary = init_draft(args.source, args.layers, args.out, args.dtype)
    print(json.dumps(summary))
    print(f"draft saved to {summary['out']}")
    return 0


def cmd_demo(args) -> int:
    from ..study.demo import run_demo

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out}: is a file; give a folder for the demo's runs and report")
    run_demo(out=args.out, quick=args.quick, retrain=args.retrain, seed=args.seed, seeds=args.seeds, plan_name=args.plan,
             results=args.results)
    return 0


def cmd_convert(args) -> int:
    from ..gguf_io import convert_gguf, is_gguf_spec
    from ..models import DTYPES

    if not is_gguf_spec(args.gguf):
        raise UsageError(f"IN.gguf {args.gguf!r}: give a .gguf file (a Hugging Face folder needs no conversion)")
    print(json.dumps(convert_gguf(args.gguf, args.out_dir, DTYPES[args.dtype])))
    return 0


def cmd_export(args) -> int:
    from ..gguf_export import export_gguf

    print(json.dumps(export_gguf(args.model_dir, args.out, args.outtype)))
    return 0
