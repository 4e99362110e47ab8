"""The catalog index: id-keyed vectors and attribute codes, searched through hnswlib graphs."""
from .catalog_index import CatalogIndex, Filter, Hits
from .items import normalize_id
from .protocol import IndexBackend

__all__ = ["CatalogIndex", "Filter", "Hits", "IndexBackend", "normalize_id"]
