"""The codebase's rooms stay small: the limits issue 27 set, checked so they hold.

A module over 500 lines, a driver class over 250, or a second hand-rolled
task-waiting loop is how the driver grew six jobs before; these tests fail the
moment one comes back, naming where.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import hts

ROOT = Path(hts.__file__).resolve().parent
MAX_MODULE_LINES = 500
MAX_DRIVER_LINES = 250


def _modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_no_module_is_over_500_lines():
    too_long = {
        str(p.relative_to(ROOT.parent)): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_the_driver_class_is_at_most_250_lines():
    from hts.campaign.driver import _Driver

    lines, _ = inspect.getsourcelines(_Driver)
    assert len(lines) <= MAX_DRIVER_LINES, f"_Driver is {len(lines)} lines"


def _first_completed_waits(tree: ast.AST) -> int:
    """Calls that pass ``FIRST_COMPLETED`` (bare or as an attribute) as any argument."""

    def names_it(node: ast.AST) -> bool:
        return any(
            (isinstance(n, ast.Name) and n.id == "FIRST_COMPLETED")
            or (isinstance(n, ast.Attribute) and n.attr == "FIRST_COMPLETED")
            for n in ast.walk(node)
        )

    return sum(
        1
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and any(names_it(a) for a in [*call.args, *(k.value for k in call.keywords)])
    )


def test_there_is_exactly_one_task_waiting_loop():
    """One ``wait(…, FIRST_COMPLETED)`` in the package: :class:`hts.campaign.pool.TaskPool`'s."""
    found = {
        str(p.relative_to(ROOT.parent)): n
        for p in _modules()
        if (n := _first_completed_waits(ast.parse(p.read_text(encoding="utf-8"))))
    }
    assert found == {"hts/campaign/pool.py": 1}, found


def test_the_wait_counter_sees_both_spellings():
    """The check above would miss nothing: ``FIRST_COMPLETED`` bare and as an attribute count."""
    src = (
        "wait(fs, return_when=FIRST_COMPLETED)\n"
        "concurrent.futures.wait(fs, None, concurrent.futures.FIRST_COMPLETED)\n"
        "wait(fs, return_when=ALL_COMPLETED)\n"
    )
    assert _first_completed_waits(ast.parse(src)) == 2
