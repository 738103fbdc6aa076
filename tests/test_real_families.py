"""Real model families end to end (tests/families.py): padded vocabularies of different sizes, end-of-turn ids,
published chat templates, sliding windows, long teacher views, bf16, and the student folder that serves as a
draft. Every command runs in-process through `specdistill.cli.main`."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from conftest import SHARED_DATA, needs_shared
from families import FAMILIES, STUDENT_ROWS, TEACHER_ROWS, TOKENIZER_SIZE, get_family
from specdistill.cli import main
from specdistill.config import DatasetConfig, ViewConfig, load_config
from specdistill.data.records import Record, load_records
from specdistill.data.tasks import load_task
from specdistill.data.templates import end_token_ids, turn_end_id
from specdistill.data.prompt_views import collate, encode_example, fit_view
from specdistill.engine import GREEDY, Sampling, generate, make_policy, sample
from specdistill.evaluate.speculative import hf_generate, run_hf_assisted, run_target_alone
from specdistill.models import load_tokenizer
from specdistill.rollout import RolloutPlan, make_rollout, rollout_tokens

V = TOKENIZER_SIZE
LUPI_KOREAN = SHARED_DATA / "lupi" / "korean_culture_train_200.json"
LUPI_SYSTEM = "당신은 한국 문화 전문가입니다. 주어진 배경 지식을 바탕으로 정확하고 친절하게 답하세요."


# ---------------------------------------------------------------- helpers
def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def arith_file(path, n=6):
    rows = load_task("arith", "train", 0)[:n]
    path.write_text("".join(json.dumps({"id": r["id"], "query": r["query"], "response": r["response"]}) + "\n"
                            for r in rows))
    return path


def distill_config(path, fam, method, data, out, dtype="float32"):
    """A 3-step config of `method` on the family's pair."""
    rollout = {"max_new_tokens": 12, "temperature": 1.0}
    views = {}
    if method in ("skd", "lupi_skd"):
        rollout.update(strategy="skd", policy="top_k", skd_top_k=5, gamma=3)
        if method == "lupi_skd":
            rollout.update(gamma_schedule="lupi", max_gamma=8)
            views = {"system_prompt": LUPI_SYSTEM, "teacher_knowledge": True}
    elif method == "gkd":
        rollout.update(strategy="mixed", lam=0.5)
    else:
        rollout.update(strategy="dataset")
    loss = {"name": "jsd", "beta": 0.5} if method == "gkd" else {"name": "fkl"}
    cfg = {
        "model": {"teacher": str(fam.teacher), "student": str(fam.student), "student_dtype": dtype,
                  "teacher_dtype": dtype},
        "data": {"train": [{"path": str(data), "limit": 8}], "views": views},
        "rollout": rollout, "loss": loss,
        "train": {"output_dir": str(out), "max_steps": 3, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1,
                  "progress": False},
    }
    import yaml

    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def boosted_end_id(fam, tok) -> int:
    """An end id that is not the tokenizer's EOS where the family has one (Llama-3's <|eot_id|>, Gemma's
    <end_of_turn>, Qwen's <|endoftext|>), so that stopping on it is not stopping on EOS."""
    others = [i for i in fam.end_ids if i != tok.eos_token_id]
    return others[0] if others else fam.end_ids[0]


def add_to_logits(model, columns, amount: float):
    """A forward hook on the output head that adds `amount` to the logits of `columns` (an index or a slice)."""

    def hook(module, inputs, output):
        output = output.clone()
        output[..., columns] += amount
        return output

    return model.get_output_embeddings().register_forward_hook(hook)


