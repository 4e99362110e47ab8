"""fashsdk: fashion retrieval with attribute manipulation ("this shirt, but in red").

The runtime needs numpy, onnxruntime, hnswlib and Pillow; it never imports torch.
"""
from .bundle import Bundle
from .errors import BundleError, CatalogError, FashsdkError, ImageError, IndexFileError, QueryError
from .index import CatalogIndex
from .limits import LimitError, Limits
from .retriever import Retriever
from .trust import SignatureError
from .tasks import AttributePrediction, SearchResult

__version__ = "0.1.0"
__all__ = [
    "AttributePrediction", "Bundle", "BundleError", "CatalogError", "CatalogIndex", "FashsdkError",
    "ImageError", "IndexFileError", "LimitError", "Limits", "QueryError", "Retriever", "SearchResult", "SignatureError",
]
