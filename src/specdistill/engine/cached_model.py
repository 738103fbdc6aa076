"""One model's side of the loop: its KV cache, which cache slots hold real tokens, and its next position.

Rows of a batch commit different numbers of tokens per block. Instead of moving cache rows around, a rejected
token's slot stays in the cache as a *hole*: the 2D attention mask marks it 0 and explicit position_ids skip it,
so every row sees exactly its own committed tokens at positions 0, 1, 2, ... (left padding is a hole too).
Slots past the longest surviving row are cropped away (DynamicCache.crop with a negative count).
"""

from __future__ import annotations

import inspect
import time

import torch
from transformers import DynamicCache

from .compiling import compiled_model


class ForwardClock:
    """Time spent inside the models' forward calls of one generation, in seconds.

    On the CPU it adds host time around each call. On CUDA it records events around each call and reads them
    once at the end, so timing adds no host sync per forward (the time is then the GPU's time in the calls).
    """

    def __init__(self):
        self._host_s = 0.0
        self._events = []  # (start, end) CUDA events

    def run(self, fn, device: torch.device, **kwargs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(**kwargs)
            end.record()
            self._events.append((start, end))
            return out
        began = time.perf_counter()
        out = fn(**kwargs)
        self._host_s += time.perf_counter() - began
        return out

    @property
    def seconds(self) -> float:
        if self._events:
            self._events[-1][1].synchronize()
        return self._host_s + sum(start.elapsed_time(end) for start, end in self._events) / 1000


def _forward_params(model) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def sliding_window(model) -> int | None:
    """The window of the model's sliding-window attention layers (Gemma-2/3, Mistral with `sliding_window` set),
    or None when every layer attends to all positions."""
    config = getattr(model, "config", None)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None) or []
    window = getattr(text, "sliding_window", None)
    return int(window) if window and (not layer_types or "sliding_attention" in layer_types) else None


def has_sliding_window(model) -> bool:
    """Whether some attention layer of the model sees only a window of recent positions."""
    return sliding_window(model) is not None


def rollback_cache(model) -> DynamicCache:
    """An empty KV cache that can be cropped back to any length.

    With the model's config, transformers gives sliding-window layers a cache that keeps only the window, which
    cannot be cropped once it is full. Those models get full layers instead: their attention masks still apply
    the window, so the logits are the same, and the cache grows with the row.
    """
    return DynamicCache() if has_sliding_window(model) else DynamicCache(config=getattr(model, "config", None))


