"""The `grids` world: class-conditional grids of discrete codes, and the id tokenizer they are written in.

A small stand-in for class-conditional image-token GPTs (a VQ image is a grid of codebook ids, generated in
raster order after a class token). There is no text: records are pre-tokenized (`prompt_ids`, `response_ids`).

The world (fixed, whatever the split seed): C=8 classes, K=32 codes, grids of 6x6 codes in raster order.
Class c has
- a palette P_c of 6 codes (palettes of different classes overlap),
- a successor map f_c, one 6-cycle over P_c,
- a column shift s_c in 0..5.
Row 0 is 6 codes drawn uniformly from P_c. Cell (r, j) of a later row is f_c(cell(r-1, (j + s_c) mod 6)), except
with probability NOISE, when it is a uniform code of P_c. So the next code depends on the class token (position
1 of the prompt) and on one code 6-11 positions back, which the class's shift picks: a model must find the
class, then look up the right cell above, then apply the class's map.

Prompt ids: [<bos>, <class_c>]; response ids: the 36 codes; the end is <eos>.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CLASSES, CODES, SIDE, PALETTE = 8, 32, 6, 6
CELLS = SIDE * SIDE
NOISE = 0.05  # share of cells of rows 1..5 drawn uniformly from the palette instead of by the rule
WORLD_SEED = 1234  # the rules: fixed, so a teacher trained once fits every split seed
GRID_SPLITS = {"train": 4000, "validation": 200, "test": 500}

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
SPECIAL = [PAD, EOS, BOS, UNK]


def class_token(c: int) -> str:
    return f"<class_{c}>"


def code_token(k: int) -> str:
    return f"<code_{k}>"


def build_grid_tokenizer() -> PreTrainedTokenizerFast:
    """The id tokenizer: <pad> <eos> <bos> <unk>, <class_0..7>, <code_0..31> (44 ids, in that order).

    Word-level over whitespace, so the text of token names round-trips: decoding ids gives the names joined by
    spaces (special tokens dropped with skip_special_tokens). <unk> makes ordinary text fail a clear check
    (`views.check_encodable`) rather than crash. No chat template: grid prompts are ids already."""
    names = SPECIAL + [class_token(c) for c in range(CLASSES)] + [code_token(k) for k in range(CODES)]
    core = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(names)}, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens(SPECIAL)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, bos_token=BOS,
                                   unk_token=UNK, padding_side="left", model_max_length=1024)


# Ids in the tokenizer above: the world's ids are fixed, so records need no tokenizer to be made.
BOS_ID = SPECIAL.index(BOS)
CLASS_BASE = len(SPECIAL)
CODE_BASE = CLASS_BASE + CLASSES


@dataclass(frozen=True)
class Rule:
    """One class's generative rule. palette: 6 codes; successor: code -> code, a 6-cycle over the palette;
    shift: the column offset of the cell above that a cell follows."""

    palette: tuple[int, ...]
    successor: dict
    shift: int

    def expected(self, grid: list[int], i: int) -> int:
        """The code the rule puts at raster index i >= SIDE of `grid`."""
        r, j = divmod(i, SIDE)
        return self.successor[grid[(r - 1) * SIDE + (j + self.shift) % SIDE]]


def world_rules() -> list[Rule]:
    """The C class rules, from WORLD_SEED."""
    rng = random.Random(WORLD_SEED)
    rules = []
    for _ in range(CLASSES):
        palette = tuple(rng.sample(range(CODES), PALETTE))
        cycle = list(palette)
        rng.shuffle(cycle)
        successor = {cycle[i]: cycle[(i + 1) % PALETTE] for i in range(PALETTE)}
        rules.append(Rule(palette, successor, rng.randrange(SIDE)))
    return rules


RULES = world_rules()


def sample_grid(rule: Rule, rng: random.Random) -> list[int]:
    """36 codes (0..K-1) in raster order: row 0 uniform over the palette, later rows by the rule (noise aside)."""
    grid = [rng.choice(rule.palette) for _ in range(SIDE)]
    for i in range(SIDE, CELLS):
        grid.append(rng.choice(rule.palette) if rng.random() < NOISE else rule.expected(grid, i))
    return grid


def grid_splits(seed: int) -> dict[str, list[dict]]:
    """Rows {prompt_ids, response_ids, class, codes} of each split; classes cycle so each split is balanced.
    One stream of draws from `seed` makes all three splits (disjoint draws; a repeated grid is possible but
    rare: 6^6 first rows per class)."""
    rng = random.Random(seed)
    splits = {}
    for split, n in GRID_SPLITS.items():
        rows = []
        for i in range(n):
            c = i % CLASSES
            codes = sample_grid(RULES[c], rng)
            rows.append({"prompt_ids": [BOS_ID, CLASS_BASE + c], "response_ids": [CODE_BASE + k for k in codes],
                         "class": c, "codes": codes})
        splits[split] = rows
    return splits


def parse_codes(text: str) -> list[int | None]:
    """Codes of a decoded response ('<code_3> <code_17> ...'); a token that is not a code gives None."""
    out = []
    for name in text.split():
        inner = name[len("<code_"):-1] if name.startswith("<code_") and name.endswith(">") else ""
        out.append(int(inner) if inner.isdigit() and int(inner) < CODES else None)
    return out


def rule_score(codes: list[int | None], c: int) -> float:
    """The share of the 36 cells consistent with class c's rule: a row-0 cell if it is in c's palette, a later
    cell if it equals the rule's code for the cells above it. Missing cells (a short grid) and non-codes count as
    wrong; codes past the 36th are ignored. The training data scores about 1 - NOISE * 5/6 (noise may repeat
    the rule's code)."""
    rule, grid = RULES[c], list(codes[:CELLS]) + [None] * max(0, CELLS - len(codes))
    good = sum(grid[j] in rule.palette for j in range(SIDE))
    for i in range(SIDE, CELLS):
        above = grid[(i // SIDE - 1) * SIDE + (i % SIDE + rule.shift) % SIDE]
        good += grid[i] is not None and above in rule.successor and grid[i] == rule.expected(grid, i)
    return good / CELLS


def score_grids(prediction: str, record: dict) -> float:
    """Rule consistency of a generated grid with its record's class (`rule_score`), in [0, 1]."""
    return rule_score(parse_codes(prediction), int(record["class"]))
