"""Prompt views and collation.

Each record has two prompt views:
- the student view: the student system prompt (if any) and the query;
- the teacher view: the system prompt, few-shot examples, and the knowledge block
  (`[Background Knowledge]\\n{knowledge}\\n\\n{query}` by default).
Both are rendered through the tokenizer's chat template when it has one, else through a plain template.
Prompts are left-padded, so every row's response starts at the same column.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ViewConfig
from .records import Record


def _user_text(record: Record, views: ViewConfig, teacher: bool) -> str:
    if teacher and views.teacher_knowledge and record.knowledge:
        return views.knowledge_template.format(knowledge=record.knowledge, query=record.query)
    return record.query


def view_messages(record: Record, views: ViewConfig, teacher: bool) -> list[dict]:
    """Chat messages of one view: [system], few-shot user/assistant pairs (teacher only), the user turn."""
    system = views.system_prompt if teacher else views.student_system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    for shot in views.few_shot if teacher else []:
        messages += [{"role": "user", "content": shot["query"]}, {"role": "assistant", "content": shot["response"]}]
    return messages + [{"role": "user", "content": _user_text(record, views, teacher)}]


def render_plain(messages: list[dict]) -> str:
    """The template for tokenizers without a chat template: `Question: ...\\nAnswer: ` blocks."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"] + "\n\n")
        elif m["role"] == "user":
            parts.append(f"Question: {m['content']}\nAnswer: ")
        else:
            parts.append(m["content"] + "\n\n")
    return "".join(parts)


def render_prompt(tokenizer, messages: list[dict], use_chat_template: bool = True) -> str:
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return render_plain(messages)


@dataclass
class Example:
    """One record, encoded: each model's prompt ids and the reference response ids (ending with EOS)."""

    student_prompt: list[int]
    teacher_prompt: list[int]
    response: list[int] | None
    record: Record


def encode_example(record: Record, tokenizer, views: ViewConfig) -> Example:
    """Encode both views. Over-long prompts keep their end (the question); responses keep their start."""

    def prompt_ids(teacher: bool) -> list[int]:
        text = render_prompt(tokenizer, view_messages(record, views, teacher), views.use_chat_template)
        return tokenizer(text, add_special_tokens=False).input_ids[-views.max_prompt_tokens :]

    response = None
    if record.response is not None:
        ids = tokenizer(record.response, add_special_tokens=False).input_ids[: views.max_response_tokens - 1]
        response = ids + [tokenizer.eos_token_id]
    return Example(prompt_ids(False), prompt_ids(True), response, record)


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
