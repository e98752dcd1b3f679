"""kqa: Korean extractive question answering with explicit, swappable stages."""

__version__ = "0.1.0"
