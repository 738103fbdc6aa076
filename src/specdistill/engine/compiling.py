"""`compile=True`: torch.compile the hot functions, falling back to eager code if compiling fails.

Wrappers are made once per (function, backend) and shared by every engine call: making one costs about a
millisecond on a CPU, a lot next to a tiny model's forward, and dynamo keeps its graphs on the function's code,
so a fresh wrapper would find the same graphs anyway. A bound method compiles its function, with the object as
an argument (dynamo guards on what it reads from it).
"""

from __future__ import annotations

import functools
import inspect
import types
import warnings

import torch

_WRAPPERS: dict[tuple, object] = {}  # (function, backend, name) -> the wrapper maybe_compile returns


def maybe_compile(fn, mode: bool | str, name: str):
    """Return fn, or a torch.compile'd fn (mode True = inductor, a string = that backend) that switches back to
    the eager fn, with one warning, the first time compiling or running the compiled code raises."""
    if not mode:
        return fn
    if inspect.ismethod(fn):
        return functools.partial(maybe_compile(fn.__func__, mode, name), fn.__self__)
    backend = "inductor" if mode is True else mode
    key = (fn, backend, name)
    if key not in _WRAPPERS:
        try:
            compiled = torch.compile(fn, dynamic=True, backend=backend, options=_options(backend))
        except Exception as error:  # e.g. an unknown backend, or no compiler support on this platform
            warnings.warn(f"torch.compile of {name} failed ({error!r}); running it eagerly", stacklevel=2)
            return fn
        _WRAPPERS[key] = _falling_back(compiled, fn, name)
    return _WRAPPERS[key]


def _options(backend: str) -> dict | None:
    # Inductor's C++ wrapper launches the graph's kernels from C++ instead of Python: same kernels, same results,
    # about 0.3 ms less per call of a tiny model's forward on a CPU (where a decode step is ~1 ms).
    return {"cpp_wrapper": True} if backend == "inductor" else None


def _falling_back(compiled, fn, name: str):
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


def call_model(model, **kwargs):
    """model(**kwargs), with the model as an argument: one compiled wrapper serves every model of a role."""
    return model(**kwargs)


_CALLERS: dict[str, object] = {}  # role -> its own copy of call_model


def compiled_model(model, mode: bool | str, role: str = "model"):
    """A callable like `model` (called with keyword arguments), compiled with maybe_compile; mode False: model.

    Each role (the draft, the target) calls its own copy of call_model: dynamo keeps graphs, and counts them
    against torch._dynamo.config.recompile_limit, per code object, and each role needs a few (the first feed
    into an empty cache, one token, a block; batch size 1 and larger apart)."""
    if not mode:
        return model
    # Each batch size of 1 (specialised) and >1, each feed kind and the cache's first-call layout make graphs:
    # more than dynamo's default limit of 8 per function when one process benchmarks several batch sizes, and
    # past the limit dynamo runs the function eagerly with its guard checks on top (slower than plain eager).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    if role not in _CALLERS:
        code = call_model.__code__.replace(co_name=f"call_{role}")
        _CALLERS[role] = types.FunctionType(code, call_model.__globals__, f"call_{role}")
    compiled = maybe_compile(_CALLERS[role], mode, f"{type(model).__name__}.forward ({role})")
    return functools.partial(compiled, model)
