"""Ctrl-C during a long native call (an ONNX Runtime run, a TensorRT build): the call runs in a worker thread so
that the interrupt reaches the main thread at once; the call is then told to stop by its own means and the
KeyboardInterrupt goes on; a call the library cannot stop (creating an ONNX Runtime session) is abandoned to
finish in its daemon thread, its result dropped. Python delivers signals to the main thread only, between
bytecodes, so a native call made there would hold them until it returns (minutes at 2048-class sizes on a CPU)."""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

T = TypeVar("T")


def call_interruptibly(call: Callable[[], T], cancel: Callable[[], None] | None,
                       name: str = "native-call") -> T:
    """`call()` in a worker; on Ctrl-C, `cancel()`, wait for the call to wind down, and re-raise (with no `cancel`,
    re-raise at once). Off the main thread, where no signal arrives, a plain call."""
    if threading.current_thread() is not threading.main_thread():
        return call()
    done: dict[str, object] = {}
    finished = threading.Event()  # not Thread.join: a join that Ctrl-C interrupts may report a live thread ended

    def work() -> None:
        try:
            done["result"] = call()
        except BaseException as exc:  # handed to the caller's thread below
            done["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=work, name=name, daemon=True).start()
    try:
        while not finished.wait(0.1):
            pass
    except KeyboardInterrupt:
        if cancel is not None:
            cancel()
            finished.wait()  # the call winds down before its objects may go
        raise
    if "error" in done:
        raise done["error"]
    return done["result"]
