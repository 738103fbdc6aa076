"""Built-in tasks, generated offline from a seed: `arith` (worked multi-step arithmetic), `arith_styles` (the same
problems, with gold solutions in several styles) and `facts` (LUPI).

Each task yields records {id, query, response, answer[, knowledge, category]} in three disjoint splits, and
has a scorer that maps (prediction text, record) to 0/1.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from .grids import grid_splits, score_grids

# arith: 200 validation and 500 test problems, the rest train. facts: 150 validation facts, the other 300 test.
SPLIT_SIZES = {"arith": {"validation": 200, "test": 500}, "facts": {"validation": 150}}

# arith_styles: each step line of a gold solution is written in one of three styles, drawn per line with these
# weights. The built-in teacher was trained on `arith`, so it writes style "symbols" only: matching the data and
# matching the teacher are different goals (the data's most likely style is the one the teacher never writes).
STYLE_WEIGHTS = {"symbols": 0.2, "words": 0.45, "result_first": 0.35}


# ---------------------------------------------------------------- arith
def _arith_items() -> list[dict]:
    """Every two-step problem of four templates: a one-digit multiplication (2..9) and an addition or
    subtraction with a number up to 30, each step written out, then `#### N`."""
    items = []
    digits = range(2, 10)
    for a in range(1, 31):
        for b in digits:
            for c in digits:
                p = b * c
                items.append((f"{a}+{b}*{c}", [f"{b}*{c}={p}", f"{a}+{p}={a + p}"], a + p))
                items.append((f"{b}*{c}+{a}", [f"{b}*{c}={p}", f"{p}+{a}={p + a}"], p + a))
                if a <= p:
                    items.append((f"{b}*{c}-{a}", [f"{b}*{c}={p}", f"{p}-{a}={p - a}"], p - a))
    for a in range(1, 9):
        for b in range(1, 10 - a):
            for c in digits:
                s = a + b
                items.append((f"({a}+{b})*{c}", [f"{a}+{b}={s}", f"{s}*{c}={s * c}"], s * c))
    return [
        {"query": f"What is {expr}?", "response": "\n".join(steps) + f"\n#### {ans}", "answer": str(ans)}
        for expr, steps, ans in items
    ]


_WORDS = {"+": "plus", "-": "minus", "*": "times"}


def restyle_step(step: str, style: str) -> str:
    """One step line `x op y=z` in a style: symbols `7*8=56`, words `7 times 8 is 56`, result_first `56=7*8`."""
    lhs, result = step.split("=")
    x, op, y = re.fullmatch(r"(\d+)([-+*])(\d+)", lhs).groups()
    if style == "words":
        return f"{x} {_WORDS[op]} {y} is {result}"
    return f"{result}={lhs}" if style == "result_first" else step


STYLE_PATTERNS = {"symbols": r"\d+[-+*]\d+=-?\d+", "words": r"\d+ (plus|minus|times) \d+ is -?\d+",
                  "result_first": r"-?\d+=\d+[-+*]\d+"}


def style_shares(texts: list[str]) -> dict[str, float]:
    """The fraction of step lines (every line but `#### N`) written in each style, and `other` for lines in none."""
    counts = dict.fromkeys([*STYLE_PATTERNS, "other"], 0)
    for text in texts:
        for line in (ln.strip() for ln in text.split("\n") if ln.strip() and not ln.startswith("####")):
            name = next((k for k, pat in STYLE_PATTERNS.items() if re.fullmatch(pat, line)), "other")
            counts[name] += 1
    total = sum(counts.values())
    return {k: v / total if total else math.nan for k, v in counts.items()}


def _styled(record: dict, rng: random.Random) -> dict:
    """The record with each step line restyled, styles drawn independently per line (STYLE_WEIGHTS)."""
    *steps, final = record["response"].split("\n")
    styles = rng.choices(list(STYLE_WEIGHTS), weights=list(STYLE_WEIGHTS.values()), k=len(steps))
    lines = [restyle_step(s, style) for s, style in zip(steps, styles)]
    return {**record, "response": "\n".join(lines + [final]), "styles": styles}


def extract_final_number(text: str) -> str | None:
    """The number after the last `####` (GSM8K format), without commas; None when there is none."""
    found = re.findall(r"####\s*(-?[\d,]*\.?\d+)", text)
    return found[-1].replace(",", "") if found else None


def score_arith(prediction: str, record: dict) -> float:
    """GSM8K-style exact match of the final `#### N` answer."""
    pred = extract_final_number(prediction)
    gold = str(record.get("answer") or "")
    gold = extract_final_number(gold) if "####" in gold else gold  # GSM8K rows hold the whole solution
    gold = gold or extract_final_number(record.get("response") or "")
    return float(pred is not None and gold is not None and float(pred) == float(gold))


# ---------------------------------------------------------------- facts
_SYLLABLES = ["ka", "ro", "mi", "tel", "van", "su", "dor", "li", "nax", "pe", "zun", "ha", "bri", "os", "gel", "tu"]
_CITIES = ["Pell", "Varn", "Osk", "Tirra", "Molde", "Quen", "Brask", "Ilum", "Dorrin", "Sael", "Kemp", "Yarrow"]
_JOBS = ["potter", "baker", "pilot", "weaver", "miner", "doctor", "singer", "farmer", "tailor", "smith", "judge"]
_PETS = ["fox", "owl", "goat", "crow", "hare", "newt", "cat", "dog", "mole", "lynx", "toad", "wren"]
_QUESTIONS = {
    "city": ["Where does {n} live?", "In which town does {n} live?", "What is the home town of {n}?"],
    "job": ["What does {n} do for work?", "What is the job of {n}?", "Which job does {n} have?"],
    "pet": ["What pet does {n} have?", "Which animal does {n} keep?", "What is the pet of {n}?"],
}


def _facts_people(rng: random.Random, n: int = 150) -> list[dict]:
    names: set[str] = set()
    while len(names) < n:
        first = "".join(rng.choice(_SYLLABLES) for _ in range(2)).capitalize()
        last = "".join(rng.choice(_SYLLABLES) for _ in range(2)).capitalize()
        names.add(f"{first} {last}")
    return [
        {"name": nm, "city": rng.choice(_CITIES), "job": rng.choice(_JOBS), "pet": rng.choice(_PETS)}
        for nm in sorted(names)
    ]


def _facts_splits(seed: int) -> dict[str, list[dict]]:
    """Each fact is asked in two of its three phrasings in train; the third goes to validation or test.

    The held-out phrasing is drawn per fact, so every phrasing is seen in training (on other facts) and the
    splits share no question. The knowledge base is one world: a closed-book student can only answer a test
    question if training taught it the fact under another phrasing.
    """
    rng = random.Random(seed)
    people = _facts_people(rng)
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    facts = [(p, attr) for p in people for attr in _QUESTIONS]
    rng.shuffle(facts)
    n_val = SPLIT_SIZES["facts"]["validation"]
    for i, (p, attr) in enumerate(facts):
        knowledge = f"{p['name']} lives in {p['city']}, works as a {p['job']} and has a pet {p['pet']}."
        base = {"knowledge": knowledge, "response": p[attr], "answer": p[attr], "category": attr}
        held = rng.randrange(len(_QUESTIONS[attr]))
        for k, template in enumerate(_QUESTIONS[attr]):
            split = "train" if k != held else ("validation" if i < n_val else "test")
            splits[split].append({**base, "query": template.format(n=p["name"])})
    return splits


def normalize_answer(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".")


def score_facts(prediction: str, record: dict) -> float:
    """Closed-book exact match after lower-casing and trimming whitespace and a final period."""
    return float(normalize_answer(prediction) == normalize_answer(record["answer"]))


# ---------------------------------------------------------------- registry
@dataclass(frozen=True)
class Task:
    name: str
    scorer: Callable[[str, dict], float]
    metric: str  # name of the task metric in logs and reports, e.g. val/exact_match
    has_knowledge: bool


TASKS = {
    "arith": Task("arith", score_arith, "exact_match", has_knowledge=False),
    "arith_styles": Task("arith_styles", score_arith, "exact_match", has_knowledge=False),
    "facts": Task("facts", score_facts, "exact_match", has_knowledge=True),
    "grids": Task("grids", score_grids, "rule_score", has_knowledge=False),  # pre-tokenized (data/grids.py)
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; built-in tasks are: {', '.join(TASKS)}")
    return TASKS[name]


def check_config_tasks(data, source) -> None:
    """Every dataset of a config's data section (data.train, data.validation) that names a task names a built-in
    one; source: the config file, named first as config errors are."""
    from ..config import ConfigError

    named = [(f"data.train[{i}]", ds) for i, ds in enumerate(data.train)] + [("data.validation", data.validation)]
    for where, ds in named:
        if ds is not None and ds.task is not None and ds.task not in TASKS:
            raise ConfigError(f"{source}: {where}.task: {ds.task!r} is not a built-in task; allowed: "
                              f"{', '.join(TASKS)} (a file: path)")


def load_task(name: str, split: str, seed: int = 0) -> list[dict]:
    """Records of a built-in task split ('train', 'validation' or 'test'), identical for the same seed."""
    get_task(name)
    if split not in ("train", "validation", "test"):
        raise UserError(f"unknown split {split!r}; allowed: train, validation, test")
    if name == "facts":
        records = _facts_splits(seed)[split]
    elif name == "grids":
        records = grid_splits(seed)[split]
    else:
        items = _arith_items()
        random.Random(seed).shuffle(items)
        n_val, n_test = SPLIT_SIZES["arith"]["validation"], SPLIT_SIZES["arith"]["test"]
        bounds = {"validation": (0, n_val), "test": (n_val, n_val + n_test), "train": (n_val + n_test, len(items))}
        lo, hi = bounds[split]
        records = items[lo:hi]
        if name == "arith_styles":  # the same problems and splits as arith (the teacher's), restyled
            style_rng = random.Random(f"{seed}-{split}")
            records = [_styled(r, style_rng) for r in records]
    return [{"id": f"{name}-{split}-{i}", **r} for i, r in enumerate(records)]
