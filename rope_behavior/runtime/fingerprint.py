"""Content hashes that say what a resumable patching sweep computed.

* :func:`tensor_digest`: a tensor's shape, dtype and raw bytes;
* :func:`model_digest`: every parameter and buffer of a model (``inv_freq`` included);
* :func:`metric_identity`: a metric's code and every value it captures.

All are sha256 hex digests; equal inputs give equal digests across processes.
"""

import dataclasses
import enum
import functools
import hashlib
import os
import sys
import sysconfig
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError

__all__ = ["MetricIdentity", "metric_identity", "model_digest", "tensor_digest"]


def _update(h: Any, label: str, t: Tensor) -> None:
    """Feed ``label``, shape, dtype and the raw bytes of ``t`` into ``h``."""
    if t.is_meta:
        raise RopeBehaviorError(
            f"cannot fingerprint {label}: it is on the meta device (no values); load the "
            "weights (no offloading) before a resumable sweep, or drop out_dir"
        )
    data = t.detach()
    if data.layout != torch.strided:
        data = data.to_dense()
    data = data.to("cpu").contiguous().reshape(-1)
    h.update(f"{label}|{tuple(t.shape)}|{t.dtype}|".encode())
    # Raw bytes of any dtype (bf16 included, which numpy lacks) through a uint8 view.
    h.update(data.view(torch.uint8).numpy().data)


def tensor_digest(t: Tensor) -> str:
    """sha256 of a tensor's shape, dtype and raw bytes."""
    h = hashlib.sha256(b"tensor")
    _update(h, "", t)
    return h.hexdigest()


def model_digest(model: Any) -> str:
    """sha256 over every parameter and buffer of ``model``: name, shape, dtype and raw
    bytes, one tensor at a time (a swapped pair of weights, an edited ``inv_freq`` or a
    dtype cast all change it). About 0.3 s per 100M float32 values on one CPU core,
    plus the copy to the host for a model on an accelerator."""
    h = hashlib.sha256(f"model_digest/v2|{type(model).__name__}".encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            _update(h, f"parameter {name}", p)
        for name, b in model.named_buffers():
            _update(h, f"buffer {name}", b)
    return h.hexdigest()


_LIBRARY_ROOTS = tuple(
    {
        os.path.realpath(p)
        for k in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(k))
    }
)
_SIMPLE = (type(None), bool, int, float, complex, str, bytes, range, slice, torch.dtype)


def _is_library(module: str | None, filename: str | None) -> bool:
    """Code of this package, the standard library and installed packages is identified by
    its qualified name and bytecode; its globals are not followed."""
    if (module or "").split(".")[0] == "rope_behavior" or filename is None:
        return True
    path = os.path.realpath(filename)
    return any(path.startswith(root + os.sep) for root in _LIBRARY_ROOTS)


def _class_is_library(cls: type) -> bool:
    file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if file is None:  # builtins and C types are library; a notebook's __main__ is not
        return cls.__module__ != "__main__"
    return _is_library(cls.__module__, file)


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _global_names(c)
    return names


def _as_tuple(slots: Any) -> tuple[str, ...]:
    return (slots,) if isinstance(slots, str) else tuple(slots)


class _Underivable(Exception):
    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where} is {what}")


