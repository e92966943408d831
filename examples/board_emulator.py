#!/usr/bin/env python3
"""Run an emulated STM32N6570-DK (ST's aiValidation / NPU_Validation firmware) for `darknetpy board-run`.

The emulator is the package ``darknetpy.board.emulator`` (the firmware side of the protocol, written from
the spec alone); this script is ``python -m darknetpy.board.emulator`` under another name::

    python examples/board_emulator.py                      # framing 1 on a pseudo-terminal
    python examples/board_emulator.py --framing 2 --com-param 382
    python examples/board_emulator.py --socket 5555        # TCP: use --port socket://127.0.0.1:5555

It prints the device path (or URL) to give to ``darknetpy board-run --port ...`` and serves until Ctrl-C
(or SIGTERM). With ``--verbose`` it prints every request, ack, reply and fault as it happens.

To build a board of your own in Python::

    from darknetpy.board.emulator import BoardConfig, BoardEmulator, ModelSpec, TensorSpec

    model = ModelSpec(name="network", cycles=[6_032_000],
                      inputs=[TensorSpec((1, 224, 224, 3), "uint8", 1 / 255, 0)],
                      outputs=[TensorSpec((1, 1000), "float32")])
    with BoardEmulator(BoardConfig(framing=1, models=[model])) as board:
        print(board.port)          # give it to darknetpy board-run --port
"""

from __future__ import annotations

import sys

from darknetpy.board.emulator.serve import main

if __name__ == "__main__":
    sys.exit(main())
