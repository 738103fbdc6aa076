"""`specdistill bench`: drafts measured as the target's speculative drafter, on this engine or llama.cpp's."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .args import UsageError
from .checks import check_devices, check_models, check_output_file, check_prompts_fit, load_for_inference


def _bench_records(args, fields):
    """The records whose prompts bench runs: --prompts (a text or data file) or the task's test split."""
    from ..config import DatasetConfig
    from ..data.prompts import prompt_records
    from ..data.records import load_records
    from ..data.tasks import get_task

    if args.prompts:
        return prompt_records(args.prompts, fields)[: args.limit]
    get_task(args.task)
    return load_records(DatasetConfig(task=args.task, split="test"))[: args.limit]


def bench_prompts(args, tokenizer, views=None, records=None):
    """(target prompts, draft prompts): the target reads the teacher view, the draft that too or the student
    view (--draft-view), each made as training makes it. views, records: by default those without --config."""
    from ..data.prompts import INFERENCE_VIEWS, encode_prompts

    views = views or INFERENCE_VIEWS
    records = _bench_records(args, None) if records is None else records

    target = encode_prompts(records, tokenizer, views, "teacher")
    return target, (encode_prompts(records, tokenizer, views) if args.draft_view == "student" else target)


def _check_bench_args(args):
    """Everything bench can check before loading a model: outputs, devices, models, the prompts' source and
    settings. Returns the draft specs (--draft A,B,C), the records and the views."""
    from ..data.prompts import prompt_settings

    check_output_file(args.json_out, "--json")
    check_output_file(args.plot, "--plot")
    check_devices(args)
    names = [d.strip() for d in args.draft.split(",") if d.strip()]
    check_models(("--target", args.target), *(("--draft", name) for name in names))
    views, fields = prompt_settings(args.config, args.prompts)
    return names, _bench_records(args, fields), views


def _check_bench_prompts(args, target, draft, prompts, draft_prompts, records) -> None:
    from ..data.prompts import prompt_labels

    labels = prompt_labels(records) if args.prompts else [f"prompt {i + 1} of task {args.task}"
                                                          for i in range(len(prompts))]
    check_prompts_fit(target, prompts, args.max_new_tokens, "--target", labels)
    check_prompts_fit(draft, draft_prompts, args.max_new_tokens, "--draft", labels)


def _bench_gammas(spec: str | None, drafts: int) -> list:
    """--gamma: "auto" or a list of whole numbers >= 1; None = 4 for one draft, auto for several."""
    if spec is None:
        return ["auto"] if drafts > 1 else [4]
    if spec.strip() == "auto":
        return ["auto"]
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
    from ..evaluate.llamacpp import bench_llamacpp, check_llamacpp_args, format_llamacpp_table
    from ..models import load_tokenizer, resolve_device

    folders = check_llamacpp_args(args.target, names, args.hf_target, args.hf_draft, args.temperature, args.compare_hf)
    gammas = [4] if args.gamma is None else _bench_gammas(args.gamma, 1)
    if gammas == ["auto"]:
        raise UsageError("--gamma auto: --engine llamacpp takes whole numbers (e.g. 4 or 2,4,8), one server each")
    tokenizer = load_tokenizer(args.hf_target or args.target)
    prompts, _ = bench_prompts(args, tokenizer, views, records)
    report = bench_llamacpp(args.target, names, prompts, tokenizer, gammas, args.max_new_tokens, args.threads,
                            args.repeats, args.hf_target, folders, args.dtype, resolve_device(args.device))
    for row in report["results"]:
        print(json.dumps(row))
    print(format_llamacpp_table(report["results"]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    return 0


def cmd_bench(args) -> int:
    from ..models import check_same_tokenizer, load_tokenizer
    from ..progress import phase

    names, records, views = _check_bench_args(args)
    if args.engine == "llamacpp":
        return _bench_llamacpp(args, names, records, views)
    gammas = _bench_gammas(args.gamma, len(names))
    tokenizer = load_tokenizer(args.target)
    for name in names:  # every pair is checked before any model loads
        check_same_tokenizer(tokenizer, load_tokenizer(name), names=(args.target, name))
    phase(f"loading the target {args.target}")
    target, _ = load_for_inference(args.target, args.device, args.dtype, tokenizer)
    prompts, draft_prompts = bench_prompts(args, tokenizer, views, records)
    results, sizes = [], {}
    for d, name in enumerate(names, 1):
        phase(f"draft {d}/{len(names)}: loading {name}")
        draft, _ = load_for_inference(name, args.draft_device or args.device, args.dtype, tokenizer)
        _check_bench_prompts(args, target, draft, prompts, draft_prompts, records)
        sizes[name] = {"layers": draft.config.get_text_config().num_hidden_layers,
                       "parameters": sum(p.numel() for p in draft.parameters())}
        label = f"draft {d}/{len(names)} {name}"
        results += _bench_draft(args, name, label, target, draft, tokenizer, prompts, draft_prompts, gammas)
    _report_bench(args, names, target, results, sizes)
    return 0


def _bench_draft(args, name, label, target, draft, tokenizer, prompts, draft_prompts, gammas) -> list[dict]:
    """One draft's rows: each batch size at each gamma (auto: the best predicted one), each printed as a JSON line
    as it is measured."""
    from ..evaluate.speculative import bench_pair, choose_gamma, measure_forward_costs
    from ..progress import phase

    opts = dict(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
                draft_prompts=draft_prompts, compile=args.compile)
    rows = []
    for bs in [int(x) for x in str(args.batch_size).split(",")]:
        for gamma in gammas:
            phase(f"{label}, batch size {bs}, gamma {gamma}: {len(prompts)} prompt(s)")
            choice = None
            if gamma == "auto":
                costs = measure_forward_costs(target, draft, prompts[0], bs, compile=args.compile)
                choice = choose_gamma(target, draft, prompts, tokenizer, costs, batch_size=bs, **opts)
            r = bench_pair(target, draft, prompts, tokenizer, gamma=choice["gamma"] if choice else gamma,
                           schedule=args.gamma_schedule, batch_size=bs, compare_hf=args.compare_hf and bs == 1,
                           repeats=args.repeats, **opts)  # its costs measured between its timed runs
            r = {"draft": name, **r, **({"gamma_auto": choice} if choice else {})}
            rows.append(r)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                              if k not in ("per_position_acceptance", "predicted_by_gamma")}))
    return rows


def _report_bench(args, names: list[str], target, results: list[dict], sizes: dict) -> None:
    """The comparison table of several drafts, the --json report and the --plot figure."""
    from ..evaluate.plots import plot_bench, plot_drafts
    from ..evaluate.speculative import draft_comparison, format_comparison

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