class _Identity:
    """sha256 over a value's code and contents (see :func:`metric_identity`)."""

    def __init__(self) -> None:
        self.h = hashlib.sha256(b"metric_identity/v1")
        self.seen: dict[int, int] = {}  # id -> order of first visit (cycles, sharing)
        self.parts: dict[str, str] = {}  # digest of each value the metric holds directly

    def part(self, where: str, feed: Callable[[], None]) -> None:
        """Hash what ``feed`` feeds on its own, record it as a part, fold it in."""
        outer, self.h = self.h, hashlib.sha256()
        try:
            feed()
            digest = self.h.hexdigest()
        finally:
            self.h = outer
        key = where if where not in self.parts else f"{where} #{len(self.parts)}"
        self.parts[key] = digest[:16]
        self.put("part", digest)

    def put(self, *parts: object) -> None:
        for p in parts:
            self.h.update(str(p).encode() + b"\x00")

    def code(self, co: types.CodeType) -> None:
        self.put("code", co.co_name, co.co_argcount, co.co_kwonlyargcount, co.co_flags)
        self.h.update(co.co_code)
        self.put(*co.co_names, "|", *co.co_varnames, "|", *co.co_freevars)
        for c in co.co_consts:
            self.code(c) if isinstance(c, types.CodeType) else self.feed(c, "a constant", 2)

    def feed(self, obj: Any, where: str, depth: int) -> None:
        if depth == 1:
            self.part(where, lambda: self.value(obj, where, depth))
        else:
            self.value(obj, where, depth)

    def value(self, obj: Any, where: str, depth: int) -> None:
        if depth > 40:
            raise _Underivable(where, "nested more than 40 levels deep")
        d = depth + 1
        if isinstance(obj, (*_SIMPLE, torch.device)):
            self.put(type(obj).__name__, repr(obj))
        elif isinstance(obj, Tensor):
            if obj.is_meta or obj.layout != torch.strided:
                raise _Underivable(where, f"a {obj.layout} tensor on {obj.device}")
            data = obj.detach().to("cpu").contiguous().reshape(-1)
            self.put("tensor", tuple(obj.shape), obj.dtype)
            self.h.update(data.view(torch.uint8).numpy().data)
        elif isinstance(obj, enum.Enum):
            self.put("enum", type(obj).__module__, type(obj).__qualname__, obj.name)
        elif isinstance(obj, (tuple, list)):
            self.put(type(obj).__name__, len(obj))
            for i, v in enumerate(obj):
                self.feed(v, f"{where}[{i}]", d)
        elif isinstance(obj, dict):
            self.put(type(obj).__name__, len(obj))
            for k, v in obj.items():
                self.feed(k, f"a key of {where}", d)
                self.feed(v, f"{where}[{k!r}]", d)
        elif isinstance(obj, (set, frozenset)):
            if not all(isinstance(v, _SIMPLE) for v in obj):
                raise _Underivable(where, "a set of non-scalar values (no stable order)")
            self.put(type(obj).__name__, *sorted(repr(v) for v in obj))
        elif isinstance(obj, types.ModuleType):
            self.put("module", obj.__name__)
        elif type(obj).__module__ == "numpy" and hasattr(obj, "tobytes"):
            if getattr(obj, "dtype", None) is None or obj.dtype.hasobject:
                raise _Underivable(where, "a numpy array of Python objects")
            self.put("numpy", obj.shape, obj.dtype.str)
            self.h.update(obj.tobytes())
        elif id(obj) in self.seen:
            self.put("ref", self.seen[id(obj)])
        else:
            self.seen[id(obj)] = len(self.seen)
            self.composite(obj, where, d)

    def composite(self, obj: Any, where: str, d: int) -> None:
        if isinstance(obj, type):
            self.put("class", obj.__module__, obj.__qualname__)
            if not _class_is_library(obj):
                self.class_body(obj, where, d)
        elif isinstance(obj, functools.partial):
            self.put("partial")
            self.feed(obj.func, f"{where} (partial's function)", d)
            self.feed(obj.args, f"{where} (partial's args)", d)
            self.feed(obj.keywords, f"{where} (partial's keywords)", d)
        elif isinstance(obj, types.MethodType):
            self.put("method")
            self.feed(obj.__func__, where, d)
            self.feed(obj.__self__, f"{where}'s object", d)
        elif isinstance(obj, types.FunctionType):
            self.function(obj, where, d)
        elif isinstance(
            obj,
            (
                types.BuiltinFunctionType,
                types.WrapperDescriptorType,
                types.MethodDescriptorType,
                types.MethodWrapperType,
            ),
        ):
            self.put("builtin", getattr(obj, "__module__", None), obj.__qualname__)
            self.feed(getattr(obj, "__self__", None), f"{where}'s object", d)
        elif isinstance(obj, (staticmethod, classmethod)):
            self.feed(obj.__func__, where, d)
        elif isinstance(obj, property):
            for f in (obj.fget, obj.fset, obj.fdel):
                self.feed(f, where, d)
        else:
            self.instance(obj, where, d)

    def function(self, fn: types.FunctionType, where: str, d: int) -> None:
        wrapped = getattr(fn, "__wrapped__", None)
        self.put("function", fn.__module__, fn.__qualname__, wrapped is not None)
        if wrapped is not None:  # a functools.wraps decorator: identified by what it wraps
            self.feed(wrapped, where, d)
            return
        if d == 1:  # the metric itself is this function
            self.part(f"{where}'s code", lambda: self.code(fn.__code__))
        else:
            self.code(fn.__code__)
        self.feed(fn.__defaults__, f"{where}'s defaults", d)
        self.feed(fn.__kwdefaults__, f"{where}'s keyword defaults", d)
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:
                value = "<empty cell>"
            self.feed(value, f"{where} -> closure variable {name!r}", d)
        if not _is_library(fn.__module__, fn.__code__.co_filename):
            for name in sorted(_global_names(fn.__code__)):
                if name in fn.__globals__:
                    self.put("global", name)
                    self.feed(fn.__globals__[name], f"{where} -> global {name!r}", d)

    def class_body(self, cls: type, where: str, d: int) -> None:
        """Methods and class attributes of a user class (not dataclass-generated code)."""
        for klass in cls.__mro__:
            if klass is object or _class_is_library(klass):
                continue
            for name, attr in sorted(vars(klass).items()):
                fn = getattr(attr, "__func__", attr)
                generated = (
                    isinstance(fn, types.FunctionType) and fn.__code__.co_filename == "<string>"
                )
                method = isinstance(attr, (types.FunctionType, staticmethod, classmethod, property))
                if generated or (name.startswith("__") and name.endswith("__") and not method):
                    continue
                self.put("attr", klass.__qualname__, name)
                self.feed(attr, f"{where} -> {klass.__qualname__}.{name}", d)

    def instance(self, obj: Any, where: str, d: int) -> None:
        cls = type(obj)
        self.feed(cls, where, d)
        if dataclasses.is_dataclass(obj):
            state = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        else:
            slots = [
                s
                for k in cls.__mro__
                for s in _as_tuple(getattr(k, "__slots__", ()))
                if s not in ("__dict__", "__weakref__")
            ]
            if not hasattr(obj, "__dict__") and not slots:
                raise _Underivable(
                    where, f"a {cls.__module__}.{cls.__qualname__} (no fields to hash)"
                )
            state = dict(sorted(getattr(obj, "__dict__", {}).items()))
            state.update({s: getattr(obj, s, "<unset>") for s in slots})
        for name, value in state.items():
            self.put("field", name)
            self.feed(value, f"{where}.{name}", d)


