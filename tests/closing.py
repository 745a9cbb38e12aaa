"""The body of every "make_*" fixture: hand the test a factory, and release
whatever it made when the test ends (even if the test failed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def _close(thing: Any) -> None:
    thing.close()


def closing_factory(build: Callable[..., T],
                    release: Callable[[T], None] = _close) -> Iterator[Callable[..., T]]:
    """``yield from closing_factory(build)`` in a fixture: the test gets
    ``build``; every result it returned is released at teardown."""
    made: list[T] = []

    def make(*args: Any, **kwargs: Any) -> T:
        thing = build(*args, **kwargs)
        made.append(thing)
        return thing

    yield make
    for thing in made:
        release(thing)


def valkey_py(host: str, port: int) -> Iterator[Any]:
    """``yield from valkey_py(host, port)`` in a fixture: a valkey-py client
    there (the test is skipped without valkey-py), closed at teardown."""
    import pytest

    valkey = pytest.importorskip("valkey")
    r = valkey.Valkey(host=host, port=port)
    yield r
    r.close()
