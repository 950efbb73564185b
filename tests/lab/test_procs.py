from __future__ import annotations

import psutil
import pytest

from duplex.lab.errors import ExperimentError
from duplex.lab.procs import Children


def test_children_end_every_process_they_started() -> None:
    with Children() as children:
        server = children.echo_server("prefork", "--workers", "2")
        pids = server.all_pids()
        assert len(pids) == 3  # supervisor and two workers
        holder, ready = children.helper("duplex.lab.holder", "--max-seconds", "30")
        assert ready["event"] == "ready"
        assert holder.request({"op": "stats"}, 5)["held"] == 0
        pids.append(holder.pid)
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_helper_that_does_not_answer_is_reported() -> None:
    with Children() as children:
        holder, _ = children.helper("duplex.lab.holder", "--max-seconds", "30")
        with pytest.raises(ExperimentError, match="did not answer"):
            holder.read(0.2)
        holder.send({"op": "nonsense"})
        with pytest.raises(ExperimentError, match="unknown op"):
            holder.read(5)
