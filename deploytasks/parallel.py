"""The same work on several hosts at once: one thread each, every outcome kept.

Fabric has no parallel mode of its own that keeps per-host output apart and per-host failures
separate (ThreadingGroup raises one GroupException for all); a rollout needs each host's result
or exception to decide what the others do. The main thread joins in short waits, so Ctrl-C
still reaches it while hosts work.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def each(items: Sequence[T], work: Callable[[T], R], name: Callable[[T], str] = str) -> list[R | Exception]:
    """work(item) for every item at once; in the items' order, each result or the exception it
    raised. A single item runs in this thread (its Ctrl-C and traceback stay as they were)."""
    results: list[R | Exception] = [None] * len(items)  # type: ignore[list-item]

    def run(index: int, item: T) -> None:
        try:
            results[index] = work(item)
        except Exception as error:  # kept for the caller, which decides what the others do
            results[index] = error

    if len(items) == 1:
        run(0, items[0])
        return results
    threads = [threading.Thread(target=run, args=(i, item), name=f"host-{name(item)}", daemon=True)
               for i, item in enumerate(items)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)
    return results


def failures(results: Sequence[object]) -> list[Exception]:
    return [result for result in results if isinstance(result, Exception)]
