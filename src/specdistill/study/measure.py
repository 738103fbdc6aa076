"""A student's figures in a study: test quality on its world, and its figures as the teacher's draft (greedy and
sampled at T=1), the speedup predicted from the measured acceptance and the pair's forward costs."""

from __future__ import annotations

import functools

import torch

from ..config import DatasetConfig, load_config
from ..data.records import load_records
from ..data.tasks import get_task, style_shares
from ..data.prompt_views import encode_example
from ..engine import Sampling
from ..evaluate.prediction import ForwardCosts, expected_acceptance, prediction_figures
from ..evaluate.quality import evaluate_records, generate_ids
from ..evaluate.speculative import measure_forward_costs, run_speculative
from ..models import load_model, load_tokenizer
from .plan import World

GAMMA = 4
TEACHER_STYLE = "symbols"  # the step style the built-in teacher writes (data/tasks.py: STYLE_WEIGHTS)


@functools.lru_cache(maxsize=None)
def world_records(world: World, n: int | None) -> list:
    """The first n records of the world's test split (None = all), read once per process."""
    return load_records(DatasetConfig(task=world.name, split="test"))[:n]


@functools.lru_cache(maxsize=None)
def world_prompts(world: World, n: int | None, tokenizer: str) -> tuple[list[list[int]], list[list[int]]]:
    """(teacher prompts, student prompts) of the first n test records: the teacher reads its view (facts: with
    the knowledge). Encoded once per process (a worker measures many students of one world); callers only read."""
    tok, views = load_tokenizer(tokenizer), load_config(world.views).data.views
    examples = [encode_example(r, tok, views) for r in world_records(world, n)]
    return [e.teacher_prompt for e in examples], [e.student_prompt for e in examples]


def world_quality(model, tok, world: World, n: int | None, view: str = "student") -> dict:
    """evaluate_records on the world's first n test records, answered greedily from `view`."""
    return evaluate_records(model, tok, world_records(world, n), load_config(world.views).data.views,
                            get_task(world.name).scorer, view, world.max_new_tokens, 64)


def teacher_style_share(texts: list[str]) -> float:
    """The share of step lines written in the teacher's style."""
    return style_shares(texts)[TEACHER_STYLE]


def measure_student(student_path: str, teacher_path: str, world: World, plan: dict, seed: int,
                    costs: ForwardCosts) -> dict:
    """Test quality (student view, plan's `eval_limit` records) and the student as the teacher's draft on the
    plan's `bench_prompts` test prompts, greedy and sampled at T=1."""
    torch.manual_seed(seed)
    tok = load_tokenizer(teacher_path)
    teacher = load_model(teacher_path, tokenizer=tok).eval()
    student = load_model(student_path, tokenizer=tok).eval()
    scored = world_quality(student, tok, world, plan["eval_limit"])
    t_prompts, s_prompts = world_prompts(world, plan["bench_prompts"], teacher_path)
    styles = {"symbols_share": teacher_style_share([s["prediction"] for s in scored["samples"]])} \
        if world.styled else {}
    return {"quality": scored["exact_match"], **styles,
            **draft_figures(teacher, student, t_prompts, s_prompts, tok, world.max_new_tokens, seed, costs)}


def pair_costs(teacher_path: str, student_path: str, prompt: list[int], repeats: int = 20) -> ForwardCosts:
    """The pair's forward costs at batch size 1 and one thread, timed while nothing else runs (`repeats` rounds,
    each call's fastest kept)."""
    torch.set_num_threads(1)
    tok = load_tokenizer(teacher_path)
    teacher, student = (load_model(p, tokenizer=tok).eval() for p in (teacher_path, student_path))
    return measure_forward_costs(teacher, student, prompt, batch_size=1, repeats=repeats)


def draft_figures(teacher, student, t_prompts, s_prompts, tok, max_new: int, seed: int, costs: ForwardCosts,
                  reference: dict | None = None) -> dict:
    """Greedy and T=1 speculative decoding (gamma GAMMA, batch 8): acceptance, mean accepted length, per-position
    acceptance, sum(min(p, q)) over the teacher's own outputs, and the speedup predicted from the measured
    acceptance and `costs` (timed alone, so parallel workers cannot skew it). reference: the teacher's own
    outputs on t_prompts, shared by many drafts ({"greedy": ..., "sampled": {str(seed): ...}}, as
    real_measure.target_reference writes them); None: generated here."""
    out = {}
    for prefix, temperature in (("", 0.0), ("sampled_", 1.0)):
        with torch.no_grad():
            if reference is None:
                own = generate_ids(teacher, tok, t_prompts, max_new, batch_size=8, temperature=temperature, seed=seed)
            else:
                own = reference["greedy"] if temperature == 0 else reference["sampled"][str(seed)]
            spec, stats, _ = run_speculative(teacher, student, t_prompts, tok, gamma=GAMMA, temperature=temperature,
                                             max_new_tokens=max_new, batch_size=8, seed=seed, draft_prompts=s_prompts)
            alpha = expected_acceptance(teacher, student, t_prompts, s_prompts, own, Sampling(temperature),
                                        tok.pad_token_id, len(tok))
        figures = prediction_figures(stats, costs)
        out.update({prefix + "acceptance_rate": stats.acceptance_rate, prefix + "expected_acceptance": alpha,
                    prefix + "mean_accepted_length": stats.mean_accepted_length,
                    prefix + "per_position_acceptance": stats.per_position_acceptance,
                    prefix + "token_acceptance": figures["token_acceptance"],
                    prefix + "predicted_speedup": figures["predicted_speedup"]})
        if temperature == 0:
            out["matches_target_greedy"] = spec == own
    return out
