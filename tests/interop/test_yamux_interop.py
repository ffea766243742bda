"""relay_native's yamux session against an independent implementation: hashicorp/yamux.

Each test starts tests/interop/goyamux (hashicorp/yamux v0.1.2, pinned in go.mod) as a
subprocess on 127.0.0.1, runs a relay_native.Session over the TCP connection with
yamux_driver.Driver and checks both ends: Python checks what it receives (SHA-256,
lengths, FIN/RST), goyamux checks what it receives and reports its verdict on a
control stream ("OK") and by its exit status.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
import relay_native as rn

from .yamux_driver import Driver, Stream, split_duplex_reply, stream_header

KiB = 1024
MiB = 1024 * KiB
WINDOW = 256 * KiB  # the spec's initial stream window, also hashicorp's default

StartPeer = Callable[..., Any]


def connect(
    go_peer: StartPeer,
    scenario: str,
    *,
    python_client: bool,
    go_listens: bool,
    session_kw: dict[str, int] | None = None,
    **flags: Any,
) -> tuple[Any, Driver]:
    peer, sock = go_peer(
        scenario, go_role="server" if python_client else "client", go_listens=go_listens, **flags
    )
    kw = session_kw or {}
    session = rn.Session(client=python_client, **kw)
    drv = Driver(sock, session, high_water=kw.get("pending_high_water", 1 * MiB))
    drv.describe_peer = peer.describe
    return peer, drv


def finish(peer: Any, drv: Driver, *, timeout: float = 30) -> None:
    """Wait for goyamux's verdict, check our side saw no fault, close, and reap it."""
    drv.run_until(lambda: drv.verdict is not None, timeout=timeout, what="goyamux verdict")
    assert drv.verdict == b"OK", f"goyamux verdict {drv.verdict!r}\n{peer.describe()}"
    stats = drv.session.stats()
    assert stats["protocol_errors"] == 0, stats
    for st in drv.streams.values():
        assert st.data_after_fin == 0, f"stream {st.sid}: {st.data_after_fin} bytes after FIN/RST"
    drv.close()
    peer.wait_ok()


def parity_ok(sid: int, client: bool) -> bool:
    return sid % 2 == (1 if client else 0)


def check_duplex(st: Stream, sent: bytes, q_size: int) -> None:
    assert st.fin, f"stream {st.sid}: no FIN"
    reply = split_duplex_reply(st, q_size)
    assert reply["q_ok"], f"stream {st.sid}: SHA-256 of the {q_size} bytes from goyamux differs"
    assert reply["peer_len_of_ours"] == len(sent), (st.sid, reply, len(sent))
    assert reply["peer_sha_of_ours"] == hashlib.sha256(sent).hexdigest(), (
        f"stream {st.sid}: goyamux got other bytes than the {len(sent)} we sent"
    )


# ---- 1. streams from both sides ------------------------------------------------------


@pytest.mark.parametrize(
    ("python_client", "go_listens"),
    [(True, True), (True, False), (False, True), (False, False)],
    ids=["pyclient-golisten", "pyclient-pylisten", "pyserver-golisten", "pyserver-pylisten"],
)
def test_streams_from_both_sides(go_peer: StartPeer, python_client: bool, go_listens: bool) -> None:
    # goyamux opens its n streams from n goroutines at once, as Go programs do: the SYNs
    # of hashicorp's concurrent OpenStream calls can reach us out of id order.
    n = 16
    peer, drv = connect(go_peer, "bidi", python_client=python_client, go_listens=go_listens, n=n)
    rnd = random.Random(1)
    mine: dict[int, bytes] = {}
    for _ in range(n):
        data = rnd.randbytes(rnd.randrange(0, 300 * KiB))
        st = drv.open(stream_header("ECHO", len(data)), data, fin=True)
        mine[st.sid] = data
        assert parity_ok(st.sid, python_client), (
            f"we opened stream {st.sid} as client={python_client}"
        )

    def done() -> bool:
        peer_streams = [s for s in drv.opened_by_peer if s != drv.ctrl_sid]
        return (
            all(drv.finished(s) for s in mine)
            and len(peer_streams) == n
            and all(drv.finished(s) for s in peer_streams)
        )

    drv.run_until(done, timeout=30, what="all streams echoed and closed")
    # No st.acked check here: hashicorp v0.1.2 sends no ACK at all for a stream whose
    # FIN arrives before AcceptStream (its state is then RemoteClose, not SYNReceived).
    for sid, data in mine.items():
        st = drv.streams[sid]
        assert len(st.recv) == len(data) and st.recv == data, f"stream {sid}: echo differs"
    for sid in drv.opened_by_peer:
        assert parity_ok(sid, not python_client), f"goyamux opened stream {sid}"
    assert len(set(drv.opened_by_peer)) == len(drv.opened_by_peer), "a peer stream id repeated"
    finish(peer, drv)
    assert drv.session.stream_count == 0


