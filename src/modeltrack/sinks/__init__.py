"""Where cost events are stored: the sink protocol and the store URL parser (:mod:`.base`), one module per store."""

from .base import Batch, Sink, StoreURLError, _fs_path, describe_store, is_transient, open_sink
from .process import ProcessWriter

__all__ = ["Batch", "ProcessWriter", "Sink", "StoreURLError", "_fs_path", "describe_store", "is_transient", "open_sink"]
