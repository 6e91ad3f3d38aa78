"""The ``lottalora`` command (``main``): ``lottalora demo`` runs the rank sweep (``demo``),
``lottalora info DIR`` describes a checkpoint."""

from .commands import build_parser, main

__all__ = ["build_parser", "main"]
