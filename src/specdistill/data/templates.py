"""Chat templates: rendering a view's messages, encoding a prompt, and the tokens that end an assistant turn.

Real families differ: Gemma-2's template raises on a system message (it is folded into the first user turn),
Qwen3's takes `enable_thinking`, and each ends a turn with its own token (`<|im_end|>`, `<|eot_id|>`,
`<end_of_turn>`), which is often not the tokenizer's EOS. Base models have no chat template and need their BOS
(Gemma-3-270M answers digits without it). docs/models.md lists what each family needs.
"""

from __future__ import annotations

import warnings
import weakref

from jinja2.exceptions import TemplateError

from ..errors import UserError

# The plain template's answer starts with this text: the prompt ends "Answer:" and the response is encoded as
# " " + response, so a byte-level BPE reads " Paris" (the token the model knows), never " " then "Paris".
PLAIN_ANSWER_LEAD = " "


def render_plain(messages: list[dict]) -> str:
    """The template for tokenizers without a chat template: `Question: ...\nAnswer:` blocks; an answer (a
    few-shot response, and the reference response: `response_text_ids`) follows as " " + its text."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"] + "\n\n")
        elif m["role"] == "user":
            parts.append(f"Question: {m['content']}\nAnswer:")
        else:
            parts.append(PLAIN_ANSWER_LEAD + m["content"] + "\n\n")
    return "".join(parts)


def uses_plain_template(tokenizer, use_chat_template: bool = True) -> bool:
    """True where prompts are rendered by `render_plain`: the tokenizer has no chat template, or the config says
    use_chat_template: false."""
    return not (use_chat_template and getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, messages: list[dict], use_chat_template: bool = True, options: dict | None = None) -> str:
    """A prompt ending where the assistant's answer starts: the tokenizer's chat template (with `options`, its
    keyword arguments such as Qwen3's enable_thinking=False) or, without one, the plain template.

    A template that rejects a system message (Gemma-2 raises) gets it folded into the first user turn, as
    Gemma-3's own template does. Any other message list the template rejects is a UserError."""
    if uses_plain_template(tokenizer, use_chat_template):
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


def leading_bos(tokenizer) -> int | None:
    """The BOS id the tokenizer starts an encoding with (`tokenizer("x").input_ids[0]`: Llama, Gemma and Mistral
    add one, Qwen has none), or None."""
    found = _LEADING_BOS.get(tokenizer)
    if found is None:
        bos, ids = tokenizer.bos_token_id, tokenizer("x").input_ids
        found = _LEADING_BOS[tokenizer] = (bos,) if bos is not None and ids[:1] == [bos] else (None,)
    return found[0]


def encode_prompt(tokenizer, messages: list[dict], use_chat_template: bool = True,
                  options: dict | None = None) -> list[int]:
    """A prompt's token ids: `render_prompt`'s text encoded without special tokens, and with the plain template
    led by the tokenizer's BOS where the tokenizer adds one (`leading_bos`). A chat template writes its own BOS
    (Llama-3's, Gemma's and Mistral's start with `bos_token`), as transformers' `apply_chat_template` encodes
    it; so a prompt never starts with two. The one rule for training views, eval, bench and generate."""
    ids = tokenizer(render_prompt(tokenizer, messages, use_chat_template, options), add_special_tokens=False).input_ids
    bos = leading_bos(tokenizer) if uses_plain_template(tokenizer, use_chat_template) else None
    return [bos, *ids] if bos is not None and ids[:1] != [bos] else ids


def response_text_ids(tokenizer, text: str, use_chat_template: bool = True) -> list[int]:
    """A response's ids as they follow its prompt: after the plain template's "Answer:" the text is encoded with
    its leading space (PLAIN_ANSWER_LEAD), so prompt ids + response ids are the ids of the whole text; a chat
    template's assistant header ends with a special token or a newline, after which the text is encoded alone."""
    lead = PLAIN_ANSWER_LEAD if uses_plain_template(tokenizer, use_chat_template) else ""
    return tokenizer(lead + text, add_special_tokens=False).input_ids


def turn_end_id(tokenizer, use_chat_template: bool = True) -> int:
    """The token that closes an assistant turn in the chat template (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`),
    which a reference response ends with, as the model writes it; the EOS token with the plain template (no chat
    template, or use_chat_template false: a base model is not taught a chat token)."""
    if uses_plain_template(tokenizer, use_chat_template):
        return tokenizer.eos_token_id
    found = _TURN_END.get(tokenizer)
    if found is None:
        found = _TURN_END[tokenizer] = _find_turn_end(tokenizer)
    return found


_TURN_END: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LEADING_BOS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_MARK = "\u2063specdistill-turn-end\u2063"  # text no template changes


def _find_turn_end(tokenizer) -> int:
    """Render [user, assistant=_MARK] and take the first token after the mark, if it is a special token. A
    template that rejects this conversation (its raise_exception, a TemplateError) falls back to the EOS with a
    warning; any other exception is a bug in the template or here and propagates."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except TemplateError as exc:
        warnings.warn(f"the chat template of {getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'} cannot "
                      f"render [user, assistant] ({exc}); its end of turn is taken to be the EOS "
                      f"{tokenizer.eos_token!r}", stacklevel=3)
        return tokenizer.eos_token_id
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


