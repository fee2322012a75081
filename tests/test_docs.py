"""The guide's figures and file references, checked against the code, so that the docs cannot
drift from it: every limit the guide states is compared with the constant or default it names,
every constant is looked for in the module the guide says it is in, and every module or member
that the docs (and the package's docstrings) point to must exist."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import trio_wshandler
from trio_wshandler import ConnectionLimits, HttpLimits, WebSocketHandler
from trio_wshandler._limits import compressed_slack

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "guide.md").read_text()
PACKAGE = Path(trio_wshandler.__file__).parent

_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "s": 1}


def figure(text: str) -> float | int | bool | str | None:
    """A figure as the guide writes it: ``1 MiB``, ``4096``, ``20.0`` s, ``None``, ``"x"``."""
    text = text.strip().strip("`").strip()
    if text in ("None", "False", "True"):
        return {"None": None, "False": False, "True": True}[text]
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1]
    match = re.fullmatch(r"([\d.,]+)`?(?: ([KM]iB|B|s))?(?: .*)?", text)
    assert match, f"not a figure: {text!r}"
    number = float(match[1].replace(",", ""))
    value = number * _UNITS[match[2] or "B"]
    return int(value) if value == int(value) and "." not in match[1] else value


def table(heading: str) -> list[list[str]]:
    """The rows of the first table after ``heading`` (cells stripped, header rows skipped)."""
    start = GUIDE.index(heading)
    rows = []
    for line in GUIDE[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def modules_named(text: str) -> list[str]:
    return re.findall(r"`(_\w+|codec)\.py`", text)


def defined_in(name: str, modules: list[str]) -> Any:
    """The value of the module-level constant ``name`` in one of ``modules`` (the first)."""
    for module in modules:
        source = (PACKAGE / f"{module}.py").read_text()
        if re.search(rf"^{name}\b.*=", source, re.MULTILINE):
            return getattr(importlib.import_module(f"trio_wshandler.{module}"), name)
    raise AssertionError(f"{name} is not defined in {modules}")


def test_limits_table_matches_the_code() -> None:
    rows = table("## Limits and faults")
    assert len(rows) >= 10
    limits = ConnectionLimits()
    checked = 0
    for row in rows:
        default, where = row[1], row[2]
        modules = modules_named(where)
        for name, value in re.findall(r"`(\w+)` = ([\d.,]+(?: [KM]iB| s)?)", default):
            if name.isupper():
                actual = defined_in(name, modules)
            elif hasattr(limits, name):
                actual = getattr(limits, name)
            else:
                actual = inspect.signature(WebSocketHandler).parameters[name].default
            assert figure(value) == actual, row
            checked += 1
    assert checked >= 7


def test_options_table_matches_the_defaults() -> None:
    parameters = inspect.signature(WebSocketHandler).parameters
    rows = table("### `WebSocketHandler(auth=None, **options)`")
    assert {row[0].strip("`") for row in rows} == set(parameters)
    checked = 0
    for row in rows:
        name, default = row[0].strip("`"), row[1]
        if name in ("compression", "logger", "subprotocols"):  # not plain figures
            continue
        assert figure(default) == parameters[name].default, row
        checked += 1
    assert checked >= 15


def test_http_limits_table_matches_the_defaults() -> None:
    limits = HttpLimits()
    rows = table("### `HttpLimits`")
    assert len(rows) == 4
    for row in rows:
        assert figure(row[1]) == getattr(limits, row[0].strip("`")), row


def test_compressed_wire_allowance_is_the_code_s() -> None:
    match = re.search(
        r"`max_message_size` \+ 1/(\d+) \+ (\d+) KiB \+ (\d+) B per fragment"
        r" \(`compressed_slack`\)",
        GUIDE,
    )
    assert match, "the guide states the compressed wire allowance"
    share, kib, per_fragment = (int(g) for g in match.groups())
    for size, fragments in ((1 << 20, 1), (1000, 4096), (65536, 17)):
        assert compressed_slack(size, fragments) == (
            size // share + kib * 1024 + per_fragment * fragments
        )


def _references() -> list[tuple[str, str]]:
    """(where, reference) for every ``_module.py`` / ``_module.member`` named in the docs and in
    the package's docstrings and comments."""
    found = []
    sources = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
    sources += sorted(PACKAGE.glob("*.py"))
    for path in sources:
        text = path.read_text()
        for match in re.finditer(r"`{1,2}(_[a-z_]+)(\.py|\.[A-Za-z_][\w.]*)?`{1,2}", text):
            # ``_x.py`` names a module; ``_x.y`` a member of module _x, if there is one (else
            # it is a private name such as ``_state``, not a reference)
            if match[2] == ".py" or (PACKAGE / f"{match[1]}.py").exists():
                found.append((path.name, match[1] + (match[2] or "")))
    return found


@pytest.mark.parametrize(("where", "reference"), sorted(set(_references())))
def test_references_to_modules_and_members_exist(where: str, reference: str) -> None:
    module, _, rest = reference.partition(".")
    assert (PACKAGE / f"{module}.py").exists(), f"{where} refers to {module}.py, which is gone"
    if rest in ("", "py"):
        return
    target: Any = importlib.import_module(f"trio_wshandler.{module}")
    for part in rest.split("."):
        assert hasattr(target, part), f"{where} refers to {reference}, which does not exist"
        target = getattr(target, part)