class ModelView:
    """A model plus its cache over one left-padded view ids [B, L] / mask [B, L].

    Invariant between blocks: the cache holds every committed token of each row except the ones in `pending`
    (the last committed token, sometimes two; before the first block, the whole prompt), which the next block
    feeds first.

    compile: call the model through torch.compile (compiling.compiled_model, dynamic shapes). A small model's
    forward is mostly per-op overhead, which the compiled graph removes; each kind of feed (the first one into an
    empty cache, one token, a block) gets one graph whatever the widths and the cache length, so graphs are
    compiled once per process. Inputs are kept in one layout for it (contiguous tokens, mask and cache).
    """

    def __init__(self, model, clock: ForwardClock, batch_size: int, capacity: int, device: torch.device,
                 compile: bool | str = False, role: str = "model", vocab: int | None = None):
        self.model = model
        self.vocab = vocab  # logits are cut to the tokenizer's ids [..., :vocab]: padded embedding rows never count
        self.forward = compiled_model(model, compile, role)  # model itself without compile
        self.compiled = bool(compile)
        self.clock = clock
        self.device = torch.device(device)
        self.cache = rollback_cache(model)
        self.slots = torch.zeros(batch_size, max(capacity, 1), dtype=torch.long, device=device)  # 1 = real token
        self._arange = torch.arange(self.slots.shape[1], device=device)
        self.length = 0  # physical cache slots (host int, == cache.get_seq_length())
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)  # [B] logical position
        self.calls = 0
        self.tokens_fed = 0
        params = _forward_params(model)
        self._trim_logits = "logits_to_keep" in params
        # Recent transformers name the cache argument `cache` (`past_key_values` still works there, through a
        # deprecation wrapper that costs time on every call); older releases and other models use past_key_values.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._mark = (0, self.next_pos)
        # transformers measures a sliding window in cache slots, not in positions: holes inside a row would shrink
        # the row's window, so these models move each row's holes to its left edge after every roll-back.
        self._window = sliding_window(model)  # None without one

    def feed(self, tokens: torch.Tensor, valid: torch.Tensor | None = None, keep: int = 0):
        """Run the model on tokens [B, w] after the cache; valid [B, w] bool marks holes (None = all real).

        Returns logits [B, w, V], or of the last `keep` positions only [B, keep, V] (keep=0: all).
        """
        w = tokens.shape[1]
        if self.compiled and tokens._base is not None:  # dynamo guards on whether an input is a view: one graph
            tokens = tokens.clone()  # for drafts (views) and pending tokens (gathered) alike
        end = self.length + w
        self._reserve(end)
        if valid is None:
            self.slots[:, self.length : end] = 1
            positions = self.next_pos[:, None] if w == 1 else self.next_pos[:, None] + self._arange[:w]
            self.next_pos = self.next_pos + w
        else:
            valid = valid.long()
            self.slots[:, self.length : end] = valid
            positions = self.next_pos[:, None] + (valid.cumsum(-1) - valid)  # holes share the next position
            self.next_pos = self.next_pos + valid.sum(-1)
        mask = self.slots[:, :end]  # [B, end], a view whose row stride is the capacity
        kwargs = dict(
            input_ids=tokens,
            attention_mask=mask.contiguous() if self.compiled else mask,
            position_ids=positions,
            use_cache=True,
        )
        kwargs[self._cache_arg] = self.cache
        if self._trim_logits:
            kwargs["logits_to_keep"] = keep
        out = self.clock.run(self.forward, self.device, **kwargs)
        returned = getattr(out, "cache", None) if self._cache_arg == "cache" else out.past_key_values
        self.cache = returned if returned is not None else self.cache
        self.length = end
        self.calls += 1
        self.tokens_fed += w
        logits = out.logits if not keep or out.logits.shape[1] == keep else out.logits[:, -keep:]
        return logits if self.vocab is None else logits[..., : self.vocab]

    def start_from(self, prefix) -> None:
        """Start every row's cache from a shared prefix (prefix.SharedPrefix, P tokens at positions 0 .. P-1):
        slots 0 .. P-1 hold real tokens of every row. Call before the first feed; the rows' own tokens follow,
        their left padding becoming holes between the prefix and them."""
        batch = self.slots.shape[0]
        self.cache = prefix.cache(batch)
        P = prefix.length
        self._reserve(P)
        self.slots[:, :P] = 1
        self.length = P
        self.next_pos = torch.full((batch,), P, dtype=torch.long, device=self.device)
        self._mark = (self.length, self.next_pos)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode the prompt except its last column, which becomes the pending token [B, 1]."""
        if ids.shape[1] > 1:
            self.feed(ids[:, :-1], mask[:, :-1].bool(), keep=1)
        return ids[:, -1:]

    def mark(self) -> None:
        """Remember where this block starts, to roll back to it."""
        self._mark = (self.length, self.next_pos)

    def roll_back(self, keep: torch.Tensor, max_keep: int) -> None:
        """Keep the first keep[b] slots fed since mark() for each row; the rest become holes, and the tail past
        the longest row (mark + max_keep, a host int) is cropped from the cache."""
        start, pos = self._mark
        fed = self.slots[:, start : self.length]  # [B, fed], a view: masking it edits the slots
        fed.mul_(self._arange[: fed.shape[1]] < keep.to(self.device)[:, None])
        self.next_pos = pos + fed.sum(-1)
        new_length = start + max_keep
        if new_length < self.length:
            self.cache.crop(new_length - self.length)
            self.length = new_length
            if self.compiled:  # crop leaves strided views [B, H, S, D] of the longer tensors; dynamo guards on
                self._compact()  # strides, so a compiled forward would recompile at every new cache length
        if self._window is not None:
            self._move_holes_left()

    def _move_holes_left(self) -> None:
        """Reorder each row's cache slots so that its holes come first and its tokens keep their order, ending at
        the last slot: slot distances between a row's tokens then equal their position distances, which is what
        a sliding-window mask measures. One gather over the cache per roll-back, only for such models."""
        slots = self.slots[:, : self.length]  # [B, S]
        order = torch.sort(slots, dim=1, stable=True).indices  # [B, S]: holes (0) first, tokens in order
        self.slots[:, : self.length] = slots.gather(1, order)
        for layer in getattr(self.cache, "layers", []):
            if getattr(layer, "keys", None) is None or layer.keys.shape[-2] != self.length:
                continue
            index = order.to(layer.keys.device)[:, None, :, None].expand_as(layer.keys)  # [B, H, S, D]
            layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)

    def _compact(self) -> None:
        for layer in getattr(self.cache, "layers", []):
            if getattr(layer, "keys", None) is not None and not layer.keys.is_contiguous():
                layer.keys, layer.values = layer.keys.contiguous(), layer.values.contiguous()

    def _reserve(self, end: int) -> None:
        if end > self.slots.shape[1]:
            grown = torch.zeros(self.slots.shape[0], 2 * end, dtype=self.slots.dtype, device=self.slots.device)
            grown[:, : self.slots.shape[1]] = self.slots
            self.slots = grown
            self._arange = torch.arange(grown.shape[1], device=grown.device)
