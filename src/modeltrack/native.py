"""Which of ModelTrack's modules run compiled (``scripts/compile``: mypyc, in place), and whether any of them is
older than its source.

A compiled module is a ``.so`` beside its ``.py``, and Python imports the ``.so``: after an edit, the old code
would keep running. ``scripts/compile`` records a digest of each source it compiled (``_native.json``);
:func:`stale` compares them, and ``modeltrack serve`` and the test suite refuse to start on a mismatch, saying
what to run (tests/test_native.py). An installed wheel or image has no sources to edit and no such risk.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
MANIFEST = PACKAGE / "_native.json"


def recorded() -> dict[str, str]:
    """The compiled modules' sources (``modeltrack/http/server.py``…) and their digests when compiled; empty when
    nothing was compiled."""
    try:
        modules = json.loads(MANIFEST.read_text())["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {str(k): str(v) for k, v in modules.items()}


def stale() -> list[str]:
    """The compiled modules whose source has changed (or gone) since they were compiled."""
    out = []
    for module, digest in recorded().items():
        source = PACKAGE.parent / module
        try:
            now = hashlib.sha256(source.read_bytes()).hexdigest()
        except OSError:
            now = ""
        if now != digest:
            out.append(module)
    return out


def compiled() -> list[str]:
    """The modules of ``modeltrack`` imported so far that run compiled."""
    return sorted(
        name
        for name, mod in list(sys.modules.items())
        if name.startswith("modeltrack.")
        and not name.endswith("__mypyc")  # (the compiled modules' shared runtime library)
        and str(getattr(mod, "__file__", "") or "").endswith(".so")
    )


def stale_message(modules: list[str]) -> str:
    return (
        f"{', '.join(modules)} changed after it was compiled, and the compiled copy would run instead: run "
        "`make compile` (or `.venv/bin/python scripts/compile`), or `scripts/compile --clean` to run interpreted."
    )
