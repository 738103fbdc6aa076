"""Shared-prefix encoding: the token prefix that every row of a batch's view shares, encoded once.

A LUPI teacher view is a system persona and few-shot examples (the same for every row, often thousands of
tokens), then the row's own knowledge and query. Encoding that prefix once as [1, P] and starting each row's
cache from a copy of its keys and values gives the same logits as encoding every row whole: a key or value
depends on its token, its position and the tokens before it, never on the row or the cache slot it sits in.

    prefix = shared_prefix(teacher, ids, mask)          # detect, then encode (or reuse the stored encoding)
    suffix_ids, suffix_mask = split_views(ids, mask, prefix.length)
    model(..., **{prefix.cache_arg: prefix.cache(B)})   # a DynamicCache of [B, H, P, D] per layer

The last encoding is stored per model and reused by later calls (later steps of training) whose views start
with (a part of) the same ids, until the model's weights change (any in-place update bumps a parameter's
version counter) or another prefix replaces it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from .cached_model import _forward_params, has_sliding_window, rollback_cache

# Prefixes shorter than this are not worth a separate forward and a cache copy per row.
MIN_SHARED_TOKENS = 16


@dataclass
class SharedPrefix:
    """The keys and values of a prefix ids [P] at positions 0 .. P-1, each [1, H, P, D], per layer, of one model
    (held weakly), and the name of that model's cache argument (`cache` or `past_key_values`)."""

    ids: torch.Tensor
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    version: tuple[int, ...]
    model: weakref.ref
    cache_arg: str

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])

    def cut(self, length: int) -> SharedPrefix:
        """The encoding of the first `length` ids (causal attention: a prefix's keys and values stay the same)."""
        if length == self.length:
            return self
        layers = [(k[:, :, :length], v[:, :, :length]) for k, v in self.layers]
        return SharedPrefix(self.ids[:length], layers, self.version, self.model, self.cache_arg)

    def cache(self, batch_size: int):
        """A fresh rollback cache (views.rollback_cache) holding the prefix for each of batch_size rows: pass it
        as the model's `cache_arg` keyword."""
        cache = rollback_cache(self.model())
        for i, (k, v) in enumerate(self.layers):
            cache.update(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1), i)
        return cache


_STORE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its last SharedPrefix


def weights_version(model) -> tuple[int, ...]:
    """Changes whenever a parameter or buffer of the model is updated in place (optimizer steps, load_state_dict)."""
    return tuple(t._version for t in model.parameters()) + tuple(t._version for t in model.buffers())


def common_prefix_length(ids: torch.Tensor, mask: torch.Tensor) -> int:
    """The number of leading real tokens that every row of a left-padded batch ids/mask [B, L] shares, at most
    the shortest row's length minus 1 (every row keeps a token of its own to feed after the prefix)."""
    lengths = mask.long().sum(1)  # [B]
    shortest = int(lengths.min())
    if shortest <= 1:
        return 0
    start = ids.shape[1] - lengths  # [B] the first real column of each row
    cols = start[:, None] + torch.arange(shortest, device=ids.device)  # [B, shortest]
    aligned = ids.gather(1, cols)  # each row's real tokens, left-aligned
    same = (aligned == aligned[:1]).all(0)  # [shortest]
    differ = (~same).nonzero()
    n = int(differ[0]) if len(differ) else shortest
    return min(n, shortest - 1)


def split_views(ids: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded views ids/mask [B, L] whose real tokens all start with the same `length` ids -> the rest of
    each view, left-padded again to the longest rest: [B, L - length - min padding]."""
    mask = mask.bool()
    lengths = mask.long().sum(1)
    width = int(lengths.max()) - length
    rest = lengths - length  # [B] tokens of each row after the prefix
    cols = ids.shape[1] - width + torch.arange(width, device=ids.device)  # the last `width` columns
    keep = torch.arange(width, device=ids.device) >= (width - rest)[:, None]  # [B, width]
    return ids[:, cols].masked_fill(~keep, 0) if width else ids[:, :0], keep


@torch.no_grad()
def encode_prefix(model, ids: torch.Tensor) -> SharedPrefix:
    """Run the model once on ids [P] (positions 0 .. P-1) and keep its keys and values."""
    cache = rollback_cache(model)
    P = ids.shape[0]
    kwargs = dict(input_ids=ids[None], attention_mask=torch.ones(1, P, dtype=torch.long, device=ids.device),
                  position_ids=torch.arange(P, device=ids.device)[None], use_cache=True)
    params = _forward_params(model)
    cache_arg = "cache" if "cache" in params else "past_key_values"
    kwargs[cache_arg] = cache
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1
    out = model(**kwargs)
    returned = getattr(out, "cache", None) if "cache" in params else getattr(out, "past_key_values", None)
    cache = returned if returned is not None else cache
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    return SharedPrefix(ids.clone(), layers, weights_version(model), weakref.ref(model), cache_arg)


def can_share(model) -> bool:
    """Whether shared-prefix encoding is exact for this model: not for sliding-window attention, which measures
    its window in cache slots, while a shared prefix leaves each row's left padding between the prefix and the
    row's own tokens."""
    return not has_sliding_window(model)


def shared_prefix(model, ids: torch.Tensor, mask: torch.Tensor, min_tokens: int = MIN_SHARED_TOKENS):
    """The encoded prefix that every row of the left-padded views ids/mask [B, L] starts with, or None when it is
    shorter than min_tokens or the model cannot share one (can_share).

    The model's stored encoding is reused when it starts with this batch's whole common prefix (cut to it) and
    the model's weights have not changed since; otherwise this batch's common prefix is encoded and stored in its
    place, so a short prefix stored first never stands in for a longer one later."""
    if not can_share(model):
        return None
    n = common_prefix_length(ids, mask)
    if n < min_tokens:
        return None
    row = ids[0, ids.shape[1] - int(mask[0].long().sum()):][:n]  # the shared ids, from the first row
    stored = _STORE.get(model)
    if stored is not None and stored.ids.device == row.device and stored.version == weights_version(model):
        m = min(n, stored.length)
        same = int((stored.ids[:m] == row[:m]).long().cumprod(0).sum())
        if same >= n:  # the stored encoding covers this batch's whole common prefix; a longer one is encoded anew
            return stored.cut(same)
    prefix = encode_prefix(model, row)
    _STORE[model] = prefix
    return prefix


def forget(model) -> None:
    """Drop the model's stored prefix encoding (frees its memory)."""
    _STORE.pop(model, None)
