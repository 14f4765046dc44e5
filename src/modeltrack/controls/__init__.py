"""Spend controls: budgets, routing and the response cache (the engine the proxy calls is :mod:`.engine`)."""

from .decision import Decision
from .engine import Controls
from .parse import load
from .spec import ControlsError, ControlsSpec

__all__ = ["Controls", "ControlsError", "ControlsSpec", "Decision", "load"]
