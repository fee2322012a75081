"""The unmask, compiled and in pure Python, against the definition (RFC 6455 section 5.3); the
package built without a C compiler; and which of the two this test run uses (CI runs the whole
suite both ways: ``TRIO_WSHANDLER_NO_SPEEDUPS=1`` forces pure Python, and
``TRIO_WSHANDLER_EXPECT_COMPILED`` says which one the run must be using, so a build that
silently lost its extension fails here)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_wshandler import _unmask

ROOT = Path(__file__).resolve().parent.parent


def reference(data: bytes, mask: bytes, phase: int) -> bytes:
    return bytes(b ^ mask[(i + phase) % 4] for i, b in enumerate(data))


IMPLEMENTATIONS = [_unmask.python_unmask]
try:
    from trio_wshandler import _speedups
except ImportError:  # not built: the pure-Python functions are all there is
    pass
else:
    IMPLEMENTATIONS.append(_speedups.unmask)


@pytest.mark.parametrize("unmask", IMPLEMENTATIONS)
@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=3000),
    mask=st.binary(min_size=4, max_size=4),
    phase=st.integers(0, 3),
    cut=st.tuples(st.integers(0, 3000), st.integers(0, 3000)),
)
def test_unmask_is_xor_with_the_key(
    unmask: _unmask._Unmask,
    data: bytes,
    mask: bytes,
    phase: int,
    cut: tuple[int, int],
) -> None:
    start, end = sorted(min(c, len(data)) for c in cut)
    expected = reference(data[start:end], mask, phase)
    assert unmask(data, start, end, mask, phase) == expected
    assert unmask(memoryview(data), start, end, mask, phase) == expected


@pytest.mark.parametrize("unmask", IMPLEMENTATIONS)
def test_bad_arguments_are_refused(unmask: _unmask._Unmask) -> None:
    with pytest.raises(ValueError):
        unmask(b"abc", 0, 3, b"abc", 0)  # a 3-byte mask
    with pytest.raises(ValueError):
        unmask(b"abc", 0, 3, b"abcd", 4)
    with pytest.raises(ValueError):
        unmask(b"abc", 2, 4, b"abcd", 0)


def test_the_run_uses_the_unmask_it_should() -> None:
    expected = os.environ.get("TRIO_WSHANDLER_EXPECT_COMPILED")
    if expected is None:
        pytest.skip("TRIO_WSHANDLER_EXPECT_COMPILED is not set (nox sets it)")
    assert _unmask.COMPILED is (expected == "1")


def test_the_package_builds_and_works_without_a_c_compiler(tmp_path: Path) -> None:
    """A wheel built with no compiler (CC=false) has no extension and unmasks in pure Python."""
    env = {**os.environ, "CC": "false", "CXX": "false", "LDSHARED": "false"}
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if built.returncode != 0 and "Could not" in built.stderr + built.stdout:
        pytest.skip(f"cannot fetch the build requirements here: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("trio_wshandler-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    assert "trio_wshandler/_unmask.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd"))], names
    # -S: no site hooks (an editable install of the source tree would win); the wheel's files
    # first on the path, then this environment's packages for the dependencies
    path = os.pathsep.join([str(tmp_path / "site"), sysconfig.get_paths()["purelib"]])
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "import trio_wshandler._unmask as u; print(u.COMPILED)"],
        env={**os.environ, "PYTHONPATH": path},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "False", probe.stderr
