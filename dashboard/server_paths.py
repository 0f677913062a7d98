"""Server folders a browser may name: the operator's data roots, and the check every path spec passes first.

A dataset path (`imagefolder:PATH`, `idx:PATH`, `text:PATH`, `torchvision:CLASS:ROOT`) or a Hugging Face folder
(`hf:PATH`) typed in the sidebar names a folder on the *server*. Reading it runs no code, but it would let anyone
with the URL read (and make the server decode) any folder the server process can see. So a path is accepted only
inside one of the folders the operator shares in `$COMPRESSION_EXPLORER_DATA_ROOTS` (os.pathsep-separated;
unset = none), after symlinks are resolved, so `..` and links cannot step outside.
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_ROOTS_ENV = "COMPRESSION_EXPLORER_DATA_ROOTS"
PATH_KINDS = ("imagefolder", "idx", "text", "torchvision", "hf")  # the spec prefixes that name a server path


class PathRefused(ValueError):
    """A path spec names a folder outside the operator's data roots, or is malformed; one line says which."""


def data_roots() -> tuple[Path, ...]:
    """The folders the operator shares (`$COMPRESSION_EXPLORER_DATA_ROOTS`), resolved; empty when unset.

    Raises:
        PathRefused: an entry is not an absolute path to an existing folder (the operator must fix the setting).
    """
    roots = []
    for entry in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        path = Path(entry.strip())
        if not path.is_absolute() or not path.is_dir():
            raise PathRefused(f"{DATA_ROOTS_ENV} holds {entry.strip()!r}, not an absolute path to an existing folder;"
                              " the operator must fix this server setting")
        roots.append(path.resolve())
    return tuple(roots)


def split_spec(spec: str) -> tuple[str, str, str]:
    """(kind, prefix to keep, path) of a path spec: 'torchvision:MNIST:/d' -> ('torchvision', 'torchvision:MNIST:', '/d').

    Raises:
        PathRefused: the spec does not start with one of PATH_KINDS or has no path.

    Example:
        >>> split_spec("imagefolder:/data/val")
        ('imagefolder', 'imagefolder:', '/data/val')
    """
    kind, _, rest = spec.strip().partition(":")
    if kind not in PATH_KINDS:
        raise PathRefused(f"{spec.strip()[:80]!r} is not a path spec; use one of "
                          f"{', '.join(k + ':PATH' for k in PATH_KINDS if k != 'torchvision')} or torchvision:CLASS:ROOT")
    prefix = f"{kind}:"
    if kind == "torchvision":
        cls, _, rest = rest.partition(":")
        prefix = f"torchvision:{cls}:"
    if not rest.strip():
        raise PathRefused(f"{spec.strip()[:80]!r} names no folder; write {prefix}/path/on/the/server")
    return kind, prefix, rest.strip()


def check_server_path(spec: str, roots: tuple[Path, ...]) -> str:
    """The spec with its path resolved, if that path lies inside one of `roots`.

    Args:
        spec: e.g. "imagefolder:/data/imagenet/val" or "hf:/models/gpt2-tiny".
        roots: from `data_roots()`.

    Returns:
        The canonical spec (absolute, symlinks resolved), e.g. "imagefolder:/data/imagenet/val".

    Raises:
        PathRefused: no roots are shared, the path is relative or lies outside every root.
    """
    kind, prefix, raw = split_spec(spec)
    if not roots:
        raise PathRefused(f"this server shares no data folders, so {kind}: paths are off; an operator enables them "
                          f"with {DATA_ROOTS_ENV}=/path/to/data (see README)")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise PathRefused(f"{raw[:200]!r} is a relative path; give an absolute path inside "
                          f"{', '.join(map(str, roots))}")
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop, a name too long for the file system
        raise PathRefused(f"{raw[:200]!r} cannot be resolved ({err}); give a folder inside "
                          f"{', '.join(map(str, roots))}") from None
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise PathRefused(f"{raw[:200]!r} is outside the folders this server shares ({', '.join(map(str, roots))});"
                          f" put the data there, or ask the operator to add its folder to {DATA_ROOTS_ENV}")
    return f"{prefix}{resolved}"