# ---- 2. 100 concurrent streams, random payloads, both directions ----------------------


@pytest.mark.slow
def test_hundred_concurrent_streams(go_peer: StartPeer) -> None:
    n = 100
    peer, drv = connect(go_peer, "concurrent", python_client=True, go_listens=True, n=n)
    rnd = random.Random(2)

    def size() -> int:
        r = rnd.random()
        if r < 0.1:
            return rnd.choice([0, 1, 16 * KiB - 1, 16 * KiB + 1])
        if r < 0.5:
            return rnd.randrange(1, 64 * KiB)
        if r < 0.8:
            return rnd.randrange(64 * KiB, WINDOW + 64 * KiB)
        return rnd.randrange(WINDOW + 1, 3 * MiB)  # more than a window

    plan: dict[int, tuple[bytes, int]] = {}
    for _ in range(n):
        p, q = rnd.randbytes(size()), size()
        st = drv.open(stream_header("DPLX", q), p, fin=True)
        plan[st.sid] = (p, q)
    big = sum(1 for p, q in plan.values() if len(p) > WINDOW or q > WINDOW)
    assert big >= 20, "the plan should have many streams larger than a window"
    t0 = time.monotonic()
    drv.run_until(
        lambda: all(drv.finished(s) for s in plan),
        timeout=60,
        what="100 duplex streams to complete",
    )
    elapsed = time.monotonic() - t0
    for sid, (p, q) in plan.items():
        check_duplex(drv.streams[sid], p, q)
    total = sum(len(p) + q for p, q in plan.values())
    print(f"100 streams, {total / MiB:.1f} MiB both ways in {elapsed:.2f}s")
    finish(peer, drv)


# ---- 3. half-close --------------------------------------------------------------------


def test_half_close(go_peer: StartPeer) -> None:
    # goyamux opens an AFTR stream too: it sends 700 KiB, FINs, and then reads our
    # answer (a read after a local Close, which old hashicorp versions got wrong).
    peer, drv = connect(go_peer, "halfclose", python_client=False, go_listens=False, n=1)
    data = random.Random(3).randbytes(600 * KiB)
    st = drv.open(stream_header("AFTR", len(data)), data, fin=True)
    drv.run_until(lambda: st.fin_sent, timeout=10, what="our FIN to be queued")
    drv.run_until(lambda: drv.finished(st.sid), timeout=30, what="our AFTR stream to close")
    assert st.fin
    assert len(st.recv) == len(data), (
        f"got {len(st.recv)} bytes back after our FIN, want {len(data)}"
    )
    assert hashlib.sha256(st.recv).digest() == hashlib.sha256(data).digest()
    finish(peer, drv)
    assert len(drv.opened_by_peer) == 2, drv.opened_by_peer  # control + AFTR
    theirs = drv.streams[next(s for s in drv.opened_by_peer if s != drv.ctrl_sid)]
    assert theirs.op == "AFTR" and theirs.fin and theirs.answered_fin
    assert drv.finished(theirs.sid), "goyamux's AFTR stream was not closed both ways"


# ---- 4. reset mid-transfer from each side ----------------------------------------------


