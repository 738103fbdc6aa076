"""The built-in character tokenizer, saved as a standard Hugging Face tokenizer folder.

Every printable ASCII character and the newline is one token, so all built-in task text round-trips exactly.
Other characters map to `<unk>`: real data (Korean, say) uses the real model's own tokenizer.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<|end|>", "<unk>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [PAD, EOS, UNK, *ROLE_TOKENS]
CHARACTERS = ["\n"] + [chr(c) for c in range(32, 127)]

# Each message is <|role|>content<|end|>; generation starts after <|assistant|> and stops at <|end|> (the EOS).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Return the built-in tokenizer: 6 special tokens + 96 characters, left padding, chat template."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    # BPE with no merges and no pre-tokenizer splits text into single characters.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.add_special_tokens(SPECIAL_TOKENS)
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        model_max_length=1024,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok
