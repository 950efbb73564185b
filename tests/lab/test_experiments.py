"""Each experiment at small scale: the verdict must follow from what was measured."""

from __future__ import annotations

import psutil

from duplex.lab import threads
from duplex.lab.registry import get_experiment, names
from duplex.lab.result import Result, Verdict
from duplex.server.listener import read_somaxconn

LINES: list[str] = []


def _children() -> set[int]:
    # multiprocessing's resource tracker (started by duplex.bench's spawned generator)
    # lives as long as this process by design; it is not the experiment's.
    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(proc.cmdline()):
                found.add(proc.pid)
        except psutil.Error:
            pass
    return found


def _run(name: str) -> Result:
    experiment = get_experiment(name)
    before = _children()
    result = experiment.run(experiment.quick, LINES.append)
    assert _children() <= before, "the experiment left processes behind"
    assert result.name == name and result.claim and result.method and result.reason
    return result


def test_every_claim_of_the_issue_has_an_experiment() -> None:
    assert names() == [
        "iterative",
        "backlog",
        "ephemeral",
        "one-port",
        "select-limit",
        "threads-vs-cpus",
        "socket-pair",
        "fork-refcount",
        "lifecycle",
    ]


def test_backlog_matches_min_backlog_somaxconn_plus_the_measured_extra() -> None:
    result = _run("backlog")
    somaxconn = read_somaxconn()
    assert somaxconn is not None
    rows = result.series["rows"]
    extra = result.numbers["extra_measured"]
    assert extra is not None  # one extra for every backlog, whatever it is
    for row in rows:
        assert row["enforced"] == min(row["backlog"], somaxconn)  # read back via sock_diag
        assert row["completed"] == min(row["backlog"], somaxconn) + extra
        assert row["client_established"] == row["completed"]
        assert row["client_syn_sent"] == row["offered"] - row["completed"]
    biggest = max(r["completed"] for r in rows)
    assert result.verdict is (Verdict.FOLKLORE if biggest > 6 else Verdict.HOLDS)


def test_lifecycle_states_follow_tcp() -> None:
    result = _run("lifecycle")
    steps = {s["call"].split("  ")[0]: s for s in result.series["steps"]}
    assert steps["listen(listenfd, 8)"]["listener"].startswith("LISTEN")
    assert all(s["ok"] for s in result.series["steps"]) is (result.verdict is Verdict.HOLDS)
    assert result.verdict is Verdict.HOLDS
    assert result.numbers["time_wait_when_client_closed_first"] == "client"
    assert result.numbers["time_wait_when_server_closed_first"] == "server"


def test_socket_pair_views_agree() -> None:
    result = _run("socket-pair")
    rows = result.series["rows"]
    agree = all(r["mirrored"] and r["owners_match"] for r in rows)
    assert result.verdict is (Verdict.HOLDS if agree else Verdict.FOLKLORE)
    assert result.verdict is Verdict.HOLDS
    assert len({r["client_sockname"] for r in rows}) == len(rows)
    assert len({r["client_peername"] for r in rows}) == 1


def test_fork_refcount() -> None:
    result = _run("fork-refcount")
    n = result.numbers
    expected = (
        n["eof_after_ms_correct"] is not None
        and n["eof_after_ms_broken"] is None
        and n["broken_parent_connected_fds"] >= 1
        and bool(result.series["rows"][1]["server_end_owners"])
    )
    assert result.verdict is (Verdict.HOLDS if expected else Verdict.FOLKLORE)
    assert result.verdict is Verdict.HOLDS
    assert n["correct_parent_connected_fds"] == 0
    assert n["broken_server_end_after_client_close"] == "CLOSE_WAIT"


def test_iterative_second_client_waits() -> None:
    result = _run("iterative")
    rows = {r["model"]: r for r in result.series["rows"]}
    hold = result.series["hold_ms"]
    it = rows.pop("iterative")
    waits_for_a = it["served_after_a_closed"] and it["wait_ms"] >= 0.9 * hold
    others_fast = all(r["wait_ms"] < 0.5 * hold for r in rows.values())
    assert result.verdict is (Verdict.HOLDS if waits_for_a and others_fast else Verdict.FOLKLORE)
    assert result.verdict is Verdict.HOLDS


def test_select_limit_is_fd_setsize() -> None:
    result = _run("select-limit")
    n = result.numbers
    connections = result.params["connections"]
    assert n["epoll_served"] == connections > 1024
    assert n["select_served"] + n["select_refused"] == connections
    assert n["select_served"] < 1024 and n["select_error_at_fd"] >= 1024
    assert result.verdict is Verdict.FOLKLORE


def test_ephemeral_ports_run_out_per_destination() -> None:
    result = _run("ephemeral")
    n = result.numbers
    assert n["error_at_the_end"] == "EADDRNOTAVAIL"
    # Listeners that other programs open during the run take ports of the 64-port
    # window too (the expected count only subtracts those there at the start).
    assert n["expected_connections"] // 2 <= n["connections_to_one_destination"] <= 64
    assert n["processes"] >= 2  # the quick run spreads over processes too
    reused = n["second_destination_on_reused_ports"] == n["second_destination_connections"] > 0
    assert result.verdict is (Verdict.HOLDS if reused else Verdict.DEPENDS)
    assert result.verdict is Verdict.HOLDS


def test_one_port_holds_many_connections() -> None:
    result = _run("one-port")
    n = result.numbers
    assert n["accepted_by_the_server"] == n["connections_opened"] == 400
    assert n["client_source_addresses"] == 2
    assert n["echo_round_trips_ok"] == "10/10"
    assert n["connections_per_worker_min"] + n["connections_per_worker_max"] <= 400
    assert result.verdict is Verdict.FOLKLORE  # > 1 connection on one port
    assert "did not try to cross 65,535" in result.reason
    assert n["kernel_tcp_slab_per_connection_bytes"] > 0


def test_threads_vs_cpus_verdict_follows_the_curves() -> None:
    result = _run("threads-vs-cpus")
    curves = {w: [tuple(p) for p in pts] for w, pts in result.series["curves"].items()}
    cpus = result.series["cpus"]
    gains = {w: threads._gain(pts, cpus) for w, pts in curves.items()}  # type: ignore[arg-type]
    assert gains["wait"] >= threads.GAIN  # a waiting thread leaves its CPU to the others
    share_only, _ = threads._share_only(curves["cpu"], cpus)  # type: ignore[arg-type]
    if gains["cpu"] < threads.GAIN or share_only:
        assert result.verdict is Verdict.DEPENDS
        assert result.depends_on.startswith("whether the handler computes or waits")
    else:
        assert result.verdict is Verdict.FOLKLORE
