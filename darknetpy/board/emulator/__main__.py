"""``python -m darknetpy.board.emulator``: serve one emulated board until Ctrl-C (``--help``)."""

import sys

from .serve import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m darknetpy.board.emulator"))
