"""Where the dashboard may listen: beyond loopback only with tokens (checked by ``modeltrack ui`` and, before
anything starts, by ``modeltrack serve --ui``)."""

from __future__ import annotations

import ipaddress

from ..config import ConfigError
from .auth import UIAuth


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, auth: UIAuth) -> None:
    if not is_loopback(host) and not auth.enabled:
        raise ConfigError(
            f"MODELTRACK_UI_HOST={host} exposes the dashboard beyond this machine: set MODELTRACK_UI_TOKENS "
            "(comma-separated tokens, or @FILE of sha256 digests), or keep MODELTRACK_UI_HOST=127.0.0.1"
        )
