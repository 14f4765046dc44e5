"""The request path's HTTP layer: the client-facing protocol (:mod:`.server`, built on :mod:`.reader` and
:mod:`.writer`; :mod:`.message`), the upstream protocol and its pool (:mod:`.upstream`, :mod:`.upstream_pool`),
egress through a forward proxy, header handling, limits and idle watchdogs. It knows nothing of providers,
prices or events."""
