"""models/memory.py: startup objects are frozen once per process, and later garbage is still collected."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_freeze_once_and_later_garbage_still_collected() -> None:
    # A fresh interpreter: the test process itself may already have frozen its objects (a bot started in it).
    code = textwrap.dedent("""
        import gc, weakref
        from models.memory import freeze_startup_objects

        class Node:
            pass

        assert gc.get_freeze_count() == 0
        assert freeze_startup_objects() is True
        frozen = gc.get_freeze_count()
        assert frozen > 1000, frozen          # the interpreter's and the imports' objects
        assert freeze_startup_objects() is False
        assert gc.get_freeze_count() == frozen  # a second call pins nothing more

        a, b = Node(), Node()
        a.other, b.other = b, a               # a cycle made after the freeze
        probe = weakref.ref(a)
        del a, b
        gc.collect()
        assert probe() is None                # collected: only startup objects are frozen
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
