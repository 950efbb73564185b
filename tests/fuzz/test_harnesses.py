"""The atheris harnesses' targets, over random inputs: CI exercises them without atheris.

``fuzzing/fuzz_frames.py`` and ``fuzzing/fuzz_messages.py`` are libFuzzer targets
(``make fuzz`` runs them under atheris for minutes); here the same
``test_one_input`` functions get a bounded number of hypothesis inputs: random
bytes, and valid messages of every type (:mod:`duplex.testing.strategies`) with
bytes flipped, cut or appended, which reach far deeper than random bytes do.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duplex.testing.strategies import any_message
from duplex.wire import messages as m

FUZZING = Path(__file__).resolve().parents[2] / "fuzzing"
EXAMPLES = 3000 if os.environ.get("DUPLEX_FUZZ") == "long" else 300
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def harness(name: str) -> Callable[[bytes], None]:
    """``test_one_input`` of ``fuzzing/<name>.py``, loaded by path (no atheris needed)."""
    spec = importlib.util.spec_from_file_location(f"fuzzing_{name}", FUZZING / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    target: Callable[[bytes], None] = module.test_one_input
    return target


frames_target = harness("fuzz_frames")
messages_target = harness("fuzz_messages")


@st.composite
def damaged_frames(draw: st.DrawFn) -> bytes:
    """Valid frames of random messages, then damaged: a byte flipped, a cut, junk added."""
    stream = bytearray(b"".join(m.encode(x) for x in draw(st.lists(any_message, max_size=4))))
    for _ in range(draw(st.integers(0, 3))):
        if stream:
            i = draw(st.integers(0, len(stream) - 1))
            stream[i] ^= draw(st.integers(1, 255))
    if stream and draw(st.booleans()):
        del stream[draw(st.integers(0, len(stream) - 1)) :]
    return bytes(stream) + draw(st.binary(max_size=8))


@SETTINGS
@given(st.binary(max_size=2048) | damaged_frames().map(lambda s: b"\x40\x07" + s))
def test_frame_decoder_harness(data: bytes) -> None:
    frames_target(data)


@SETTINGS
@given(
    st.integers(0, 4),
    st.binary(max_size=2048) | damaged_frames() | any_message.map(m.encode_body),
)
def test_message_decoder_and_sessions_harness(target: int, data: bytes) -> None:
    # A valid body (or damaged frames) as one framed input, or as raw stream bytes.
    messages_target(bytes([target]) + b"\x00" + data)
    messages_target(bytes([target]) + b"\x01" + data)
