"""How bytes reach the emulated board: a pseudo-terminal (POSIX) or a TCP socket (pyserial
``socket://``). Every blocking call takes a timeout so the board thread can notice its stop flag.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from typing import Callable


class _PtyIO:
    """Pseudo-terminal: the board owns the master; the client opens ``path`` (the slave)."""

    def __init__(self):
        import termios                            # POSIX only: imported when a pty is asked for
        import tty

        self.master, self.slave = os.openpty()
        tty.setraw(self.slave, termios.TCSANOW)   # 8-bit clean: no echo, no CR/LF mapping, no signals
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.url = self.path

    def read(self, timeout: float) -> bytes:
        readable, _, _ = select.select([self.master], [], [], timeout)
        if not readable:
            return b""
        try:
            return os.read(self.master, 65536)
        except BlockingIOError:
            return b""
        except OSError as exc:        # EIO: no slave open (cannot happen while we hold ours); keep polling
            if exc.errno != errno.EIO:
                raise
            time.sleep(timeout)
            return b""

    def write(self, data: bytes, alive: Callable[[], None]) -> None:
        view = memoryview(data)
        while view:
            alive()
            _, writable, _ = select.select([], [self.master], [], 0.05)
            if not writable:
                continue
            try:
                view = view[os.write(self.master, view):]
            except BlockingIOError:
                continue

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class _SocketIO:
    """TCP on 127.0.0.1 for pyserial ``socket://`` URLs; one client at a time."""

    MAX_PENDING = 1 << 20

    def __init__(self, port: int = 0):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(1)
        self.listener.setblocking(False)
        self.conn: socket.socket | None = None
        self.pending = bytearray()    # board output while no client is connected
        self.url = f"socket://127.0.0.1:{self.listener.getsockname()[1]}"
        self.path = self.url

    def _drop_conn(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def read(self, timeout: float) -> bytes:
        if self.conn is None:
            readable, _, _ = select.select([self.listener], [], [], timeout)
            if readable:
                try:
                    self.conn, _ = self.listener.accept()
                except BlockingIOError:
                    return b""
                self.conn.setblocking(False)
                self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return b""
        self._flush(blocking=False)   # deliver what was written while nobody was connected
        if self.conn is None:
            return b""
        readable, _, _ = select.select([self.conn], [], [], timeout)
        if not readable:
            return b""
        try:
            data = self.conn.recv(65536)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:                  # client went away; the board keeps running
            self._drop_conn()
        return data

    def _flush(self, blocking: bool, alive: Callable[[], None] = lambda: None) -> None:
        while self.pending and self.conn is not None:
            alive()
            _, writable, _ = select.select([], [self.conn], [], 0.05 if blocking else 0)
            if not writable:
                if blocking:
                    continue
                return
            try:
                del self.pending[:self.conn.send(self.pending)]
            except BlockingIOError:
                continue
            except OSError:
                self._drop_conn()

    def write(self, data: bytes, alive: Callable[[], None]) -> None:
        self.pending += data
        if self.conn is None:
            del self.pending[:-self.MAX_PENDING]
            return
        self._flush(blocking=True, alive=alive)

    def close(self) -> None:
        self._drop_conn()
        self.listener.close()
