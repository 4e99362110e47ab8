"""The catalog index: id-keyed vectors and attribute codes, searched through hnswlib graphs."""
from .catalog_index import CatalogIndex, Filter, Hits
from .items import normalize_id

__all__ = ["CatalogIndex", "Filter", "Hits", "normalize_id"]
