"""A request's worst-case cost, known before it is sent: what a budget reserves.

Input: no tokenizer counts more than one token per byte of text, so ``len(body) / bytes_per_token`` (default 1)
bounds the input whatever the language (base64 images and PDFs count far fewer tokens than bytes, so they are
over-reserved, never under). Output: the request's own cap (``max_tokens``, ``max_completion_tokens``,
``max_output_tokens``, Gemini's ``generationConfig.maxOutputTokens``, Bedrock's ``inferenceConfig.maxTokens``)
times ``n`` choices, or the controls file's ``reserve.default_max_output_tokens`` when the request sets none.
Both at the model's dearest applicable rate (:meth:`modeltrack.pricing.Bounds.bound`).

When that bound holds, a budget cannot be overshot (README, "Spend controls"); when it does not (no cap in the
request and a model that writes more than the default), the excess of each such request is the overshoot.
"""

from __future__ import annotations

from typing import Any, Final

from .spec import Reserve

_CAPS: Final[tuple[str, ...]] = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_CAP_NAMES: Final = frozenset({*_CAPS, "generationConfig", "inferenceConfig"})


def output_cap(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    if len(body) <= 4:
        # A small body (a model and its messages, perhaps a stream flag): its few keys are checked against the
        # names, where five lookups of absent names cost twice as much (callgrind, bench/README.md).
        for name in body:
            if name in _CAP_NAMES:
                break
        else:
            return None
    elif not (
        "max_tokens" in body
        or "max_completion_tokens" in body
        or "max_output_tokens" in body
        or "generationConfig" in body
        or "inferenceConfig" in body
    ):
        # A request without a cap, checked for TPM and budgets: five dict lookups, compiled to C calls
        # (``frozenset.isdisjoint`` was a method call, 0.6 µs a request under load, bench/README.md).
        return None
    for name in _CAPS:
        v = body.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            break
    else:
        v = None
        for outer, inner in (("generationConfig", "maxOutputTokens"), ("inferenceConfig", "maxTokens")):
            cfg = body.get(outer)
            if isinstance(cfg, dict) and isinstance(cfg.get(inner), int) and cfg[inner] > 0:
                v = cfg[inner]
                break
    if v is None:
        return None
    n = body.get("n") or (body.get("generationConfig") or {}).get("candidateCount") or 1
    return int(v) * (n if isinstance(n, int) and 0 < n <= 128 else 1)


def bound_tokens(body_bytes: int, body: Any, reserve: Reserve) -> tuple[int, int]:
    """(input, output) token bounds for a request."""
    cap = output_cap(body)
    return int(body_bytes / reserve.bytes_per_token) + 1, cap if cap is not None else reserve.default_max_output_tokens
