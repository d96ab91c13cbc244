"""Object storage backends (one per region) and the wrappers composed around them."""

from drd.storage.base import ObjectInfo, ObjectWriter, Storage

__all__ = ["ObjectInfo", "ObjectWriter", "Storage"]
