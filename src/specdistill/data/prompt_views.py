"""Prompt views and collation.

Each record has two prompt views:
- the student view: the student system prompt (if any) and the query;
- the teacher view: the system prompt, few-shot examples, and the knowledge block
  (`[Background Knowledge]\\n{knowledge}\\n\\n{query}` by default).
Both are rendered through the tokenizer's chat template when it has one, else through a plain template.
Prompts are left-padded, so every row's response starts at the same column.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..config import ViewConfig
from .records import DataError, Record
from .templates import (  # noqa: F401 - render_* and encode_prompt are this module's API too
    encode_prompt,
    end_token_ids,
    render_plain,
    render_prompt,
    response_text_ids,
    turn_end_id,
)


def _user_text(record: Record, views: ViewConfig, teacher: bool, knowledge: str | None) -> str:
    if teacher and views.teacher_knowledge and knowledge:
        return views.knowledge_template.format(knowledge=knowledge, query=record.query)
    return record.query


def view_messages(record: Record, views: ViewConfig, teacher: bool, shots: list[dict] | None = None,
                  knowledge: str | None = None) -> list[dict]:
    """Chat messages of one view: [system], few-shot user/assistant pairs (teacher only), the user turn.
    shots and knowledge replace views.few_shot and record.knowledge (a view cut to fit its limit)."""
    system = views.system_prompt if teacher else views.student_system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    for shot in (views.few_shot if shots is None else shots) if teacher else []:
        messages += [{"role": "user", "content": shot["query"]}, {"role": "assistant", "content": shot["response"]}]
    text = _user_text(record, views, teacher, record.knowledge if knowledge is None else knowledge)
    return messages + [{"role": "user", "content": text}]


@dataclass
class Example:
    """One record, encoded: each model's prompt ids and the reference response ids (`encode_response`: ending
    with the end of turn, as the model would write it, unless cut to data.views.max_response_tokens)."""

    student_prompt: list[int]
    teacher_prompt: list[int]
    response: list[int] | None
    record: Record


def encode_example(record: Record, tokenizer, views: ViewConfig) -> Example:
    """Encode both views (each within its own limit, see `fit_view`) and the reference response
    (`encode_response`). A pre-tokenized record is used as it is (`encode_token_example`)."""
    if record.prompt_ids is not None:
        return encode_token_example(record, tokenizer, views)
    return Example(fit_view(record, tokenizer, views, False), fit_view(record, tokenizer, views, True),
                   encode_response(record, tokenizer, views), record)


def encode_token_example(record: Record, tokenizer, views: ViewConfig) -> Example:
    """A pre-tokenized record: both views are its prompt ids (no template, no knowledge); the response as
    `encode_response` gives it. An id outside [0, len(tokenizer)), or a prompt over max_prompt_tokens, is a
    DataError naming the record's file and line."""
    for key in ("prompt_ids", "response_ids"):
        check_id_range(record, key, len(tokenizer))
    prompt = list(record.prompt_ids)
    if len(prompt) > views.max_prompt_tokens:
        raise DataError(f"{record.where or record.label()}: field 'prompt_ids' holds {len(prompt)} ids, over "
                        f"data.views.max_prompt_tokens={views.max_prompt_tokens}; token prompts are never cut: "
                        f"raise the limit or shorten the record")
    return Example(prompt, list(prompt), encode_response(record, tokenizer, views), record)


def encode_response(record: Record, tokenizer, views: ViewConfig, cut: bool = True) -> list[int] | None:
    """A record's reference response as the model should write it, for training and evaluation alike (None
    without one): its ids (a text response as it follows the prompt: `response_text_ids`), then one end id: the
    end of turn of the template in use (`turn_end_id`: the EOS with the plain template), or, for pre-tokenized
    ids that already end with one of the tokenizer's end ids (Llama-3's <|eot_id|> or <|end_of_text|>, say),
    that id.

    cut: a response whose ids and end id are over data.views.max_response_tokens keeps its first
    max_response_tokens ids and no end id, so that the model is not taught to stop mid-answer (one warning per
    process). cut=False: whole (perplexity scores the whole reference)."""
    if record.response_ids is not None:
        ids = list(record.response_ids)
        end = ids.pop() if ids[-1] in end_token_ids(tokenizer) else turn_end_id(tokenizer, views.use_chat_template)
    elif record.response is not None:
        ids = response_text_ids(tokenizer, record.response, views.use_chat_template)
        end = turn_end_id(tokenizer, views.use_chat_template)
    else:
        return None
    limit = views.max_response_tokens
    if cut and len(ids) + 1 > limit:
        _warn_once("response", f"{record.label()}: its reference response is {len(ids) + 1} tokens with its end of "
                   f"turn, over data.views.max_response_tokens={limit}; it is cut to its first {limit} tokens, "
                   f"without the end of turn, so that the model does not learn to stop mid-answer (so for every "
                   f"such record); raise data.views.max_response_tokens to train on whole responses")
        return ids[:limit]
    return ids + [end]


