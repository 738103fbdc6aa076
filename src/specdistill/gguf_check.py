"""llama.cpp as the independent reference for GGUF files: its tokenizer and its greedy decoding (DESIGN 10).

llama.cpp runs in-process (llamacpp_server.py). `tokenizer_check` compares the tokenizer transformers rebuilds
from a GGUF file with llama.cpp's tokenization of the same file on texts that exercise digits, runs of spaces,
special tokens, newlines and non-ASCII text; `benchmarks/gguf_tokenizer_check.py` runs it on real files.
"""

from __future__ import annotations

from .llamacpp_server import complete, serve, tokenize

# Each text exercises one thing a rebuilt tokenizer gets wrong first.
CHECK_TEXTS = {
    "digits": "12345 + 678 = 13023, 3.14159 and 1,000,000",
    "spaces": "two  spaces,   three,\ttab,\n\nnewlines   \n end ",
    "leading_space": " starts with a space",
    "words": "The quick brown fox jumps over the lazy dog.",
    "code": "def f(x):\n    return x ** 2  # square\n",
    "non_ascii": "café naïve Zürich — 東京 서울 Привет 😀",
    "punctuation": "Hello!!! What's this? (yes) [no] {maybe} \"quoted\" 'single'",
    "contractions": "I'VE been told he's there, don't you know? We'Ve a'lL",
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                "How many clips did Natalia sell altogether in April and May?",
}


def llamacpp_greedy(server, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """llama.cpp's greedy continuation of `prompt_ids` (ids in, ids out; it stops at its end-of-generation ids,
    which it keeps)."""
    return list(complete(server, prompt_ids, max_new_tokens)["tokens"])


def tokenizer_check(gguf_path, texts: dict[str, str] | None = None, tokenizer=None) -> dict:
    """Compare transformers' tokenizer of `gguf_path` (or `tokenizer`, e.g. a converted folder's) with
    llama.cpp's on `texts` (default CHECK_TEXTS, each special token written in a sentence, and a prompt rendered
    with the chat template). Returns
    {texts, equal, mismatches: [{name, text, transformers, llamacpp}]}."""
    from .models import load_tokenizer

    from .data.templates import render_prompt

    tokenizer = tokenizer or load_tokenizer(str(gguf_path))
    texts = dict(texts or CHECK_TEXTS)
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    for token in dict.fromkeys([*tokenizer.all_special_tokens, *specials[:12]]):
        texts.setdefault(f"special {token}", f"before {token} after{token}")
    if tokenizer.chat_template:  # a prompt as specdistill writes it: the template's markup, then the question
        texts["chat prompt"] = render_prompt(tokenizer, [{"role": "user", "content": CHECK_TEXTS["question"]}])
    mismatches = []
    with serve(gguf_path, n_ctx=512, what="llama.cpp's tokenizer check") as server:
        for name, text in texts.items():
            ours = tokenizer(text, add_special_tokens=False).input_ids
            theirs = tokenize(server, text)
            if ours != theirs:
                mismatches.append({"name": name, "text": text, "transformers": ours, "llamacpp": theirs})
    return {"texts": len(texts), "equal": len(texts) - len(mismatches), "mismatches": mismatches}
