"""Built-in tasks, generated offline from a seed: `arith` (worked multi-step arithmetic) and `facts` (LUPI).

Each task yields records {id, query, response, answer[, knowledge, category]} in three disjoint splits, and
has a scorer that maps (prediction text, record) to 0/1.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from .grids import grid_splits, score_grids

# arith: 200 validation and 500 test problems, the rest train. facts: 150 validation facts, the other 300 test.
SPLIT_SIZES = {"arith": {"validation": 200, "test": 500}, "facts": {"validation": 150}}


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
    "facts": Task("facts", score_facts, "exact_match", has_knowledge=True),
    "grids": Task("grids", score_grids, "rule_score", has_knowledge=False),  # pre-tokenized (data/grids.py)
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; built-in tasks are: {', '.join(TASKS)}")
    return TASKS[name]


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
    return [{"id": f"{name}-{split}-{i}", **r} for i, r in enumerate(records)]