def check_id_range(record: Record, key: str, size: int) -> None:
    """Refuse a token id at or beyond the tokenizer's size: it has no embedding row that means anything."""
    for i, v in enumerate(getattr(record, key) or []):
        if not 0 <= v < size:
            raise DataError(f"{record.where or record.label()}: field {key!r}[{i}] is {v}, outside the tokenizer's "
                            f"ids; allowed: 0 <= id < {size} (len(tokenizer))")


_WARNED: set[str] = set()  # rules already announced in this process


def fit_view(record: Record, tokenizer, views: ViewConfig, teacher: bool) -> list[int]:
    """A view's prompt ids within its limit (max_prompt_tokens for the student, max_teacher_prompt_tokens for
    the teacher), never cut through its chat markup: the messages are shortened and rendered again.

    Rule for the teacher's view: drop few-shot examples, last first (the rows of a batch then still share the
    system prompt and the first examples, the prefix that is encoded once); then keep the longest start of the
    knowledge that fits. Each rule warns once per process. A view that cannot fit (the system prompt and the
    query alone are too long, or any too-long student view) is a DataError naming the record and the field."""
    limit = views.max_teacher_prompt_tokens if teacher else views.max_prompt_tokens

    def encode(shots=None, knowledge=None) -> list[int]:
        messages = view_messages(record, views, teacher, shots, knowledge)
        return encode_prompt(tokenizer, messages, views.use_chat_template, views.template_options)

    ids = encode()
    if len(ids) <= limit:
        return ids
    shots = list(views.few_shot) if teacher else []
    while shots and len(ids) > limit:
        shots = shots[:-1]
        ids = encode(shots)
    if len(ids) <= limit:
        _warn_once("few_shot", f"record {record.id}: the teacher view is over data.views.max_teacher_prompt_tokens="
                   f"{limit}; its last few-shot examples are left out (so for every such record)")
        return ids
    if teacher and views.teacher_knowledge and record.knowledge:
        keep = _longest_fitting_prefix(record.knowledge, lambda k: len(encode(shots, k)) <= limit)
        if keep:
            _warn_once("knowledge", f"record {record.id}: the teacher view is over data.views.max_teacher_prompt_"
                       f"tokens={limit} without few-shot examples; its knowledge is cut to its first {len(keep)} of "
                       f"{len(record.knowledge)} characters (so for every such record)")
            return encode(shots, keep)
    field = "max_teacher_prompt_tokens" if teacher else "max_prompt_tokens"
    raise DataError(f"record {record.id}: the {'teacher' if teacher else 'student'} view is {len(ids)} tokens, over "
                    f"data.views.{field}={limit}, and cannot be cut without cutting the query or the chat markup; "
                    f"raise data.views.{field} or shorten the record")


def check_positions(examples: list[Example], budget: int, student_positions: int | None,
                    teacher_positions: int | None = None, budget_name: str = "new tokens") -> None:
    """Refuse a prompt that leaves too few of its model's positions for `budget` new tokens (the response or
    the generated answer): past max_position_embeddings a model decodes garbage. A DataError names the first
    such record and what to change. positions None: no limit known (the check is skipped for that view).
    budget_name: what sets the budget, for the message (e.g. "--max-new-tokens")."""
    for e in examples:
        for view, ids, positions in (("student", e.student_prompt, student_positions),
                                     ("teacher", e.teacher_prompt, teacher_positions)):
            if positions is not None and len(ids) + budget > positions:
                field = "max_teacher_prompt_tokens" if view == "teacher" else "max_prompt_tokens"
                raise DataError(
                    f"{e.record.label()}: the {view} view is {len(ids)} tokens, and with {budget} new tokens "
                    f"({budget_name}) it needs {len(ids) + budget} positions, but the {view} model has {positions} "
                    f"(max_position_embeddings); the prompt is refused, not cut: lower data.views.{field} to at "
                    f"most {positions - budget} (views are cut by their stated rule), shorten the record, or lower "
                    f"{budget_name}")


