"""The one task-waiting loop: tagged futures on an engine, collected as they finish.

Every phase that fans work out — the screening stages, the DFT phase,
distillation's labelling — submits through a :class:`TaskPool` and reads
:class:`Done` records back from :meth:`TaskPool.completed`.  A task that raised
(after the engine's own retries) comes back as a record with ``error`` set,
never as an exception: the caller decides whose failure it was.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any

__all__ = ["Done", "TaskPool"]


@dataclass(frozen=True, slots=True)
class Done:
    """One finished task: its tag, and either its result or the exception it raised."""

    tag: Any
    result: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def describe_error(self, limit: int = 300) -> str:
        """``Type: message``, cut to ``limit`` characters ('' for a success)."""
        if self.error is None:
            return ""
        return f"{type(self.error).__name__}: {self.error}"[:limit]


class TaskPool:
    """Futures submitted to an engine, each with a tag saying what it was for.

    ``engine`` is anything with ``submit(label, fn, *args) -> Future`` (the
    serial, Parsl and MPI engines).  The pool holds no thread of its own; the
    caller's loop drives it.
    """

    def __init__(self, engine) -> None:
        self.engine = engine
        self._pending: dict[Future, Hashable] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def submit(self, label: str, tag: Any, fn: Callable, *args: Any) -> None:
        """Start ``fn(*args)`` on the engine's ``label`` executor, remembered under ``tag``."""
        self._pending[self.engine.submit(label, fn, *args)] = tag

    def completed(self, until: int = 0) -> Iterator[Done]:
        """Finished tasks, as they finish, until at most ``until`` are in flight.

        The caller may submit more while iterating; the loop then waits for
        those too (down to ``until``).
        """
        while len(self._pending) > until:
            finished, _ = wait(list(self._pending), return_when=FIRST_COMPLETED)
            for f in finished:
                tag = self._pending.pop(f)
                try:
                    yield Done(tag, f.result())
                except Exception as err:  # the task died: a record, not a raise
                    yield Done(tag, error=err)
