"""TLS contexts: to the upstreams (always verified) and, when configured, from the app to the proxy.

Both fail at start-up, not on the first request: a path that cannot be loaded is a :class:`ConfigError` that
names the setting and says what to write
(tests/test_tls_egress.py::test_a_bad_certificate_or_bundle_is_refused_at_start_up)."""

from __future__ import annotations

import ssl

from ..config import ConfigError


def tls_context(ca_bundle: str = "") -> ssl.SSLContext:
    """Upstream TLS: verification is always on; a custom bundle adds to (never replaces) the system store."""
    tls = ssl.create_default_context()
    if ca_bundle:
        try:
            tls.load_verify_locations(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"MODELTRACK_CA_BUNDLE={ca_bundle}: cannot load it ({type(exc).__name__}); "
                "write the path of a PEM file of CA certificates"
            ) from None
    tls.set_alpn_protocols(["http/1.1"])
    return tls


def server_tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """TLS from the app to the proxy (``MODELTRACK_TLS_CERT`` / ``MODELTRACK_TLS_KEY``)."""
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"MODELTRACK_TLS_CERT/MODELTRACK_TLS_KEY: cannot load the certificate and key ({type(exc).__name__}); "
            "write the paths of a PEM certificate chain and its unencrypted PEM private key"
        ) from None
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