def eager_to_end(fam, tmp_path, tok):
    """A copy of the family's teacher whose greedy answer ends early with `boosted_end_id`: that id's output
    row becomes (1.05x) the row of the token the teacher writes 4th, so its logit wins there or earlier."""
    model = AutoModelForCausalLM.from_pretrained(fam.teacher)
    ids = prompt_ids(tok, "What is 23+2*7?")
    first = hf_generate(model, torch.tensor([ids]), do_sample=False, max_new_tokens=6, eos_token_id=None,
                        suppress_tokens=list(range(V, TEACHER_ROWS)), pad_token_id=tok.pad_token_id)[0, len(ids):]
    end = boosted_end_id(fam, tok)
    if model.get_output_embeddings().weight is model.get_input_embeddings().weight:  # Gemma ties them: untie,
        model.config.tie_word_embeddings = False  # so that the end id's input embedding (in the prompt) stays
        model.get_output_embeddings().weight = torch.nn.Parameter(model.get_input_embeddings().weight.clone())
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[end] = 1.05 * head[int(first[3])]
    folder = tmp_path / "eager-teacher"
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                 "generation_config.json"):
        if (fam.teacher / name).exists():
            shutil.copy(fam.teacher / name, folder / name)
    return folder, end


def prompt_ids(tok, text: str) -> list[int]:
    rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return tok(rendered, add_special_tokens=False).input_ids


def hf_greedy(model_path, tok, ids, max_new_tokens, ends, assistant=None) -> list[int]:
    """transformers' greedy generate (assisted with `assistant`), none of the checkpoint's generation settings
    applied (hf_generate)."""
    model = AutoModelForCausalLM.from_pretrained(model_path)
    out = hf_generate(model, torch.tensor([ids]), assistant, do_sample=False, max_new_tokens=max_new_tokens,
                      eos_token_id=ends, pad_token_id=tok.pad_token_id, suppress_tokens=list(range(V, TEACHER_ROWS)))
    return cut(out[0, len(ids):].tolist(), ends)


def cut(new: list[int], ends) -> list[int]:
    """A response up to and including its first end id (transformers pads a finished row after it)."""
    at = next((j for j, i in enumerate(new) if i in ends), None)
    return new if at is None else new[: at + 1]


# ---------------------------------------------------------------- distill: four methods per family
@pytest.mark.parametrize("method", ["skd", "lupi_skd", "gkd", "supervised_kd"])
@pytest.mark.parametrize("family", FAMILIES)
def test_distill_runs_three_steps_and_saves_a_draft_folder(family, method, tmp_path, capsys):
    if method == "lupi_skd" and not LUPI_KOREAN.exists():
        pytest.skip(f"the Korean LUPI set {LUPI_KOREAN} is absent (../shared is not beside this checkout)")
    fam = get_family(family)
    data = LUPI_KOREAN if method == "lupi_skd" else arith_file(tmp_path / "arith.jsonl")
    out = tmp_path / "run"
    code, stdout, err = run_cli(["distill", distill_config(tmp_path / "c.yaml", fam, method, data, out)], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["train/loss"]) for r in rows)
    if method in ("skd", "lupi_skd"):
        assert all(0 <= r["rollout/acceptance_rate"] <= 1 for r in rows)
    final = out / "final"
    saved = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    # The folder serves as the teacher's draft: the teacher's row count, all end ids, the template.
    assert saved.get_input_embeddings().weight.shape[0] == TEACHER_ROWS == saved.config.vocab_size
    assert torch.count_nonzero(saved.get_output_embeddings().weight[STUDENT_ROWS:]) == 0
    ends = saved.generation_config.eos_token_id
    assert set(fam.end_ids) <= set(ends if isinstance(ends, list) else [ends])
    assert tok.chat_template == load_tokenizer(str(fam.teacher)).chat_template
    assert len(tok) == V


@pytest.mark.parametrize("family", FAMILIES)
def test_the_saved_student_works_unchanged_as_assistant_model(family, tmp_path, capsys):
    """The final folder of a distill run, passed as transformers' assistant_model=, gives the teacher's own
    greedy output (transformers refuses a draft whose vocab_size differs unless given both tokenizers)."""
    fam = get_family(family)
    out = tmp_path / "run"
    cfg = distill_config(tmp_path / "c.yaml", fam, "supervised_kd", arith_file(tmp_path / "a.jsonl"), out)
    assert run_cli(["distill", cfg], capsys)[0] == 0
    tok = load_tokenizer(str(fam.teacher))
    ids = prompt_ids(tok, "What is 5+3*2?")
    draft = AutoModelForCausalLM.from_pretrained(out / "final")
    expected = hf_greedy(fam.teacher, tok, ids, 16, fam.end_ids)
    assert hf_greedy(fam.teacher, tok, ids, 16, fam.end_ids, assistant=draft) == expected


