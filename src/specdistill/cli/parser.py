"""The `specdistill` parser: one function per command's flags (DESIGN section 4)."""

from __future__ import annotations

import argparse

from .args import (DTYPE_CHOICES, GAMMA_SCHEDULES, NON_NEGATIVE, POSITIVE, TEMPERATURE, TOP_P, _Parser, add_config_args, add_debug,
                   add_inference_flags, add_prompt_config, int_list)


def add_demo(sub) -> None:
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


def add_training(sub) -> None:
    for name, text in (("sft", "supervised fine-tuning (CE on response tokens)"), ("distill", "distil a student from a teacher")):
        add_config_args(sub.add_parser(name, help=text))


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score a model on a built-in task or a data file")
    p.add_argument("--model", required=True, help="model folder, hub id or preset")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="built-in task: arith or facts")
    src.add_argument("--data", help="data file (JSON, JSONL, CSV, parquet) with references")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--view", default="student", choices=["student", "teacher"], help="teacher = with knowledge")
    p.add_argument("--limit", type=POSITIVE, default=None, help="score the first N records only")
    p.add_argument("--batch-size", type=POSITIVE, default=32)
    p.add_argument("--metrics", default=None, metavar="NAMES",
                   help="comma-separated: exact_match,chrf,bleu,rouge_l,perplexity (default: every one the records "
                   "allow). exact_match needs --task or a GSM8K `#### N` answer; the others need reference "
                   "responses. chrf and bleu are on sacrebleu's 0-100 scale, rouge_l and exact_match 0-1")
    p.add_argument("--teacher", help="a teacher model: also report top1_agreement, the share of reference-response "
                   "positions where the two models' argmax tokens agree (each reading its own view)")
    add_inference_flags(p, "write the scores and samples to this JSON file", draft=False)
    add_prompt_config(p)


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate from a model, alone or with a draft (speculative decoding)")
    p.add_argument("--model", required=True, help="the target model")
    p.add_argument("--draft", help="a draft model: speculative decoding (greedy at T=0, lossless sampling at T>0)")
    p.add_argument("--gamma", type=POSITIVE, default=4, help="drafted tokens per block (with --draft)")
    p.add_argument("--gamma-schedule", default="constant", choices=GAMMA_SCHEDULES)
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
    add_inference_flags(p, "write texts, token ids and statistics to this JSON file", draft=True)
    add_prompt_config(p)


def add_bench(sub) -> None:
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
    p.add_argument("--gamma-schedule", default="constant", choices=GAMMA_SCHEDULES)
    p.add_argument("--batch-size", type=int_list(1), default="1", help="batch size; a list gives several: 1,8")
    p.add_argument("--temperature", type=TEMPERATURE, default=0.0, help="0 = greedy; > 0: lossless speculative sampling")
    p.add_argument("--top-p", type=TOP_P, default=1.0, help="nucleus mass kept when sampling, in (0, 1]; 1 = off")
    p.add_argument("--draft-view", default="target", choices=["target", "student"],
                   help="the draft reads the target's prompt (default) or the student view, without knowledge")
    p.add_argument("--compare-hf", action="store_true",
                   help="also run transformers' assisted generation (batch 1); its draft reads the target's prompt, "
                   "so the engine run it is compared with does too, whatever --draft-view says")
    p.add_argument("--repeats", type=POSITIVE, default=3, help="timed runs per figure, interleaved; the median is kept")
    p.add_argument("--compile", action="store_true",
                   help="run the engine with torch.compile'd model forwards (same tokens; graphs compile during warmup)")
    add_inference_flags(p, "write every figure to this JSON file", draft=True)
    p.add_argument("--plot", help="write the acceptance-per-position and speedup-vs-gamma plot to this PNG (several "
                   "drafts: predicted and measured speedup of each)")
    add_prompt_config(p)
    add_bench_llamacpp(p)


def add_bench_llamacpp(p: argparse.ArgumentParser) -> None:
    """bench's flags for --engine llamacpp only."""
    p.add_argument("--threads", type=POSITIVE, default=2, help="--engine llamacpp: llama.cpp's threads (default 2)")
    p.add_argument("--hf-target", help="--engine llamacpp: a Hugging Face folder of the target for specdistill's side "
                   "of the table (default: the target GGUF, loaded through transformers)")
    p.add_argument("--hf-draft", help="--engine llamacpp: Hugging Face folders of the drafts, comma-separated in the "
                   "order of --draft (default: the draft GGUFs, loaded through transformers)")


def add_model_files(sub) -> None:
    """init-draft, convert and export: commands that write a model folder or file."""
    p = sub.add_parser("init-draft", help="a draft cut from a model's own layers (embeddings, chosen decoder layers, "
                       "final norm, LM head, tokenizer)")
    p.add_argument("--from", dest="source", required=True, help="the source model: folder, hub id or preset")
    p.add_argument("--layers", required=True, help="a count N (keeps the first N-1 layers and the last) or 0-based "
                   "layer indices in increasing order, comma-separated (0,1,2,29)")
    p.add_argument("--out", required=True, help="a new folder for the draft (written atomically)")
    p.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES[1:],
                   help="the dtype the source loads in and the draft is saved in")

    p = sub.add_parser("convert", help="a GGUF checkpoint as a plain Hugging Face folder (dequantized once, so later "
                       "runs load it in seconds)")
    p.add_argument("gguf", metavar="IN.gguf", help="the GGUF file (llama.cpp's format)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="a new (or empty) folder; a folder with a model is refused")
    p.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES[1:],
                   help="the weights' dtype in the folder (default float32)")

    p = sub.add_parser("export", help="a model folder as one GGUF file for llama.cpp and Ollama (llama, mistral, "
                       "gemma3_text)")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a Hugging Face model folder (a run's final/)")
    p.add_argument("out", metavar="OUT.gguf", help="the file to write (an existing file is refused)")
    p.add_argument("--outtype", default="f16", choices=["f32", "f16", "q8_0"],
                   help="the 2-D weights' type (norms stay f32): f32 exact, f16 (default) within 2^-11 relative, "
                   "q8_0 within 1/226 of each 32-weight block's largest (docs/models.md)")


def add_data(sub) -> argparse.ArgumentParser:
    """`data check`; returns the check parser (its --debug is added with the others')."""
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="report every bad record with its line or index")
    c.add_argument("file")
    c.add_argument("--config", help="use the field mapping and views of this config")
    c.add_argument("--format", default="auto", choices=["auto", "lupi", "json", "jsonl", "csv", "parquet", "tokens"])
    return c


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="specdistill", description="Distil students that their teachers accept as drafts.")
    add_debug(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_demo, add_training, add_eval, add_generate, add_bench, add_model_files):
        add(sub)
    check = add_data(sub)
    for command in (*sub.choices.values(), check):
        if "--debug" not in command._option_string_actions:
            add_debug(command)
    return parser
