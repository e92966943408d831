"""The ``darknetpy`` command line: the parser (main.py) and one module per command.

This package is the one place where errors become messages and exit codes.
"""

from .main import build_parser, entry, main

__all__ = ["build_parser", "entry", "main"]