# ---------------------------------------------------------------- generate, bench, eval
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_with_a_draft_equals_the_teachers_own_greedy_generate(family, tmp_path, capsys):
    fam = get_family(family)
    tok = load_tokenizer(str(fam.teacher))
    teacher, end = eager_to_end(fam, tmp_path, tok)
    question = "What is 23+2*7?"
    code, _, err = run_cli(["generate", "--model", teacher, "--draft", fam.student, "--prompt", question,
                            "--max-new-tokens", 24, "--gamma", 3, "--json", tmp_path / "g.json"], capsys)
    assert code == 0, err
    ours = json.loads((tmp_path / "g.json").read_text())["outputs"][0]["token_ids"]
    expected = hf_greedy(teacher, tok, prompt_ids(tok, question), 24, fam.end_ids)
    assert ours == expected
    assert ours[-1] == end and len(ours) < 24  # the row ended at the family's own end-of-turn id


@pytest.mark.parametrize("family", FAMILIES)
def test_sampled_generate_with_a_draft_at_temperature_one(family, tmp_path, capsys):
    fam = get_family(family)
    prompts = tmp_path / "p.txt"
    prompts.write_text("What is 4+4*4?\n한국의 전통 음식은 무엇인가요?\n")
    code, _, err = run_cli(["generate", "--model", fam.teacher, "--draft", fam.student, "--prompts", prompts,
                            "--temperature", 1.0, "--max-new-tokens", 20, "--json", tmp_path / "g.json"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "g.json").read_text())
    assert len(result["outputs"]) == 2
    assert all(0 <= i < V for o in result["outputs"] for i in o["token_ids"])
    assert result["stats"]["tokens/drafted"] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_bench_with_compare_hf(family, tmp_path, capsys):
    fam = get_family(family)
    prompts = tmp_path / "p.txt"
    prompts.write_text("What is 4+4*4?\nWhat is 7+1*3?\n")
    code, _, err = run_cli(["bench", "--target", fam.teacher, "--draft", fam.student, "--prompts", prompts,
                            "--gamma", 2, "--max-new-tokens", 10, "--compare-hf", "--repeats", 1,
                            "--json", tmp_path / "b.json"], capsys)
    assert code == 0, err
    [r] = json.loads((tmp_path / "b.json").read_text())["results"]
    assert r["matches_target_greedy"] is True and r["matches_hf_assisted"] is True
    assert 0 <= r["acceptance_rate"] <= 1 and r["speedup_vs_hf_assisted"] > 0


