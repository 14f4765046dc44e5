"""Read side of the stores: filters and the reader protocol (:mod:`.base`), one reader per store."""

from .base import DIMENSIONS, EventFilter, Filters, Reader, StoreMissing
from .stores import open_reader

__all__ = ["DIMENSIONS", "EventFilter", "Filters", "Reader", "StoreMissing", "open_reader"]
