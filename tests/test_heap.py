"""gc.freeze after start-up, and the thaw-collect-freeze of a reload (in a subprocess: freezing
the test process's own heap would outlive the test)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import gc, weakref
    from explorank.engine import heap

    class Node:
        pass

    assert heap.refreeze() == 0 and gc.get_freeze_count() == 0  # nothing frozen: no-op
    old = Node()
    old.me = old  # a reference cycle, as a replaced bundle's objects can hold
    alive = weakref.ref(old)
    frozen = heap.freeze()
    assert frozen > 0 and gc.get_freeze_count() == frozen
    del old
    gc.collect()
    assert alive() is not None, "a frozen cycle is not collected"
    again = heap.refreeze()
    assert alive() is None, "refreeze thaws, so the dropped cycle is collected"
    assert again > 0 and gc.get_freeze_count() == again
    fresh = Node()
    fresh.me = fresh
    gone = weakref.ref(fresh)
    del fresh
    gc.collect()
    assert gone() is None, "objects made after the freeze are collected as usual"
    print("ok")
    """
)


def test_freeze_keeps_startup_objects_out_and_refreeze_releases_dropped_cycles() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