@pytest.mark.parametrize("family", ["qwen2.5", "gemma3"])  # families whose greedy output the settings change
def test_compare_hf_ignores_the_checkpoints_own_generation_settings(family, tmp_path, capsys):
    """Both checkpoints' generation_config.json with repetition_penalty 1.3 (Qwen2.5-Instruct ships 1.05 and 1.1),
    no_repeat_ngram_size and min_new_tokens: `bench --compare-hf` still matches (transformers' baseline decodes as
    the engine does, in its universal mode: the two differ in padding), and its outputs are the engine's greedy
    ones, while transformers with those settings writes something else."""
    fam = get_family(family)
    folders = {}
    for role in ("teacher", "student"):
        folders[role] = shutil.copytree(getattr(fam, role), tmp_path / role)
        gen = GenerationConfig.from_pretrained(folders[role])
        gen.update(repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=6)
        gen.save_pretrained(folders[role])
    questions = ["What is 4+4*4?", "What is 7+1*3?"]
    (tmp_path / "p.txt").write_text("\n".join(questions) + "\n")
    code, _, err = run_cli(["bench", "--target", folders["teacher"], "--draft", folders["student"], "--prompts",
                            tmp_path / "p.txt", "--gamma", 2, "--max-new-tokens", 12, "--compare-hf", "--repeats", 1,
                            "--json", tmp_path / "b.json"], capsys)
    assert code == 0, err
    [r] = json.loads((tmp_path / "b.json").read_text())["results"]
    assert r["matches_hf_assisted"] is True and r["hf_assisted_mode"] == "universal"
    tok = load_tokenizer(str(folders["teacher"]))
    teacher, student = (AutoModelForCausalLM.from_pretrained(folders[role]).eval() for role in ("teacher", "student"))
    prompts = [prompt_ids(tok, q) for q in questions]
    engine = run_target_alone(teacher, prompts, tok, max_new_tokens=12)[0]
    hf = [cut(o, fam.end_ids) for o in run_hf_assisted(teacher, student, prompts, tok, gamma=2, max_new_tokens=12)[0]]
    assert hf == engine
    own = [cut(teacher.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                do_sample=False, max_new_tokens=12, eos_token_id=fam.end_ids,
                                pad_token_id=tok.pad_token_id, suppress_tokens=list(range(V, TEACHER_ROWS)))
               [0, len(p):].tolist(), fam.end_ids) for p in prompts]
    assert own != engine


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_with_a_teacher_reports_top1_agreement_equal_to_a_brute_force_count(family, tmp_path, capsys):
    fam = get_family(family)
    data = arith_file(tmp_path / "a.jsonl", n=3)
    code, stdout, err = run_cli(["eval", "--model", fam.student, "--teacher", fam.teacher, "--data", data,
                                 "--metrics", "exact_match,perplexity", "--max-new-tokens", 8], capsys)
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["n"] == 3 and math.isfinite(summary["perplexity"])
    # Brute force: one row at a time, no padding, the full forward, argmax over the tokenizer's ids.
    tok = load_tokenizer(str(fam.teacher))
    student, teacher = (AutoModelForCausalLM.from_pretrained(p) for p in (fam.student, fam.teacher))
    agree = total = 0
    for row in load_task("arith", "train", 0)[:3]:
        response = tok(row["response"], add_special_tokens=False).input_ids + [turn_end_id(tok)]
        picks = []
        for model, knowledge in ((student, None), (teacher, None)):
            ids = prompt_ids(tok, row["query"]) + response
            logits = model(torch.tensor([ids])).logits[0, -len(response) - 1 : -1, :V]
            picks.append(logits.argmax(-1))
        agree += int((picks[0] == picks[1]).sum())
        total += len(response)
    assert summary["top1_agreement"] == pytest.approx(agree / total)


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("command", ["distill", "generate", "bench", "eval"])
def test_a_pair_with_different_tokenizers_is_refused_before_any_work(command, tmp_path, capsys):
    fam = get_family("llama3")
    i, ours, theirs = fam.differing_token
    other = fam.other_student
    if command == "distill":
        cfg = distill_config(tmp_path / "c.yaml", fam, "skd", arith_file(tmp_path / "a.jsonl"), tmp_path / "run")
        argv = ["distill", cfg, "--set", f"model.student={other}"]
    elif command == "generate":
        argv = ["generate", "--model", fam.teacher, "--draft", other, "--prompt", "hi"]
    elif command == "bench":
        argv = ["bench", "--target", fam.teacher, "--draft", other, "--task", "arith", "--limit", 1]
    else:
        argv = ["eval", "--model", other, "--teacher", fam.teacher, "--task", "arith", "--limit", 1]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert str(fam.teacher) in line and str(other) in line
    assert f"id {i}" in line and repr(ours) in line and repr(theirs) in line
    assert not (tmp_path / "run").exists()  # nothing was written


