"""docs/ENGINE_API.md matches the code: the package-top table is `compression_core.__all__`, and every function or
method a module section names as `name(...)` exists in that module (or on a class it defines)."""
import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import compression_core

DOC = (Path(__file__).resolve().parents[2] / "docs" / "ENGINE_API.md").read_text()


def _sections() -> dict[str, str]:
    """heading -> body of each `## ` section."""
    parts = re.split(r"^## ", DOC, flags=re.M)[1:]
    return dict(part.split("\n", 1) for part in parts)


def _table_names(body: str) -> list[str]:
    """The backticked names in the first column of a markdown table."""
    rows = [line for line in body.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])]


def _members(module) -> set[str]:
    """Names defined in `module`, plus the attributes and dataclass fields of the classes it holds."""
    names = set(dir(module))
    for obj in vars(module).values():
        if inspect.isclass(obj):
            names |= set(dir(obj))
            if dataclasses.is_dataclass(obj):
                names |= {f.name for f in dataclasses.fields(obj)}
    return names


def test_the_package_top_table_is_all_and_importable():
    (top,) = [body for head, body in _sections().items() if head.startswith("The package top")]
    listed = _table_names(top)
    assert len(listed) >= 30
    assert sorted(listed) == sorted(compression_core.__all__)
    namespace = {}
    exec(f"from compression_core import {', '.join(listed)}", namespace)  # noqa: S102 (names from our own doc)
    assert all(namespace[name] is getattr(compression_core, name) for name in listed)


def test_every_documented_call_exists_in_its_module():
    missing, checked = [], 0
    for head, body in _sections().items():
        modules = re.findall(r"(\w+)\.py", head) or (["models"] if head.startswith("models/") else [])
        if not modules:
            continue
        members = set().union(*(_members(importlib.import_module(f"compression_core.{m}")) for m in modules))
        for name in sorted(set(re.findall(r"`([A-Za-z_]\w*)\(", body))):
            checked += 1
            if name not in members:
                missing.append(f"{head.split()[0]}: {name}")
    assert checked > 60 and not missing, missing
