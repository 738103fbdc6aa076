"""The tokenizer transformers rebuilds from a GGUF file against llama.cpp's own tokenizer of the same file.

For every .gguf file in MODELS (a folder, or files), both tokenize the texts of `gguf_check.CHECK_TEXTS` (digits,
runs of spaces, newlines, code, non-ASCII text, punctuation) and each special token written inside a sentence; with
--converted, the tokenizer of each converted folder (MODELS/<stem>/ or --converted DIR) is compared too. One line per
file, then one JSON line last: {file: {texts, equal, mismatches (the first 3)}, seconds}.

    python benchmarks/gguf_tokenizer_check.py models/
    python benchmarks/gguf_tokenizer_check.py models/SmolLM2-135M-Instruct.Q4_1.gguf --converted models/smollm2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="a folder of .gguf files, or .gguf files")
    p.add_argument("--converted", action="append", default=[], help="a folder converted from one of the files "
                   "(its gguf_source.json names it); its tokenizer is checked against llama.cpp on that file")
    args = p.parse_args()
    from transformers import AutoTokenizer

    from specdistill.gguf_check import tokenizer_check
    from specdistill.gguf_io import read_source_record

    files = [f for m in args.models for f in (sorted(Path(m).glob("*.gguf")) if Path(m).is_dir() else [Path(m)])]
    start, summary = time.perf_counter(), {}
    for file in files:
        found = tokenizer_check(file)
        summary[file.name] = {**found, "mismatches": found["mismatches"][:3]}
        print(f"{file.name}: {found['equal']}/{found['texts']} texts tokenized alike", flush=True)
    for folder in map(Path, args.converted):
        record = read_source_record(folder)
        if record is None:
            raise SystemExit(f"{folder}: no gguf_source.json; give a folder written by specdistill convert")
        found = tokenizer_check(record["gguf"], tokenizer=AutoTokenizer.from_pretrained(folder))
        summary[f"{folder.name} (converted)"] = {**found, "mismatches": found["mismatches"][:3]}
        print(f"{folder}: {found['equal']}/{found['texts']} texts tokenized alike", flush=True)
    print(json.dumps({"files": summary, "seconds": round(time.perf_counter() - start, 1)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
