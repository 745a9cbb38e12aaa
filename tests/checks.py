"""Checks and waits that several test files make the same way."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def retry(call: Callable[[], T], errors: type[BaseException] | tuple[type[BaseException], ...],
          within_s: float, pause_s: float,
          until: Callable[[T], bool] = lambda result: True) -> T:
    """``call()`` again (after `pause_s`) while it raises one of `errors`, and
    at once while its result fails `until`; once `within_s` is up, the error
    is raised. Its first result that passes `until`."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            result = call()
            if until(result):
                return result
        except errors:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause_s)


def interrupt_main_after(delay_s: float) -> threading.Timer:
    """SIGINT to the main thread after `delay_s` (Ctrl-C, as the kernel
    would deliver it to a process running a blocking batch there); cancel
    the returned timer when done."""
    timer = threading.Timer(delay_s, signal.pthread_kill,
                            (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    return timer


@contextlib.contextmanager
def raises_within(seconds: float, exc: type[BaseException],
                  match: str | None = None) -> Iterator[Any]:
    """``pytest.raises(exc, match=match)``, and the block raised within `seconds`."""
    t0 = time.monotonic()
    with pytest.raises(exc, match=match) as info:
        yield info
    assert time.monotonic() - t0 < seconds


def assert_refused_without_secrets(info: Any, client: Any, logged: str, where: str,
                                   user: str | None, password: str) -> None:
    """The authentication error names the server (`where`) and says what
    happened; neither it, the client's nor its config's repr, nor the log
    show the user name or the password."""
    text = str(info.value) + repr(info.value) + repr(client) + repr(client.config) + logged
    assert where in str(info.value)
    assert "authentication refused" in str(info.value)
    assert password not in text
    if user:
        assert user not in text


def read_back(client: Any, keys: list[str], size: int) -> tuple[Any, list[Any]]:
    """GET `keys` into new zeroed buffers of `size` bytes: (the per-key
    result, the buffers)."""
    import numpy as np

    dests = [np.zeros(size, np.uint8) for _ in keys]
    return client.batch_get_into(keys, dests), dests


def wait_until_answering(proc: Any, probe: Callable[[], object], timeout_s: float,
                         pause_s: float, name: str, log_tail: Callable[[], str]) -> bool:
    """``probe()`` again (after `pause_s`) while it raises OSError: True once
    it does not, False after `timeout_s`; RuntimeError (with `log_tail()`)
    if the process `proc` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_tail()}")
        try:
            probe()
            return True
        except OSError:
            time.sleep(pause_s)
    return False