UNKNOWN_SHARE = 0.25  # a text with more unknown tokens than this share cannot be trained or scored meaningfully
ASCII_CHECKED = 256  # plain-ASCII texts checked (the first ones): any tokenizer that encodes some encodes all


def check_encodable(texts, tokenizer, name: str = "the tokenizer") -> None:
    """Refuse text that the tokenizer mostly cannot encode (Korean through the built-in character tokenizer:
    every character becomes <unk>). texts: (label, text) pairs, such as ("--prompt", "..."), or from
    `record_texts`; a DataError names the first text whose tokens are more than UNKNOWN_SHARE unknown, and its
    first unknown character. A tokenizer without an unknown token (byte-level BPE) encodes everything: nothing is
    checked. Every text with a character outside ASCII is checked, and the first ASCII_CHECKED plain-ASCII texts
    (a tokenizer that encodes those encodes the rest: checking all of the built-in tasks' texts would add a
    second to each run)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return
    kept, ascii_seen = [], 0
    for label, text in texts:
        if text.isascii():
            ascii_seen += 1
            if ascii_seen > ASCII_CHECKED:
                continue
        kept.append((label, text))
    encoded = tokenizer([t for _, t in kept], add_special_tokens=False).input_ids if kept else []
    for (label, text), ids in zip(kept, encoded):
        n = ids.count(unk)
        if ids and n > UNKNOWN_SHARE * len(ids):
            char = next((c for c in text if tokenizer(c, add_special_tokens=False).input_ids == [unk]), "?")
            raise DataError(f"{_text_label(label)}: {n} of its {len(ids)} tokens are unknown ({tokenizer.unk_token}) "
                            f"to {name}, starting with {char!r}: it cannot encode this text; use a model whose "
                            f"tokenizer covers it (the built-in tokenizer knows printable ASCII and newlines only)")


def record_texts(records: list[Record], views: ViewConfig | None = None):
    """(label, text) of every text a view or a response holds, lazily: the views' prompts and few-shot examples,
    then each record's query, knowledge and response (labelled (record, field), named only in an error)."""
    if views is not None:
        for k in ("system_prompt", "student_system_prompt"):
            if getattr(views, k):
                yield f"data.views.{k}", getattr(views, k)
        for i, shot in enumerate(views.few_shot):
            for k in ("query", "response"):
                yield f"data.views.few_shot[{i}].{k}", shot[k]
    for r in records:
        if r.prompt_ids is not None:  # pre-tokenized: its text is only the ids' numbers; the ids are checked
            continue  # against the tokenizer's range when encoded
        for k in ("query", "knowledge", "response"):
            text = getattr(r, k)
            if text:
                yield (r, k), text


def _text_label(label) -> str:
    return f"{label[0].label()}, its {label[1]}" if isinstance(label, tuple) else label


def _longest_fitting_prefix(text: str, fits) -> str:
    """The longest start of `text` (whole characters) for which fits(prefix) holds, by bisection; '' if none."""
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(text[:mid]) else (low, mid - 1)
    return text[:low]


def _warn_once(rule: str, message: str) -> None:
    if rule not in _WARNED:
        _WARNED.add(rule)
        warnings.warn(message, stacklevel=3)


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] lists -> ids [B, L], attention mask [B, L] (bool), padded on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = True
    return ids, mask


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] lists -> ids [B, T], mask [B, T] (bool), padded on the right."""
    width = max([len(s) for s in seqs] + [1])
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


@dataclass
class PromptBatch:
    """Left-padded prompts of both views. student_ids [B, Ls], teacher_ids [B, Lt], masks alike (bool)."""

    student_ids: torch.Tensor
    student_mask: torch.Tensor
    teacher_ids: torch.Tensor
    teacher_mask: torch.Tensor
    examples: list[Example]


def collate(examples: list[Example], pad_id: int) -> PromptBatch:
    s_ids, s_mask = left_pad([e.student_prompt for e in examples], pad_id)
    t_ids, t_mask = left_pad([e.teacher_prompt for e in examples], pad_id)
    return PromptBatch(s_ids, s_mask, t_ids, t_mask, examples)