# ---------------------------------------------------------------- the tokenizer's range
def _all_paths_emit(student, teacher, tok, ids, mask):
    """Token ids of every engine path: plain greedy / sampled, speculative greedy / sampled, SKD top-K."""
    ends, n = end_token_ids(tok, teacher), {"max_new_tokens": 12, "pad_token_id": tok.pad_token_id}
    outs = []
    for sampling in (GREEDY, Sampling(1.0)):
        outs.append(sample(student, ids, mask, sampling=sampling, eos_token_id=ends, vocab_size=V, **n).tokens)
        policy = make_policy("greedy") if sampling.greedy else make_policy("speculative", target=sampling)
        outs.append(generate(student, ids, mask, teacher, ids, mask, policy=policy, draft_sampling=sampling,
                             eos_token_id=ends, vocab_size=V, **n).tokens)
    skd = make_policy("top_k", k=5, target=Sampling(1.0))
    outs.append(generate(student, ids, mask, teacher, ids, mask, policy=skd, draft_sampling=Sampling(1.0),
                         eos_token_id=ends, vocab_size=V, **n).tokens)
    return outs


@pytest.mark.parametrize("family", ["qwen2.5", "gemma3"])
def test_padding_rows_with_the_largest_logits_are_never_emitted_or_trained_on(family, tmp_path):
    fam = get_family(family)
    tok = load_tokenizer(str(fam.teacher))
    student, teacher = (AutoModelForCausalLM.from_pretrained(p).eval() for p in (fam.student, fam.teacher))
    for model in (student, teacher):
        add_to_logits(model, slice(V, None), 1000.0)  # every padded row beats every real token
    ids, mask = (t for t in _left_padded(tok, ["What is 2+2*2?", "Hello there, who are you?"]))
    with torch.no_grad():
        assert int(student(ids).logits[0, -1].argmax()) >= V  # what a plain argmax would write
    for tokens in _all_paths_emit(student, teacher, tok, ids, mask):
        assert int(tokens.max()) < V
    # Training: rollouts of every strategy hold only real ids, and the loss sees only the first V logits.
    cfg = load_config(None, ["rollout.max_new_tokens=10", "rollout.strategy=skd"]).rollout
    examples = [encode_example(Record(id=str(i), query=q, response="4"), tok, ViewConfig())
                for i, q in enumerate(["What is 2+2?", "Why?"])]
    for strategy in ("student", "teacher", "skd"):
        cfg.strategy = strategy
        batch = make_rollout(RolloutPlan(cfg, rollout_tokens(tok, student, teacher)),
                             collate(examples, tok.pad_token_id), student, teacher, [1, 2])
        assert int(batch.response[batch.response_mask].max()) < V


def _left_padded(tok, texts):
    seqs = [prompt_ids(tok, t) for t in texts]
    width = max(map(len, seqs))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], dtype=torch.bool)
    return ids, mask


# ---------------------------------------------------------------- end of turn
@pytest.mark.parametrize("family", FAMILIES)
def test_a_rollout_ends_at_the_first_end_of_turn_token_and_trains_on_it(family):
    fam = get_family(family)
    tok = load_tokenizer(str(fam.teacher))
    student, teacher = (AutoModelForCausalLM.from_pretrained(p).eval() for p in (fam.student, fam.teacher))
    end = boosted_end_id(fam, tok)
    for model in (student, teacher):
        add_to_logits(model, end, 7.0)  # about half of the sampled tokens end the turn
    records = [Record(id=str(i), query=f"What is {i}+{i}*2?") for i in range(8)]
    cfg = load_config(None, ["rollout.strategy=skd", "rollout.max_new_tokens=24", "rollout.skd_top_k=5"]).rollout
    batch = make_rollout(RolloutPlan(cfg, rollout_tokens(tok, student, teacher)),
                         collate([encode_example(r, tok, ViewConfig()) for r in records], tok.pad_token_id),
                         student, teacher, list(range(8)))
    ended = 0
    for response, keep in zip(batch.response, batch.response_mask):
        n = int(keep.sum())
        assert keep[:n].all() and not keep[n:].any()  # the mask covers a prefix
        hits = [j for j, t in enumerate(response[:n].tolist()) if t in fam.end_ids]
        if hits:
            ended += 1
            assert hits == [n - 1]  # the first end id is the last trained token
    assert ended >= 6
    # The reference response of a record ends with the template's own end-of-turn token.
    ex = encode_example(Record(id="r", query="q", response="4"), tok, ViewConfig())
    assert tok.convert_ids_to_tokens(ex.response[-1]) == fam.turn_end


