"""Binding to ComfyUI's call signatures by parameter name, never by position, and installing NASA's wrappers.

ComfyUI adds, removes and reorders parameters of its model forwards and sampler functions from one release
to the next (HunyuanVideo's ``_forward`` gained ``clip_fea`` before ``transformer_options``; Qwen-Image's lost
``guidance``). A ModelPatcher wrapper receives the call's arguments as its caller passed them, positionally
or not; :class:`Call` binds them to the wrapped function's own signature, so a wrapper reads and replaces
arguments by name, and passes everything it does not know through unchanged. A parameter NASA needs that
the signature lacks is a loud error naming the function, not a wrong slot read in silence.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Iterable


class SignatureChanged(RuntimeError):
    """A ComfyUI function NASA wraps no longer has a parameter NASA binds to."""


@functools.lru_cache(maxsize=None)
def _signature(func, drop_first: bool = False) -> inspect.Signature:
    signature = inspect.signature(func)
    if drop_first:
        signature = signature.replace(parameters=list(signature.parameters.values())[1:])
    return signature


def signature_of(func: Callable) -> inspect.Signature:
    """``func``'s signature (bound methods without ``self``), cached per underlying function."""
    target = getattr(func, "__func__", None)
    if target is not None:      # a bound method: the function's signature without its first parameter
        return _signature(target, drop_first=True)
    return _signature(func)


class Call:
    """The arguments of one call of ``func``, by parameter name.

    ``call[name]`` reads one, ``call[name] = value`` replaces it, :meth:`invoke` calls a function of the same
    signature (the wrapper's ``executor``) with them: positional parameters stay positional, keywords stay
    keywords, extra ``**kwargs`` pass through. A name the signature does not declare is looked up in (and set
    into) its ``**kwargs``, where it has them: ComfyUI passes model conditioning (``reference_latent``) that way,
    and moves parameters in and out of ``**kwargs`` between releases (Lumina 2's ``transformer_options``)."""

    def __init__(self, func: Callable, args: tuple, kwargs: dict, where: str, needs: Iterable[str] = ()):
        self.signature = signature_of(func)
        self.where = where
        missing = [n for n in needs if n not in self.signature.parameters]
        if missing:
            raise SignatureChanged(
                f"NASA: {where} has no parameter {', '.join(repr(n) for n in missing)} any more (its signature is "
                f"{self.signature}). This ComfyUI version changed it: please report it to the NASA pack.")
        try:
            self.bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise SignatureChanged(f"NASA: the call of {where} does not fit its own signature {self.signature} "
                                   f"({exc}). Please report it to the NASA pack.") from exc
        # Defaults are read, never filled in: a mutable default (``transformer_options={}``) must not be
        # handed on, where a wrapper further in could write into ComfyUI's shared default object.
        self._var_keyword = next((p.name for p in self.signature.parameters.values()
                                  if p.kind is inspect.Parameter.VAR_KEYWORD), None)

    def __getitem__(self, name: str):
        if name in self.bound.arguments:
            return self.bound.arguments[name]
        param = self.signature.parameters.get(name)
        if param is None:
            extra = self.bound.arguments.get(self._var_keyword, {}) if self._var_keyword else {}
            if name in extra:
                return extra[name]
            raise KeyError(name)
        if param.default is inspect.Parameter.empty:
            raise KeyError(name)
        return param.default

    def get(self, name: str, default=None):
        try:
            return self[name]
        except KeyError:
            return default

    def __setitem__(self, name: str, value) -> None:
        if name in self.signature.parameters:
            self.bound.arguments[name] = value
        elif self._var_keyword is not None:
            self.bound.arguments.setdefault(self._var_keyword, {})[name] = value
        else:
            raise SignatureChanged(f"NASA: {self.where} has no parameter {name!r} and takes no **kwargs. Please "
                                   f"report it to the NASA pack.")

    def invoke(self, func: Callable):
        return func(*self.bound.args, **self.bound.kwargs)


def wrapped_call(executor, args: tuple, kwargs: dict, where: str, needs: Iterable[str] = ()) -> Call:
    """The arguments of a ModelPatcher wrapper's call, bound to the signature of the function it wraps
    (``executor.original``, ComfyUI's ``WrapperExecutor``)."""
    return Call(executor.original, args, kwargs, where, needs)


WRAPPER_KEY = "nasa"            # the key of NASA's ModelPatcher wrappers


def set_wrapper(model_patcher, kind: str, fn: Callable, key: str = WRAPPER_KEY) -> None:
    """Install NASA's ModelPatcher wrapper of ``kind`` (a ``comfy.patcher_extension.WrappersMP`` name),
    replacing one a previous Apply NASA Attention put there."""
    import comfy.patcher_extension as pe
    kind = getattr(pe.WrappersMP, kind)
    model_patcher.remove_wrappers_with_key(kind, key)
    model_patcher.add_wrapper_with_key(kind, key, fn)


def patch_forwards(model_patcher, modules, key_of: Callable[[int], str], make_forward: Callable,
                   what: Callable[[int], str]) -> int:
    """Object-patch the ``forward`` of each of ``modules`` (module ``i`` at model object ``key_of(i)``) with
    ``make_forward(i, module, original)``; returns how many.

    ``original`` is the class's forward bound to the module. A forward a previous Apply NASA Attention patched is
    replaced; one another node patched is a loud error naming ``what(i)`` (e.g. "the cross-attention of PixArt
    block 3"): NASA cannot steer through a forward it does not know."""
    for i, module in enumerate(modules):
        original = type(module).forward.__get__(module)
        current = model_patcher.get_model_object(key_of(i))
        if getattr(current, "nasa_original", current) != original:
            raise ValueError(f"Apply NASA Attention: another node already replaced {what(i)} ({key_of(i)}); NASA "
                             f"cannot steer through it. Remove that node to use NASA on this model.")
        forward = make_forward(i, module, original)
        forward.nasa_original = original
        model_patcher.add_object_patch(key_of(i), forward)
    return len(modules)
