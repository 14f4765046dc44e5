"""Providers: one module per API family, each with its meter (the router is :mod:`.router`)."""

from .base import Meter, MeterResult, Provider, RequestInfo
from .router import Router, build_providers

__all__ = ["Meter", "MeterResult", "Provider", "RequestInfo", "Router", "build_providers"]
