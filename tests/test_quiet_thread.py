"""``silent=True`` mutes the thread that loads a model by swapping ``sys.stdout`` and
``sys.stderr`` for a while; other threads print meanwhile, and must survive the swap back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PRINT_WHILE_SWAPPING = textwrap.dedent("""
    import sys, threading
    from lmql_core.lmtp.local import quiet_thread

    sys.setswitchinterval(1e-6)  # the other thread gets in between any two steps
    stop = threading.Event()

    def printer():
        while not stop.is_set():
            print("another thread", flush=True)

    thread = threading.Thread(target=printer)
    thread.start()
    for _ in range(3000):
        with quiet_thread(True):
            print("muted")
            [0 for _ in range(30)]
    stop.set()
    thread.join()
    sys.stderr.write("done\\n")
""")


def test_other_threads_print_through_the_swaps_without_crashing() -> None:
    # CPython 3.11's print() holds sys.stdout by a borrowed reference: freeing a muting stream
    # when it is swapped back crashed the printing thread. Debug allocators poison freed memory,
    # so such a use-after-free crashes here at once instead of now and then.
    env = {**os.environ, "PYTHONMALLOC": "debug", "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run([sys.executable, "-c", PRINT_WHILE_SWAPPING], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.endswith("done\n")
    assert "another thread" in done.stdout and "muted" not in done.stdout