def test_reset_mid_transfer(go_peer: StartPeer) -> None:
    # hashicorp/yamux v0.1.2 has no public Stream.Reset: its only way to reset a live
    # stream is the StreamCloseTimeout after a Close (FIN) the peer does not answer.
    peer, drv = connect(
        go_peer, "reset", python_client=True, go_listens=False, n=3, close_timeout="500ms"
    )
    rnd = random.Random(4)
    flood = rnd.randbytes(8 * MiB)
    ours = drv.open(stream_header("RSTR"), flood)  # we reset it
    theirs = drv.open(stream_header("CLTO", 300 * KiB), flood)  # goyamux resets it
    p = rnd.randbytes(1 * MiB + 7)
    bystander = drv.open(stream_header("DPLX", 2 * MiB), p, fin=True)

    drv.run_until(
        lambda: len(ours.recv) >= 300 * KiB and ours.sent >= 300 * KiB,
        timeout=20,
        what="traffic both ways on the stream we reset",
    )
    # goyamux ACKs a stream when its side accepts it, each in its own goroutine: the one
    # carrying traffic is acked, the other may be a moment behind (still before any FIN).
    drv.run_until(
        lambda: ours.acked and theirs.acked,
        timeout=10,
        what="goyamux's ACK of both streams, before any FIN",
    )
    drv.reset(ours.sid)
    with pytest.raises(rn.UnknownStream):
        drv.session.send(ours.sid, b"x")

    drv.run_until(lambda: theirs.reset, timeout=20, what="goyamux's RST (close timeout)")
    assert theirs.fin, "goyamux's FIN should precede its RST"
    assert theirs.sent > 300 * KiB
    with pytest.raises(rn.UnknownStream):
        drv.session.send(theirs.sid, b"x")

    drv.run_until(lambda: drv.finished(bystander.sid), timeout=30, what="the unaffected stream")
    check_duplex(bystander, p, 2 * MiB)
    assert not ours.reset, "the stream we reset was reported as reset by the peer"
    finish(peer, drv)
    stats = drv.session.stats()
    assert stats["streams_reset_local"] >= 1 and stats["streams_reset_remote"] >= 1, stats


# ---- 5. slow reader: window exhausted both ways ---------------------------------------


@pytest.mark.slow
def test_slow_reader_window(go_peer: StartPeer) -> None:
    peer, drv = connect(go_peer, "slow", python_client=False, go_listens=True, n=2)
    pause_s, size = 1.5, 4 * MiB

    # goyamux -> us: we do not consume; goyamux's Write must block (it checks that
    # the write took at least 1000 ms) and we must never get more than the window.
    sid = drv.session.open_stream()
    drv.session.set_read_paused(sid, True)
    st = drv.streams[sid] = Stream(sid, local=True)
    drv.write(sid, stream_header("DPLX", size, 1000, 0), fin=True)
    drv.run_for(pause_s)
    got_paused = len(st.recv)
    assert 0 < got_paused <= WINDOW, f"received {got_paused} unconsumed bytes, window {WINDOW}"
    assert not st.fin
    drv.session.set_read_paused(sid, False)
    drv.run_until(lambda: drv.finished(st.sid), timeout=30, what="the paused stream to complete")
    check_duplex(st, b"", size)

    # us -> goyamux: goyamux reads nothing for 1.5 s; our backlog holds the rest.
    payload = random.Random(5).randbytes(size)
    sid2 = drv.session.open_stream()
    st2 = drv.streams[sid2] = Stream(sid2, local=True)
    before = drv.session.stats()
    backlog = drv.session.send(sid2, stream_header("DPLX", 0, 0, 1500) + payload)
    drv.session.close_stream(sid2)  # FIN goes out after the backlog
    st2.fin_sent = True
    assert backlog >= size + 16 - WINDOW, f"send() returned backlog {backlog}"
    drv.run_for(1.0)
    mid = drv.session.stats()
    sent_while_stalled = mid["bytes_out"] - before["bytes_out"]
    assert sent_while_stalled <= WINDOW, (
        f"{sent_while_stalled} payload bytes beyond a {WINDOW} window"
    )
    assert mid["window_stalls"] > before["window_stalls"], (before, mid)
    assert st2.writable_events == 0, "EVENT_WRITABLE while the peer was not reading"
    drv.run_until(lambda: drv.finished(st2.sid), timeout=30, what="goyamux to read everything")
    check_duplex(st2, payload, 0)
    assert st2.writable_events >= 1, "no EVENT_WRITABLE after the backlog drained"
    finish(peer, drv)


# ---- 6. ping both ways ------------------------------------------------------------------


