"""Where rows stop: EOS tokens, stop sequences (token ids) and the max_new_tokens budget."""

from __future__ import annotations

from dataclasses import dataclass

import torch

RUNNING, EOS, STOP, LENGTH = 0, 1, 2, 3  # reason codes; names in output.FINISH_REASONS


@dataclass
class Stopping:
    max_new_tokens: int
    eos: torch.Tensor | None  # [E] long, None = never stop on EOS
    sequences: list[torch.Tensor]  # each [m] long; a row stops when its response ends with one


def make_stopping(
    max_new_tokens: int,
    eos_token_id: int | list[int] | None = None,
    stop: list[str] | list[list[int]] | None = None,
    tokenizer=None,
    device: torch.device | str = "cpu",
) -> Stopping:
    """Stop strings need a tokenizer; they are matched on token ids (their encoding without special tokens)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    eos = None
    if eos_token_id is not None:
        ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        eos = torch.tensor(ids, dtype=torch.long, device=device) if ids else None
    sequences = []
    for item in stop or []:
        if isinstance(item, str):
            if tokenizer is None:
                raise ValueError(f"stop string {item!r} needs a tokenizer; pass tokenizer= or token-id lists")
            item = tokenizer.encode(item, add_special_tokens=False)
        if len(item) == 0:
            raise ValueError("stop sequences must not be empty")
        sequences.append(torch.tensor(list(item), dtype=torch.long, device=device))
    return Stopping(max_new_tokens=max_new_tokens, eos=eos, sequences=sequences)


def stop_codes(tokens: torch.Tensor, new: torch.Tensor, at: torch.Tensor, stopping: Stopping) -> torch.Tensor:
    """Reason code at each new slot: [B, s] long, EOS where the token is an EOS, STOP where a stop sequence ends
    there, else RUNNING. tokens [B, W] is the response buffer already holding the new tokens, new [B, s] the new
    tokens, at [B, s] their response index."""
    code = torch.zeros_like(new)
    if stopping.eos is not None:
        code = torch.where(torch.isin(new, stopping.eos), EOS, code)
    width = tokens.shape[1]
    for seq in stopping.sequences:
        m = seq.shape[0]
        idx = at[:, :, None] - (m - 1) + torch.arange(m, device=at.device)  # [B, s, m]
        window = tokens.gather(1, idx.clamp(0, width - 1).flatten(1)).view(idx.shape)
        match = (window == seq).all(-1) & (idx[..., 0] >= 0)  # [B, s]
        code = torch.where((code == RUNNING) & match, STOP, code)
    return code
