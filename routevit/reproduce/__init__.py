"""Reproductions of the paper's tables in miniature (``routevit reproduce``)."""

from .cifar10 import Budget, Row, reproduce, rows

__all__ = ["Budget", "Row", "reproduce", "rows"]
