"""The start-up heap is set aside from the collector, and later garbage is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from facestream.common.heap import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture
def thawed() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session keeps the collector as it was


def test_objects_alive_at_start_are_no_longer_walked(thawed: None) -> None:
    kept = Node()
    assert any(o is kept for o in gc.get_objects())
    frozen = freeze_startup_heap()
    assert frozen >= 1
    assert gc.get_freeze_count() == frozen
    assert not any(o is kept for o in gc.get_objects())


def test_garbage_made_after_the_freeze_is_still_collected(thawed: None) -> None:
    freeze_startup_heap()
    ref = weakref.ref(Node())  # unreachable at once, alive only through its own cycle
    assert ref() is not None
    gc.collect()
    assert ref() is None
