"""Tasks: what a user asks of a catalog (search with changes, similar on one attribute).

Each task is one file of free functions over the parts ``Retriever`` holds (index, family,
schema, encoder); outfit completion plugs in the same way.
"""
from .predict import AttributePrediction, Prediction, predict
from .search import SearchResult, query_vector, search, search_batch
from .similar import similar

__all__ = ["AttributePrediction", "Prediction", "SearchResult", "predict", "query_vector", "search", "search_batch",
           "similar"]
