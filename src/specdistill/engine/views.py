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


def _accepts_logits_to_keep(model) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "logits_to_keep" in params


class ModelView:
    """A model plus its cache over one left-padded view ids [B, L] / mask [B, L].

    Invariant between blocks: the cache holds every committed token of each row except the ones in `pending`
    (the last committed token, sometimes two), which the next block feeds first.

    compile: call the model through torch.compile (compiling.compiled_model, dynamic shapes). A small model's
    forward is mostly per-op overhead, which the compiled graph removes; each kind of feed (prefill, one token,
    a block) gets one graph whatever the widths and the cache length, so graphs are compiled once per process.
    """

    def __init__(self, model, clock: ForwardClock, batch_size: int, capacity: int, device: torch.device,
                 compile: bool | str = False, role: str = "model"):
        self.model = model
        self.forward = compiled_model(model, compile, role)  # model itself without compile
        self.compiled = bool(compile)
        self.clock = clock
        self.device = torch.device(device)
        self.cache = DynamicCache(config=getattr(model, "config", None))
        self.slots = torch.zeros(batch_size, max(capacity, 1), dtype=torch.long, device=device)  # 1 = real token
        self._arange = torch.arange(self.slots.shape[1], device=device)
        self.length = 0  # physical cache slots (host int, == cache.get_seq_length())
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)  # [B] logical position
        self.calls = 0
        self.tokens_fed = 0
        self._trim_logits = _accepts_logits_to_keep(model)
        self._mark = (0, self.next_pos)

    def feed(self, tokens: torch.Tensor, valid: torch.Tensor | None = None, last_only: bool = False):
        """Run the model on tokens [B, w] after the cache; valid [B, w] bool marks holes (None = all real).

        Returns logits [B, w, V] (or [B, 1, V] with last_only).
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
        kwargs = dict(
            input_ids=tokens,
            attention_mask=self.slots[:, :end],
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
        )
        if self._trim_logits:
            kwargs["logits_to_keep"] = 1 if last_only else 0
        out = self.clock.run(self.forward, self.device, **kwargs)
        self.cache = out.past_key_values if out.past_key_values is not None else self.cache
        self.length = end
        self.calls += 1
        self.tokens_fed += w
        return out.logits

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode the prompt except its last column, which becomes the pending token [B, 1]."""
        if ids.shape[1] > 1:
            self.feed(ids[:, :-1], mask[:, :-1].bool(), last_only=True)
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

    def _reserve(self, end: int) -> None:
        if end > self.slots.shape[1]:
            grown = torch.zeros(self.slots.shape[0], 2 * end, dtype=self.slots.dtype, device=self.slots.device)
            grown[:, : self.slots.shape[1]] = self.slots
            self.slots = grown
            self._arange = torch.arange(grown.shape[1], device=grown.device)