# ---------------------------------------------------------------- templates and long views
@needs_shared
@pytest.mark.parametrize("family", FAMILIES)
def test_the_korean_lupi_set_renders_in_every_family_template(family):
    fam = get_family(family)
    tok = load_tokenizer(str(fam.teacher))
    records = json.loads(LUPI_KOREAN.read_text())[:20]
    views = ViewConfig(system_prompt=LUPI_SYSTEM)
    for r in records:
        rec = Record(id=r["id"], query=r["query"], knowledge=r["knowledge"])
        ex = encode_example(rec, tok, views)
        text = tok.decode(ex.teacher_prompt)
        assert r["knowledge"] in text and r["query"] in text and LUPI_SYSTEM in text
        assert r["knowledge"] not in tok.decode(ex.student_prompt)
        assert tok.unk_token_id is None or tok.unk_token_id not in ex.teacher_prompt


def test_a_template_without_a_system_role_gets_it_folded_into_the_first_user_turn():
    tok = load_tokenizer(str(get_family("gemma2").teacher))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    with pytest.raises(Exception, match="System role not supported"):
        tok.apply_chat_template(messages, tokenize=False)
    ex = encode_example(Record(id="1", query="Hi?", knowledge="K."), tok, ViewConfig(system_prompt="Be brief."))
    assert tok.decode(ex.teacher_prompt) == (
        "<bos><start_of_turn>user\nBe brief.\n\n[Background Knowledge]\nK.\n\nHi?<end_of_turn>\n<start_of_turn>model\n")


def test_template_options_reach_the_template():
    tok = load_tokenizer(str(get_family("qwen3").teacher))
    rec = Record(id="1", query="Hi?")
    plain = tok.decode(encode_example(rec, tok, ViewConfig()).student_prompt)
    off = tok.decode(encode_example(rec, tok, ViewConfig(template_options={"enable_thinking": False})).student_prompt)
    assert off == plain + "<think>\n\n</think>\n\n"


def _lupi_style_views(tok, target_tokens: int) -> tuple[Record, ViewConfig]:
    """A LUPI-SKD-like teacher view: persona, three few-shot examples with knowledge, knowledge, query."""
    sentence = "The hanok keeps warm in winter through the ondol floor heated from below. "
    shot = {"query": "[Background Knowledge]\n" + sentence * 20 + "\n\nHow is a hanok heated?",
            "response": "Through the ondol floor. " * 10}
    views = ViewConfig(system_prompt="You are an expert on Korean culture. " * 5, few_shot=[shot] * 3)
    rec = Record(id="seed", query="What heats a hanok?", knowledge=sentence * 30)
    while len(fit_view(rec, tok, ViewConfig(**{**views.__dict__, "max_teacher_prompt_tokens": 10**6}), True)) < target_tokens:
        rec.knowledge += sentence
    return rec, views


def test_the_default_teacher_limit_holds_the_lupi_seeds_2460_token_view():
    tok = load_tokenizer(str(get_family("qwen3").teacher))
    rec, views = _lupi_style_views(tok, 2460)
    full = fit_view(rec, tok, views, True)  # default limits
    assert len(full) >= 2460 and tok.decode(full).count("How is a hanok heated?") == 3