@dataclass(frozen=True)
class MetricIdentity:
    """``digest``: sha256 of the whole metric; ``parts``: a short digest of each value it
    holds directly (its code, each closure variable, global, default, field, ...), so a
    mismatch can say which one changed."""

    digest: str
    parts: dict[str, str]


def metric_identity(metric: Any) -> MetricIdentity:
    """A hash naming exactly this metric: its code (bytecode, constants and names; not
    line numbers) and every value it captures — closure cells, defaults, the globals its
    code reads, ``functools.partial`` arguments, bound objects, dataclass / instance
    fields — tensors by content. Code of this package, the standard library and installed
    packages is identified by qualified name and bytecode (its globals are not followed);
    a ``functools.wraps`` decorator by the function it wraps.

    Mutable state counts as it is now (a global counter that has grown changes the
    identity). Raises a :class:`RopeBehaviorError` naming a value that cannot be hashed
    reliably (e.g. a ``torch.Generator``, an open file, a tokenizer backed by native
    code): pass ``metric_label=`` to the sweep instead."""
    ident = _Identity()
    try:
        ident.feed(metric, "the metric", 0)
    except _Underivable as e:
        raise RopeBehaviorError(
            f"cannot derive an identity for the metric {_readable(metric)!r} to resume by: "
            f"{e}, whose content cannot be hashed reliably. Pass metric_label='...' (a label "
            "you vouch names exactly this metric, its code and the values it captures) to "
            "use out_dir, or run without out_dir"
        ) from None
    return MetricIdentity(ident.h.hexdigest(), dict(ident.parts))


def _readable(metric: Any) -> str:
    name = getattr(metric, "name", None)
    if isinstance(name, str):
        return name
    qual = getattr(metric, "__qualname__", type(metric).__qualname__)
    return f"{getattr(metric, '__module__', '')}.{qual}"
