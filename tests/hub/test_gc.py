"""The hub process makes the cyclic garbage collector cheap (see ``tune_gc``)."""

from __future__ import annotations

import json
import subprocess
import sys

from duplex.hub.run import GC_THRESHOLD


def test_tune_gc_freezes_start_up_and_raises_the_young_threshold() -> None:
    # In a child process: the setting is process-wide, and pytest's must stay as it is.
    code = (
        "import gc, json; from duplex.hub.run import tune_gc; before = gc.get_threshold(); "
        "tune_gc(); print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, frozen = json.loads(out.stdout)
    assert after == [GC_THRESHOLD, before[1], before[2]]
    assert frozen > 1000, "start-up objects were not frozen out of the collections"
