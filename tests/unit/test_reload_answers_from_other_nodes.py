"""A reload's answers come off the wire from other nodes (relay/edge/control_view.py):
whatever shape they have, the API gets a well-formed view, and anything that is not an
answer counts as no answer."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from relay.control.api import ReloadView
from relay.edge.control_view import _reload_view

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def test_a_full_answer_is_shown_as_given() -> None:
    outcome = {"applied": ["http_idle_timeout"], "kept": ["region"], "refused": None}
    assert _reload_view("b", outcome) == ReloadView(
        "b", answered=True, applied=("http_idle_timeout",), kept=("region",), refused=None
    )


def test_a_refusal_keeps_its_reason() -> None:
    view = _reload_view("c", {"refused": "RLY_001 bad file"})
    assert view == ReloadView("c", answered=True, refused="RLY_001 bad file")


def test_no_answer_or_not_an_object_is_no_answer() -> None:
    outcomes: list[Any] = [None, [], "ok", 1, True]
    for outcome in outcomes:
        assert _reload_view("x", outcome) == ReloadView("x", answered=False)


@given(JSON)
def test_any_answer_gives_a_well_formed_view(outcome: Any) -> None:
    view = _reload_view("n", outcome)
    assert view.answered == isinstance(outcome, dict)
    assert all(isinstance(v, str) for v in view.applied + view.kept)
    assert view.refused is None or isinstance(view.refused, str)
    if isinstance(outcome, dict) and isinstance(outcome.get("applied"), list):
        assert list(view.applied) == [v for v in outcome["applied"] if isinstance(v, str)]