def test_a_long_teacher_view_is_cut_by_the_stated_rule_never_through_its_markup():
    tok = load_tokenizer(str(get_family("llama3").teacher))
    rec, views = _lupi_style_views(tok, 2460)
    n_full = len(fit_view(rec, tok, views, True))
    start = tok.decode(fit_view(rec, tok, views, True)[:6])
    # 1) a limit that three few-shot examples break: the last ones go first.
    limit = n_full - 10
    with pytest.warns(UserWarning, match="few-shot"):
        cut = fit_view(rec, tok, ViewConfig(**{**views.__dict__, "max_teacher_prompt_tokens": limit}), True)
    text = tok.decode(cut)
    assert len(cut) <= limit and text.count("How is a hanok heated?") == 2 and rec.knowledge in text
    # 2) a limit below the view without any few-shot example: the knowledge keeps its start.
    with pytest.warns(UserWarning, match="knowledge is cut"):
        cut = fit_view(rec, tok, ViewConfig(**{**views.__dict__, "max_teacher_prompt_tokens": 300}), True)
    text = tok.decode(cut)
    assert len(cut) <= 300 and "How is a hanok heated?" not in text
    assert text.startswith(start) and text.endswith("What heats a hanok?<|eot_id|><|start_header_id|>assistant"
                                                    "<|end_header_id|>\n\n")
    assert rec.knowledge[:200] in text and rec.knowledge not in text
    # 3) a limit the query alone breaks: refused, naming the record and the field.
    from specdistill.data.records import DataError

    with pytest.raises(DataError, match=r"record seed: the teacher view .* data.views.max_teacher_prompt_tokens=40"):
        fit_view(rec, tok, ViewConfig(**{**views.__dict__, "max_teacher_prompt_tokens": 40}), True)


# ---------------------------------------------------------------- devices and dtypes
def test_the_engine_calls_each_model_with_inputs_on_that_models_device():
    fam = get_family("gemma3")
    tok = load_tokenizer(str(fam.teacher))
    student, teacher = (AutoModelForCausalLM.from_pretrained(p).eval() for p in (fam.student, fam.teacher))
    seen = {"student": set(), "teacher": set()}

    def recorder(name):
        def hook(module, args, kwargs):
            for key, value in kwargs.items():
                if isinstance(value, torch.Tensor):
                    seen[name].add((key, value.device))
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            for layer in getattr(cache, "layers", []):
                if getattr(layer, "keys", None) is not None and layer.keys.numel():
                    seen[name].add(("cache", layer.keys.device))
        return hook

    student.register_forward_pre_hook(recorder("student"), with_kwargs=True)
    teacher.register_forward_pre_hook(recorder("teacher"), with_kwargs=True)
    ids, mask = _left_padded(tok, ["What is 2+2*2?", "Hello?"])
    generate(student, ids, mask, teacher, ids, mask, policy=make_policy("top_k", k=3), draft_sampling=Sampling(1.0),
             max_new_tokens=24, vocab_size=V, eos_token_id=end_token_ids(tok, teacher))
    for name, model in (("student", student), ("teacher", teacher)):
        device = next(model.parameters()).device
        keys = {k for k, _ in seen[name]}
        assert {"input_ids", "attention_mask", "position_ids", "cache"} <= keys
        assert {d for _, d in seen[name]} == {device}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the teacher on cuda, the student on cpu")
def test_teacher_on_cuda_and_student_on_cpu_give_the_one_device_tokens():
    fam = get_family("qwen3")
    tok = load_tokenizer(str(fam.teacher))
    student, teacher = (AutoModelForCausalLM.from_pretrained(p).eval() for p in (fam.student, fam.teacher))
    ids, mask = _left_padded(tok, ["What is 2+2*2?", "Hello?"])
    kw = dict(policy=make_policy("top_k", k=3), draft_sampling=Sampling(1.0), max_new_tokens=16, vocab_size=V)
    one = generate(student, ids, mask, teacher, ids, mask, **kw).rows()
    two = generate(student, ids, mask, teacher.cuda(), ids.cuda(), mask.cuda(), **kw).rows()
    assert one == two


