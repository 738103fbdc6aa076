"""`compile=True`: torch.compile the hot per-token functions, falling back to eager code if compiling fails."""

from __future__ import annotations

import warnings

import torch


def maybe_compile(fn, mode: bool | str, name: str):
    """Return fn, or a torch.compile'd fn (mode True = inductor, a string = that backend) that switches back to
    the eager fn, with one warning, the first time compiling or running the compiled code raises."""
    if not mode:
        return fn
    backend = "inductor" if mode is True else mode
    try:
        compiled = torch.compile(fn, dynamic=True, backend=backend)
    except Exception as error:  # e.g. an unknown backend, or no compiler support on this platform
        warnings.warn(f"torch.compile of {name} failed ({error!r}); running it eagerly", stacklevel=2)
        return fn
    current = [compiled]

    def call(*args, **kwargs):
        if current[0] is fn:
            return fn(*args, **kwargs)
        try:
            return current[0](*args, **kwargs)
        except Exception as error:
            warnings.warn(f"torch.compile of {name} failed ({error!r}); running it eagerly", stacklevel=2)
            current[0] = fn
            return fn(*args, **kwargs)

    call.__wrapped__ = fn
    return call
