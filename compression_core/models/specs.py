"""Model factory specs `package.module:attr`: checked as text before anything is imported, then resolved.

A spec names code, so it is a trust boundary. `resolve_factory` refuses, before importing anything, a spec that is
malformed (relative, empty parts, spaces, non-identifiers, dunder attributes), that points into the Python standard
library (`os:abort`, `builtins:exit`, `tempfile:mkdtemp`, `this:x`) and, when the caller gives `allowed_prefixes`,
any module outside them. After the import it accepts only a class that subclasses `torch.nn.Module` or a plain
function defined in a non-standard-library module (so `torch.nn:Identity` passes, a re-exported stdlib function
does not). Anything user code raises while importing, SystemExit and KeyboardInterrupt included, becomes one
`ModelLoadError` line.
"""
from __future__ import annotations

import importlib
import inspect
import keyword
import sys
from typing import Callable, Sequence

from torch import nn

from ..errors import error_line, shown
from .weights import ModelLoadError

STDLIB = frozenset(sys.stdlib_module_names) | {"builtins", "__main__"}
USER_CODE_ERRORS = (Exception, SystemExit, KeyboardInterrupt)  # what user code may raise at import or call time
MAX_SPEC = 200  # characters
FORM = "package.module:function (dotted Python identifiers, one ':', no spaces)"
ALLOWED = "a class subclassing torch.nn.Module or a function defined in your own module"


def _is_name(part: str) -> bool:
    return part.isidentifier() and part.isascii() and not keyword.iskeyword(part)


def _is_dunder(part: str) -> bool:
    return part.startswith("__") and part.endswith("__")


def is_module_prefix(prefix: str) -> bool:
    """Whether `prefix` is a dotted module name (`mypkg`, `mypkg.nets`) usable as an allowed prefix."""
    return bool(prefix) and all(_is_name(p) and not _is_dunder(p) for p in prefix.split("."))


def under_prefix(module: str, prefixes: Sequence[str]) -> bool:
    """Whether `module` is one of `prefixes` or inside one, matching whole dotted components (`a.b` is under `a`,
    `ab` is not)."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def check_spec(spec: object, allowed_prefixes: Sequence[str] | None = None) -> tuple[str, str]:
    """Check a factory spec as text, importing nothing.

    Args:
        spec: the `package.module:attr` string.
        allowed_prefixes: when given, the dotted module prefixes the module must be under (empty: none allowed).

    Returns:
        (module name, attribute name).

    Raises:
        ModelLoadError: one line saying what is wrong and what is allowed.
    """
    if not isinstance(spec, str) or len(spec) > MAX_SPEC or spec.count(":") != 1:
        raise ModelLoadError(f"model factory {shown(spec)} must look like {FORM}, at most {MAX_SPEC} characters")
    module, attr = spec.split(":")
    if not is_module_prefix(module) or not _is_name(attr):
        raise ModelLoadError(f"model factory {shown(spec)} must look like {FORM}")
    if _is_dunder(attr):
        raise ModelLoadError(f"model factory {shown(spec)} names the special attribute {attr!r}; name {ALLOWED}")
    top = module.split(".")[0]
    if top in STDLIB:
        raise ModelLoadError(f"model factory {shown(spec)} is in the Python standard library ({top}); "
                             f"a factory must be {ALLOWED}")
    if allowed_prefixes is not None and not under_prefix(module, allowed_prefixes):
        allowed = ", ".join(allowed_prefixes) or "none (built-in models and torchvision:NAME only)"
        raise ModelLoadError(f"model factory {shown(spec)} is not from an allowed module; allowed module "
                             f"prefixes: {allowed}")
    return module, attr


def resolve_factory(spec: str, *, allowed_prefixes: Sequence[str] | None = None) -> Callable[..., nn.Module]:
    """The class or function a factory spec names, after checking the spec as text and the object it finds.

    Args:
        spec: `package.module:attr`, e.g. "mypkg.nets:build_model" or "torch.nn:Identity".
        allowed_prefixes: dotted module prefixes the module must be under (matched on whole components); None
            allows any non-standard-library module, an empty sequence allows none.

    Returns:
        A class subclassing nn.Module, or a function whose `__module__` is not in the standard library.

    Raises:
        ModelLoadError: one line — malformed, standard library, not allowed, cannot import (the cause), no such
            attribute, or not a class / function that may build a model.

    Examples:
        >>> resolve_factory("torch.nn:Identity")
        <class 'torch.nn.modules.linear.Identity'>
    """
    module_name, attr = check_spec(spec, allowed_prefixes)
    try:
        module = importlib.import_module(module_name)
    except USER_CODE_ERRORS as err:  # user code: SyntaxError, a raise at import, even sys.exit()
        raise ModelLoadError(f"cannot import {module_name!r} for model factory {spec!r}: "
                             f"{type(err).__name__}: {error_line(err, first_line=True)}") from None
    try:
        found = getattr(module, attr)
    except USER_CODE_ERRORS:  # a module-level __getattr__ is user code too
        raise ModelLoadError(f"module {module_name!r} has no factory {attr!r} (model {spec!r})") from None
    if inspect.isclass(found) and issubclass(found, nn.Module):
        return found
    defined_in = getattr(found, "__module__", None)
    if inspect.isfunction(found) and isinstance(defined_in, str) and defined_in.split(".")[0] not in STDLIB:
        return found
    what = f"{type(found).__name__} from {defined_in or 'an unknown module'}"
    raise ModelLoadError(f"model factory {spec!r} is a {what}; a factory must be {ALLOWED}")
