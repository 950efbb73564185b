"""A stop signal reaches an idle server even when it lands outside ``select()``.

Python runs signal handlers between bytecodes of the main thread. A signal that the
kernel hands to the process just before the main thread enters ``epoll_wait()`` (or
to another thread) only sets a flag; without a wakeup fd the handler then waits for
the next event, which on an idle server never comes. CI caught the pool model doing
exactly that, about once in twenty loaded runs. These tests make the bad case certain
instead of rare: the main thread blocks SIGTERM, so the kernel must deliver it to a
bystander thread, and the main thread's wait is never interrupted.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from duplex.config import ListenerConfig
from duplex.server.base import DriverOptions, Waker
from duplex.server.runner import build_driver, run_driver
from duplex.services.echo import make_echo_handler

IN_PROCESS_MODELS = ["iterative", "thread", "pool", "select", "epoll", "asyncio", "uvloop"]


@pytest.fixture
def bystander() -> Iterator[None]:
    """A thread that takes SIGTERM for the process while the main thread blocks it."""
    done = threading.Event()
    thread = threading.Thread(target=done.wait, name="bystander")
    thread.start()  # before the mask: it does not block SIGTERM
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        done.set()
        thread.join()


@pytest.mark.usefixtures("bystander")
@pytest.mark.parametrize("model", IN_PROCESS_MODELS)
def test_sigterm_taken_by_another_thread_stops_an_idle_server(model: str) -> None:
    if model == "uvloop":
        pytest.importorskip("uvloop", reason="the uvloop extra is not installed")
    driver, _info = build_driver(
        model,
        ListenerConfig(host="127.0.0.1", port=0),
        make_echo_handler,
        options=DriverOptions(workers=2, grace=0.5),
    )
    hung = threading.Event()

    def signal_then_watch() -> None:
        time.sleep(0.3)  # the main thread is in its wait by now
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while not driver.stopping and time.monotonic() < deadline:
            time.sleep(0.05)
        if not driver.stopping:
            hung.set()  # the handler never ran: stop it ourselves so the test ends
            driver.shutdown()

    watcher = threading.Thread(target=signal_then_watch)
    watcher.start()
    started = time.monotonic()
    try:
        assert run_driver(driver) == 0
    finally:
        watcher.join()
    took = time.monotonic() - started
    assert not hung.is_set(), f"{model}: SIGTERM was not handled for 5 s"
    assert took < 3.0, f"{model}: took {took:.1f} s to stop"


def test_waker_takes_the_wakeup_fd_and_gives_it_back() -> None:
    caught: list[int] = []
    previous_handler = signal.signal(signal.SIGUSR1, lambda signum, frame: caught.append(signum))
    before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before)
    waker = Waker()
    try:
        waker.catch_signals()
        signal.raise_signal(signal.SIGUSR1)
        readable, _, _ = select.select([waker.fileno()], [], [], 0)
        assert readable == [waker.fileno()], "the signal did not write to the waker"
        assert os.read(waker.fileno(), 16) == bytes([signal.SIGUSR1])
        assert caught == [signal.SIGUSR1]
    finally:
        waker.close()
        signal.signal(signal.SIGUSR1, previous_handler)
    after = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(after)
    assert after == before, "close() left the process's wakeup fd pointing at a closed pipe"