def test_ping(go_peer: StartPeer) -> None:
    # goyamux pings 3 times, then 3 rounds of 4 pings in flight at once, and keeps a
    # 100 ms keepalive; each ping fails after 3 s without its answer. We keep a 200 ms one
    # with a 500 ms timeout, so an unanswered ping fails tick().
    peer, drv = connect(
        go_peer,
        "ping",
        python_client=True,
        go_listens=True,
        keepalive="100ms",
        write_timeout="3s",
        session_kw={"keepalive_interval_ms": 200, "keepalive_timeout_ms": 500},
    )
    for _ in range(3):
        drv.session.ping()
    drv.run_until(lambda: len(drv.pongs) >= 3, timeout=10, what="3 pongs")
    drv.run_until(lambda: drv.verdict is not None, timeout=20, what="goyamux verdict")
    drv.run_for(0.6)  # our keepalive pings go on being answered
    assert drv.session.rtt_us > 0
    stats = drv.session.stats()
    assert stats["pings_in"] >= 6, stats  # 3 explicit + keepalives every 100 ms for 0.8 s
    finish(peer, drv)


# ---- 7. GoAway ---------------------------------------------------------------------------


def test_goaway_from_python(go_peer: StartPeer) -> None:
    peer, drv = connect(go_peer, "goaway_local", python_client=True, go_listens=True, n=1)
    drv.run_until(
        lambda: len(drv.opened_by_peer) == 2 and all(drv.streams[s].op for s in drv.opened_by_peer),
        timeout=10,
        what="goyamux's control and ECHO streams",
    )
    st = drv.open(stream_header("GAWL"))
    drv.session.go_away(rn.GOAWAY_NORMAL)
    assert drv.session.local_went_away
    data = random.Random(7).randbytes(300 * KiB)
    drv.write(st.sid, b"AFTER" + data, fin=True)  # goyamux checks OpenStream fails now
    with pytest.raises(rn.SessionClosed):
        drv.session.open_stream()
    drv.run_until(lambda: drv.finished(st.sid), timeout=20, what="echo on a stream after GoAway")
    assert st.recv == data
    finish(peer, drv)
    assert drv.goaways == []


def test_goaway_from_go(go_peer: StartPeer) -> None:
    peer, drv = connect(go_peer, "goaway_remote", python_client=False, go_listens=False, n=1)
    st = drv.open(stream_header("GAWR"))
    drv.run_until(lambda: len(st.recv) >= 5, timeout=10, what="goyamux's marker after its GoAway")
    assert bytes(st.recv[:5]) == b"AFTER"
    del st.recv[:5]
    assert drv.goaways == [rn.GOAWAY_NORMAL], "GoAway must be reported before later data"
    assert drv.session.remote_went_away
    with pytest.raises(rn.SessionClosed):
        drv.session.open_stream()
    # existing streams go on
    data = random.Random(8).randbytes(300 * KiB)
    drv.write(st.sid, data, fin=True)
    drv.run_until(lambda: drv.finished(st.sid), timeout=20, what="echo after the peer's GoAway")
    assert st.recv == data
    drv.session.go_away(rn.GOAWAY_NORMAL)
    drv.run_until(lambda: drv.verdict is not None, timeout=20, what="goyamux verdict")
    drv.run_until(
        lambda: all(drv.finished(s) for s in drv.streams), timeout=10, what="all streams closed"
    )
    assert drv.session.stream_count == 0
    assert drv.session.is_closed, "GoAway went both ways and no stream is left"
    finish(peer, drv)


# ---- relay's window settings: 64 MiB bulk both ways on one stream ----------------------------


@pytest.mark.slow
def test_bulk_64mib_large_windows(go_peer: StartPeer) -> None:
    size = 64 * MiB
    peer, drv = connect(
        go_peer,
        "bulk",
        python_client=True,
        go_listens=True,
        n=1,
        window=16 * MiB,
        session_kw={"initial_window": 256 * KiB, "max_window": 16 * MiB},
    )
    payload = random.Random(9).randbytes(size)
    t0 = time.monotonic()
    st = drv.open(stream_header("DPLX", size), payload, fin=True)
    max_recv_window = 0

    def done() -> bool:
        nonlocal max_recv_window
        if not st.fin:
            max_recv_window = max(max_recv_window, drv.session.stream_window(st.sid)[0])
        return drv.finished(st.sid)

    drv.run_until(done, timeout=60, what="64 MiB each way")
    elapsed = time.monotonic() - t0
    check_duplex(st, payload, size)
    stats = drv.session.stats()
    print(
        f"bulk: 2x64 MiB in {elapsed:.2f}s; window_grows={stats['window_grows']} "
        f"max receive window seen={max_recv_window} "
        f"window_updates_out={stats['window_updates_out']} "
        f"window_updates_in={stats['window_updates_in']}"
    )
    finish(peer, drv)
