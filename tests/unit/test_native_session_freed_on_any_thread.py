"""A native session is freed wherever the garbage collector happens to run: an executor
thread (the ACME worker) collecting a dead link's reference cycle must not leak it with
PyO3's 'is unsendable, but is being dropped on another thread' traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

COLLECT_ON_A_WORKER_THREAD = textwrap.dedent(
    """
    import asyncio, gc, threading
    import relay_native
    from relay.mux import MuxConfig

    class Handler:  # a link's handler refers back to it: a cycle only gc can free
        def link_made(self, link): self.link = link

    loop = asyncio.new_event_loop()
    gc.disable()
    for _ in range(8):
        handler = Handler()
        link = MuxConfig().new_link(handler, loop, client=False)
        handler.link = link
        plain = relay_native.Session(client=True)
        box = {"session": plain}
        box["self"] = box
    del handler, link, plain, box
    collected = []
    worker = threading.Thread(target=lambda: collected.append(gc.collect()))
    worker.start()
    worker.join()
    assert collected[0] > 0, collected
    print("collected", collected[0])
    """
)


def test_a_session_in_a_cycle_collected_on_another_thread_is_dropped_quietly() -> None:
    done = subprocess.run(
        [sys.executable, "-c", COLLECT_ON_A_WORKER_THREAD],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "collected" in done.stdout
    assert "unsendable" not in done.stderr, done.stderr
    assert done.stderr == ""
