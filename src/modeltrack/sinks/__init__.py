"""Where cost events are stored: the sink protocol and the store URL parser (:mod:`.base`), one module per store."""

from .base import Sink, StoreURLError, _fs_path, describe_store, open_sink

__all__ = ["Sink", "StoreURLError", "_fs_path", "describe_store", "open_sink"]
