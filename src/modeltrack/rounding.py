"""Rounding on the request path, without the builtin ``round``.

``round(x)`` and ``round(x, n)`` are calls through the number's ``__round__`` (a method looked up and bound per
call), and ``round(x, n)`` goes through a decimal string and back: ~0.2 µs each, ~1.5 % of a request's time under
load (perf, bench/README.md "twenty-first session"). The same results in a few native operations, once this module
is compiled (scripts/compile):

* :func:`nearest`: ``round(x)`` for a finite float, ties to even; raises as ``round`` does for NaN and infinities;
* :func:`nano_usd`: pico-dollars to USD rounded to the nano-dollar, ties to even, from the exact integer (not from
  a float quotient, whose own error decides a tie one way or the other).

tests/test_pricing.py::test_rounding_matches_the_builtin holds ``nearest`` to the builtin, and ``nano_usd`` to
``Decimal`` (and to the old ``round(pico / 1e12, 9)`` wherever no tie was decided by a float's error).
"""

from __future__ import annotations

from fractions import Fraction

__all__ = ["nano_usd", "nearest"]


def nearest(x: float) -> int:
    """``round(x)``: the nearest integer, halves to the even one."""
    i = int(x)  # toward zero; ``x - i`` is then exact
    frac = x - i
    if frac > 0.5 or (frac == 0.5 and i & 1):
        return i + 1
    if frac < -0.5 or (frac == -0.5 and i & 1):
        return i - 1
    return i


def nano_usd(pico: int | Fraction) -> float:
    """USD to 9 decimal places for an amount in pico-dollars (an exact integer or fraction)."""
    if isinstance(pico, int):
        nano, rest = divmod(pico, 1000)
        if rest > 500 or (rest == 500 and nano & 1):
            nano += 1
    else:
        nano = round(pico / 1000)  # a Fraction rounds exactly, halves to even
    return nano / 1e9
