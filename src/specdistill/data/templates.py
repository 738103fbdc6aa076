"""Chat templates: rendering a view's messages, and the tokens that end an assistant turn.

Real families differ: Gemma-2's template raises on a system message (it is folded into the first user turn),
Qwen3's takes `enable_thinking`, and each ends a turn with its own token (`<|im_end|>`, `<|eot_id|>`,
`<end_of_turn>`), which is often not the tokenizer's EOS. docs/models.md lists what each family needs.
"""

from __future__ import annotations

import weakref

from jinja2.exceptions import TemplateError

from ..errors import UserError


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


def render_prompt(tokenizer, messages: list[dict], use_chat_template: bool = True, options: dict | None = None) -> str:
    """A prompt ending where the assistant's answer starts: the tokenizer's chat template (with `options`, its
    keyword arguments such as Qwen3's enable_thinking=False) or, without one, the plain template.

    A template that rejects a system message (Gemma-2 raises) gets it folded into the first user turn, as
    Gemma-3's own template does. Any other message list the template rejects is a UserError."""
    if not (use_chat_template and getattr(tokenizer, "chat_template", None)):
        return render_plain(messages)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **(options or {}))
    except TemplateError as exc:
        error = exc
    if messages and messages[0]["role"] == "system":
        try:
            return tokenizer.apply_chat_template(fold_system(messages), tokenize=False, add_generation_prompt=True,
                                                 **(options or {}))
        except TemplateError as exc:
            error = exc
    roles = ", ".join(m["role"] for m in messages)
    raise UserError(f"the chat template of {getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'} rejects the "
                    f"messages [{roles}]: {error}")


def fold_system(messages: list[dict]) -> list[dict]:
    """[system, user, ...] -> [user(system + blank line + user), ...]."""
    system, first, rest = messages[0], messages[1], messages[2:]
    return [{"role": first["role"], "content": f"{system['content']}\n\n{first['content']}"}, *rest]


def turn_end_id(tokenizer) -> int:
    """The token that closes an assistant turn in the chat template (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`),
    which a reference response ends with, as the model writes it; the EOS token without a chat template."""
    found = _TURN_END.get(tokenizer)
    if found is None:
        found = _TURN_END[tokenizer] = _find_turn_end(tokenizer)
    return found


_TURN_END: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_MARK = "\u2063specdistill-turn-end\u2063"  # text no template changes


def _find_turn_end(tokenizer) -> int:
    """Render [user, assistant=_MARK] and take the first token after the mark, if it is a special token."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception:  # noqa: BLE001 - a template that cannot render this: fall back to the EOS
            text = ""
        if _MARK in text:
            after = tokenizer(text.split(_MARK, 1)[1], add_special_tokens=False).input_ids
            special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
            if after and (after[0] in special or after[0] in tokenizer.all_special_ids):
                return after[0]
    return tokenizer.eos_token_id


def end_token_ids(tokenizer, *models) -> list[int]:
    """Every id that ends a row (DESIGN 9): the tokenizer's EOS, each model's `generation_config.eos_token_id`
    (an int or a list: Llama-3 has <|end_of_text|>, <|eom_id|> and <|eot_id|>) and the template's end of turn.
    Ids outside the tokenizer are left out: they are never generated."""
    ids: list[int] = []
    candidates = [tokenizer.eos_token_id, turn_end_id(tokenizer)]
    for model in models:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        candidates += eos if isinstance(eos, (list, tuple)) else [eos]
    for i in candidates:
        if i is not None and 0 <= int(i) < len(tokenizer) and int(i) not in ids:
            ids.append(int(i))
    return ids


