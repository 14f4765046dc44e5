"""Where cost events are stored: the sink protocol and the store URL parser (:mod:`.base`), one module per store."""

from .base import Sink, StoreURLError, _fs_path, describe_store, is_transient, open_sink
from .process import ProcessWriter

__all__ = ["ProcessWriter", "Sink", "StoreURLError", "_fs_path", "describe_store", "is_transient", "open_sink"]
