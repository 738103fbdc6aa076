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
import weakref

import torch

_WRAPPERS: dict[tuple, object] = {}  # (function, backend, name) -> the wrapper maybe_compile returns


def maybe_compile(fn, mode: bool | str, name: str, guard_filter=None):
    """Return fn, or a torch.compile'd fn (mode True = inductor, a string = that backend) that switches back to
    the eager fn, with one warning, the first time compiling or running the compiled code raises.

    guard_filter: torch.compile's guard_filter_fn (which of dynamo's guards to keep), None = all."""
    if not mode:
        return fn
    if inspect.ismethod(fn):
        return functools.partial(maybe_compile(fn.__func__, mode, name, guard_filter), fn.__self__)
    backend = "inductor" if mode is True else mode
    key = (fn, backend, name)
    if key not in _WRAPPERS:
        try:
            options = _options(backend)
            if guard_filter is not None:
                options["guard_filter_fn"] = guard_filter
            compiled = torch.compile(fn, dynamic=True, backend=backend, options=options)
        except Exception as error:  # e.g. an unknown backend, or no compiler support on this platform
            warnings.warn(f"torch.compile of {name} failed ({error!r}); running it eagerly", stacklevel=2)
            return fn
        _WRAPPERS[key] = _falling_back(compiled, fn, name)
    return _WRAPPERS[key]


def _options(backend: str) -> dict:
    # Inductor's C++ wrapper launches the graph's kernels from C++ instead of Python: same kernels, same results,
    # about 0.3 ms less per call of a tiny model's forward on a CPU (where a decode step is ~1 ms).
    return {"cpp_wrapper": True} if backend == "inductor" else {}


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
    """model(**kwargs), with the model as an argument (dynamo reads its parameters on every call)."""
    return model(**kwargs)


_CALLERS: dict[tuple[str, int], object] = {}  # (role, id(model)) -> that model's own copy of call_model


def keep_input_guards(entries) -> list[bool]:
    """torch.compile guard filter for a function that only ever sees one model object (see compiled_model).

    Keeps the guards on the inputs (tokens, mask, positions, the cache and its layers), on the global torch
    state (grad mode, autocast, ...), and on the model's tensors (dtype, device, shape) and `training` flags.
    Drops the guards on the model's structure, config and code and on module globals: several hundred checks,
    run before every call (about 0.3 ms of a ~1 ms decode step of a tiny model on a CPU), on things that the
    model's one compiled caller sees unchanged."""
    keep = []
    for e in entries:
        on_model = e.name == "model" or "(model" in e.name or e.name.startswith(("model.", "model["))
        keep.append(not e.is_global and (not on_model or e.name == "model" or e.guard_type == "TENSOR_MATCH"
                                         or e.name.endswith(".training")))
    return keep


def compiled_model(model, mode: bool | str, role: str = "model"):
    """A callable like `model` (called with keyword arguments), compiled with maybe_compile; mode False: model.

    Each (role, model object) gets its own copy of call_model, and so its own graphs: dynamo keeps graphs, and
    counts them against torch._dynamo.config.recompile_limit, per code object. A role needs a few (the first
    feed into an empty cache, one token, a block; batch size 1 and larger apart). Because a copy only ever sees
    its one model, the guards on that model's structure and config can go (keep_input_guards); a model whose
    code or config is changed in place (not its weights: those are read on every call) needs a new object.
    The copy is dropped when the model is garbage collected."""
    if not mode:
        return model
    # Each batch size of 1 (specialised) and >1, each feed kind and the cache's first-call layout make graphs:
    # more than dynamo's default limit of 8 per function when one process benchmarks several batch sizes, and
    # past the limit dynamo runs the function eagerly with its guard checks on top (slower than plain eager).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    key = (role, id(model))
    if key not in _CALLERS:
        code = call_model.__code__.replace(co_name=f"call_{role}")
        _CALLERS[key] = types.FunctionType(code, call_model.__globals__, f"call_{role}")
        weakref.finalize(model, _forget, key)
    name = f"{type(model).__name__}.forward ({role})"
    return functools.partial(maybe_compile(_CALLERS[key], mode, name, keep_input_guards), model)


def _forget(key: tuple[str, int]) -> None:
    fn = _CALLERS.pop(key, None)
    for k in [k for k in _WRAPPERS if k[0] is fn]:
        del _WRAPPERS[k]
