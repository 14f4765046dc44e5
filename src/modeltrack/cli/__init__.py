"""The ``modeltrack`` command line (the parser and dispatch live in :mod:`.main`)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