def test_bf16_weights_distill_and_generate(tmp_path, capsys):
    fam = get_family("qwen2.5")
    out = tmp_path / "run"
    cfg = distill_config(tmp_path / "c.yaml", fam, "skd", arith_file(tmp_path / "a.jsonl"), out, dtype="bfloat16")
    code, _, err = run_cli(["distill", cfg], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["train/loss"]) for r in rows)
    assert AutoModelForCausalLM.from_pretrained(out / "final").dtype == torch.bfloat16
    code, _, err = run_cli(["generate", "--model", fam.teacher, "--draft", out / "final", "--prompt", "What is 1+1?",
                            "--dtype", "bfloat16", "--max-new-tokens", 12, "--json", tmp_path / "g.json"], capsys)
    assert code == 0, err
    tokens = json.loads((tmp_path / "g.json").read_text())["outputs"][0]["token_ids"]
    assert tokens and all(0 <= t < V for t in tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_speculative_greedy_equals_each_row_decoded_alone(family):
    """The engine's batch contract on real families, rows accepting different numbers of drafts (holes in the
    caches) and, for Gemma, prompt plus response outgrowing the sliding window."""
    fam = get_family(family)
    tok = load_tokenizer(str(fam.teacher))
    student, teacher = (AutoModelForCausalLM.from_pretrained(p).eval() for p in (fam.student, fam.teacher))
    questions = ["What is 23+2*7?", "Name three colours of the sea.", "한국의 전통 음식은 무엇인가요?", "Hi"]
    ids, mask = _left_padded(tok, questions)
    kw = dict(max_new_tokens=40, eos_token_id=end_token_ids(tok, teacher), vocab_size=V, pad_token_id=tok.pad_token_id)
    batched = generate(student, ids, mask, teacher, ids, mask, policy=make_policy("greedy"), gamma=3, **kw)
    for b, question in enumerate(questions):
        one_ids, one_mask = _left_padded(tok, [question])
        alone = sample(teacher, one_ids, one_mask, chunk=1, **kw).rows()[0]
        assert batched.rows()[b] == alone, f"row {b}"


# ---------------------------------------------------------------- pre-tokenized records on a real family's format
@pytest.mark.parametrize("family", FAMILIES)
def test_pre_tokenized_records_on_a_family_end_at_its_turn_end_and_distill(family, tmp_path, capsys):
    """Id records in a family's ids: the response ends with the template's end of turn (as a text response does),
    one already ending with an end id keeps it alone, an id past the tokenizer (inside the padded embedding rows)
    is refused in one line, and a distill run on the ids trains and saves."""
    fam = get_family(family)
    tok = load_tokenizer(str(fam.teacher))
    turn_end = tok.convert_tokens_to_ids(fam.turn_end)
    answer = tok("#### 11", add_special_tokens=False).input_ids
    rows = [{"id": f"r{i}", "prompt_ids": prompt_ids(tok, f"What is {i}+5*2?"), "response_ids": answer + end}
            for i, end in enumerate([[], [tok.eos_token_id], [], []])]
    data = tmp_path / "ids.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = [encode_example(r, tok, ViewConfig()) for r in load_records(DatasetConfig(path=str(data)))]
    assert examples[0].response == answer + [turn_end]
    assert examples[1].response == answer + [tok.eos_token_id]  # Llama-3's <|end_of_text|>: no <|eot_id|> after it
    out = tmp_path / "run"
    code, _, err = run_cli(["distill", distill_config(tmp_path / "c.yaml", fam, "supervised_kd", data, out)], capsys)
    assert code == 0, err
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt_ids": rows[0]["prompt_ids"], "response_ids": [V]}) + "\n")
    code, _, err = run_cli(["distill", distill_config(tmp_path / "b.yaml", fam, "supervised_kd", bad,
                                                      tmp_path / "bad-run")], capsys)
    line = err.strip().splitlines()[-1]  # after the loading bars: the one error line, no traceback
    assert code == 2 and "Traceback" not in err and line.startswith("specdistill distill: error: ")
    assert "bad.jsonl:1" in line and "'response_ids'[0] is 2000" in line and f"id < {V}" in line
