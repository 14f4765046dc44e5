"""The request path runs compiled (scripts/compile, mypyc), and never from a build older than its source."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modeltrack import native

SRC = Path(native.__file__).resolve().parent.parent


def test_every_compiled_module_is_the_one_that_runs() -> None:
    """`make test` compiles first (scripts/compile --strict): the suite then exercises what ships."""
    recorded = native.recorded()
    if not recorded:
        pytest.skip("nothing compiled: run `make compile` (make test does)")
    names = [m.removesuffix(".py").replace("/", ".") for m in recorded]
    for name in names:
        importlib.import_module(name)
    assert native.compiled() == sorted(names)
    assert native.stale() == []


def test_a_source_changed_after_compiling_is_refused(tmp_path: Path) -> None:
    """A copy of the package whose manifest records an older digest of proxy.py: the serve command refuses to
    start and says what to run, before it opens a port or a store."""
    pkg = tmp_path / "modeltrack"
    shutil.copytree(SRC / "modeltrack", pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__", "_native.json"))
    digest = native.hashlib.sha256((pkg / "proxy.py").read_bytes()).hexdigest()
    (pkg / "_native.json").write_text(f'{{"modules": {{"modeltrack/proxy.py": "{digest}"}}}}')
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    ok = subprocess.run(
        [sys.executable, "-c", "from modeltrack import native; print(native.stale())"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.stdout.strip() == "[]", ok.stderr
    with (pkg / "proxy.py").open("a") as f:
        f.write("\n# an edit\n")
    out = subprocess.run(
        [sys.executable, "-m", "modeltrack", "serve", "--port", "1", "--store", f"sqlite:///{tmp_path}/x.db"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "modeltrack/proxy.py changed after it was compiled" in out.stderr
    assert "make compile" in out.stderr
    assert not (tmp_path / "x.db").exists()
