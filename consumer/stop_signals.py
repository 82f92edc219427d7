"""Stop signals as a threading.Event, for the command-line programs that wait for Ctrl-C, SIGTERM or SIGHUP.

Python runs a signal handler in the main thread between two bytecodes, possibly while that thread holds the very
lock the handler wants. A handler calling `Event.set()` deadlocked when a second signal landed inside the first
one's `set()` (the Event's lock is not reentrant): `make run` got SIGTERM twice, once from a `kill` of its process
group and once from make passing it on, and hung with the whole stack up. So the handler here does nothing; the
interpreter writes each signal to a socket (`signal.set_wakeup_fd`) and a thread of ours sets the Event.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterable


def stop_event(signals: Iterable[signal.Signals]) -> threading.Event:
    """An Event set once any of `signals` arrives; call it from the main thread, once per process.

    It takes over the process's wakeup fd, so it is not for a process whose main thread runs an asyncio loop
    (that uses `loop.add_signal_handler`, which works the same way)."""
    stop = threading.Event()
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    for sig in signals:
        signal.signal(sig, _ignore)

    # Daemon: it blocks until a signal arrives, which may be never. It holds both sockets open for the life of the
    # process, and drains them, since every later signal writes to them too.
    threading.Thread(target=_set_on_wakeup, args=(reader, writer, stop), name="stop-signals", daemon=True).start()
    return stop


def _set_on_wakeup(reader: socket.socket, writer: socket.socket, stop: threading.Event) -> None:
    while reader.recv(64):
        stop.set()


def _ignore(signum: int, frame: object) -> None:
    """Installed so the signal is Python's (and written to the wakeup fd) instead of ending the process."""
