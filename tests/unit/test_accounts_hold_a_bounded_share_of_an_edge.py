"""AccountLimits (relay/edge/account_limits.py): whatever sessions and binds come and go,
in any order, no account ever holds more than its limits, every other account is judged
on its own counts, and what is released is counted out exactly once."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.edge.account_limits import SAY_REFUSALS_EVERY, AccountLimits, Place
from relay.errors import ConnectError, TooManyEndpoints, TooManySessions
from tests.unit.test_refused_binds_have_a_budget_per_token import Clock

ACCOUNTS = ("acc_a", "acc_b", "acc_op")
#: An operator's account: counted, never limited.
OPERATOR = "acc_op"
KINDS = ("tcp", "http", "https", "tls")

steps = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.sampled_from(ACCOUNTS)),
        st.tuples(st.just("end"), st.integers(0, 50)),
        st.tuples(st.just("take"), st.sampled_from(ACCOUNTS), st.sampled_from(KINDS)),
        st.tuples(st.just("fail"), st.integers(0, 50)),
        st.tuples(st.just("made"), st.integers(0, 50)),
        st.tuples(st.just("release"), st.integers(0, 50)),
    ),
    min_size=10,
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(
    steps,
    st.integers(0, 4),
    st.integers(0, 6),
    st.integers(0, 3),
)
def test_no_account_ever_holds_more_than_its_limits(
    script: list[tuple], max_sessions: int, max_endpoints: int, max_ports: int
) -> None:
    limits = AccountLimits(max_sessions, max_endpoints, max_ports)
    sessions: list[str] = []  # the model: accounts of live sessions
    taken: list[Place] = []  # places not yet made or given back
    made: list[tuple[str, Place]] = []  # (endpoint id, place)
    serial = 0
    for step in script:
        if step[0] == "start":
            account = step[1]
            limited = account != OPERATOR
            full = limited and max_sessions and sessions.count(account) >= max_sessions
            if full:
                with pytest.raises(TooManySessions, match="max_sessions_per_account"):
                    limits.session_starts(account, limited=limited)
            else:
                limits.session_starts(account, limited=limited)
                sessions.append(account)
        elif step[0] == "end" and sessions:
            limits.session_ends(sessions.pop(step[1] % len(sessions)))
        elif step[0] == "take":
            account, kind = step[1], step[2]
            held = [p for p in taken if p.account == account] + [
                p for _, p in made if p.account == account
            ]
            ports = sum(p.tcp for p in held)
            limited = account != OPERATOR
            if limited and max_endpoints and len(held) >= max_endpoints:
                with pytest.raises(TooManyEndpoints, match="max_endpoints_per_account"):
                    limits.take(account, kind, limited=limited)
            elif limited and kind == "tcp" and max_ports and ports >= max_ports:
                with pytest.raises(TooManyEndpoints, match="max_tcp_ports_per_account"):
                    limits.take(account, kind, limited=limited)
            else:
                taken.append(limits.take(account, kind, limited=limited))
        elif step[0] == "fail" and taken:
            place = taken.pop(step[1] % len(taken))
            limits.give_back(place)
            limits.give_back(place)  # a second settling: no effect
        elif step[0] == "made" and taken:
            serial += 1
            place = taken.pop(step[1] % len(taken))
            limits.held(place, f"ep_{serial}")
            limits.give_back(place)  # a bind's cleanup after it was made: no effect
            made.append((f"ep_{serial}", place))
        elif step[0] == "release" and made:
            endpoint_id, _ = made.pop(step[1] % len(made))
            limits.released(endpoint_id)
            limits.released(endpoint_id)  # a second release of one endpoint: no effect
        # The counts are the model's, exactly (as dicts: a Counter's == overlooks a kept
        # zero, and an account that holds nothing must be forgotten), and within the limits.
        places = taken + [p for _, p in made]
        assert dict(limits.sessions) == dict(Counter(sessions))
        assert dict(limits.endpoints) == dict(Counter(p.account for p in places))
        assert dict(limits.tcp_ports) == dict(Counter(p.account for p in places if p.tcp))
        for account in ACCOUNTS[:2]:
            assert not max_sessions or limits.sessions[account] <= max_sessions
            assert not max_endpoints or limits.endpoints[account] <= max_endpoints
            assert not max_ports or limits.tcp_ports[account] <= max_ports


def test_an_account_that_holds_nothing_is_forgotten() -> None:
    limits = AccountLimits(2, 2, 1)
    limits.session_starts("acc_a")
    place = limits.take("acc_a", "tcp")
    limits.held(place, "ep_1")
    limits.session_ends("acc_a")
    limits.released("ep_1")
    assert (dict(limits.sessions), dict(limits.endpoints), dict(limits.tcp_ports)) == ({}, {}, {})


def test_a_lowered_limit_keeps_what_is_held_and_refuses_the_next() -> None:
    limits = AccountLimits(3, 0, 0)
    for _ in range(3):
        limits.session_starts("acc_a")
    limits.configure(1, 0, 0)
    assert limits.sessions["acc_a"] == 3
    with pytest.raises(TooManySessions):
        limits.session_starts("acc_a")
    limits.configure(0, 0, 0)  # off
    limits.session_starts("acc_a")
    limits.configure(1, 0, 0)
    limits.session_starts("acc_a", room=True)  # a reconnect whose old session is ending
    assert limits.sessions["acc_a"] == 5


def test_a_refused_session_is_one_the_agent_retries() -> None:
    """RLY_505 is a ConnectError: the agent reconnects with backoff (or tries another
    PoP), as for an edge away, instead of exiting as for a bad token."""
    limits = AccountLimits(1, 0, 0)
    limits.session_starts("acc_a")
    with pytest.raises(ConnectError) as caught:
        limits.session_starts("acc_a")
    assert caught.value.code == "RLY_505"


def test_refused_sessions_are_said_once_a_minute_per_account_with_the_count_between() -> None:
    clock = Clock()
    limits = AccountLimits(1, 0, 0, clock=clock)
    assert limits.refusal_to_say("acc_a") == 0  # the first: said
    assert [limits.refusal_to_say("acc_a") for _ in range(500)] == [None] * 500
    assert limits.refusal_to_say("acc_b") == 0  # another account: said at once
    clock.now += SAY_REFUSALS_EVERY
    assert limits.refusal_to_say("acc_a") == 500  # said, with the 500 only counted
    assert limits.refusal_to_say("acc_a") is None
    # Accounts refused long ago are forgotten, a few at each call: the set stays small.
    for i in range(50):
        limits.refusal_to_say(f"acc_{i}")
    clock.now += SAY_REFUSALS_EVERY
    for _ in range(40):
        limits.refusal_to_say("acc_a")
    assert list(limits._said) == ["acc_a"]  # the 51 others went, two a call
