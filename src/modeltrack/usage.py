"""The canonical token ledger every provider's numbers are mapped onto exactly once.

Subset relations (the source of most cost bugs in other proxies) are fixed here, not per call site:

* ``input_tokens``       uncached, non-cache-write input only. Never includes cache reads or writes.
* ``cache_read_tokens``  input served from the provider's prompt cache.
* ``cache_write_tokens`` input written to the cache (all TTLs); ``cache_write_1h_tokens`` is the subset at the
  1-hour TTL (Anthropic prices it higher), so 5-minute writes = ``cache_write_tokens - cache_write_1h_tokens``.
* ``output_tokens``      all output *including* reasoning/thinking tokens (that is how every provider bills).
* ``reasoning_tokens``   the reasoning subset of ``output_tokens``, for reporting only; never priced twice.
* ``input_audio_tokens`` / ``output_audio_tokens`` / ``input_image_tokens``: audio and image subsets of input /
  output where reported (priced at their own rate where the model has one, else at the parent's).
* ``details``: further subsets by modality, keyed by genai-prices' usage keys, for providers that report them
  (Gemini): ``input_{text,video}_tokens``, ``cache_{text,audio,image,video}_read_tokens`` (subsets of the cache
  reads *and* of that modality's input), ``output_{text,image,video}_tokens``, ``input_tool_tokens`` and
  ``input_{modality}_tool_tokens``. Cached audio is cheaper than uncached audio: without these, a cached slice
  was priced at the uncached rate.

Total billed input = input + cache_read + cache_write.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True, init=False)
class Usage:
    # mypyc compiles a dataclass's methods, but not the ``__init__`` the dataclasses module writes at run time:
    # built per request, that interpreted ``__init__`` cost ~6,000 CPU instructions (callgrind, bench/README.md).

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    input_image_tokens: int = 0
    web_search_requests: int = 0
    details: dict[str, int] | None = None
    reported_cost_usd: float | None = None
    """A cost the provider itself reported (OpenRouter ``usage.cost``); preferred over our own price."""
    service_tier: str | None = None

    def __init__(
        self,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        reasoning_tokens: int = 0,
        input_audio_tokens: int = 0,
        output_audio_tokens: int = 0,
        input_image_tokens: int = 0,
        web_search_requests: int = 0,
        details: dict[str, int] | None = None,
        reported_cost_usd: float | None = None,
        service_tier: str | None = None,
    ) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cache_read_tokens = cache_read_tokens
        self.cache_write_tokens = cache_write_tokens
        self.cache_write_1h_tokens = cache_write_1h_tokens
        self.reasoning_tokens = reasoning_tokens
        self.input_audio_tokens = input_audio_tokens
        self.output_audio_tokens = output_audio_tokens
        self.input_image_tokens = input_image_tokens
        self.web_search_requests = web_search_requests
        self.details = details
        self.reported_cost_usd = reported_cost_usd
        self.service_tier = service_tier

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def as_int(value: object) -> int:
    """Token counts from JSON: tolerate null/missing/float/str without ever raising into the proxy."""
    if value is None or isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    try:
        return max(int(float(value)), 0)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
