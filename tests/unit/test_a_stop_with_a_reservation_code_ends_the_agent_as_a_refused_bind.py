"""What a Stop from the edge ends the agent with (relay/agent/client.py ``stop_error``):
RLY_207 and RLY_208 (a reservation made since the bind refuses its only endpoint now) are
an EndpointRefused, a BindError, so the agent exits 4 as its refused bind would; any
other bind code, like any other code, a FatalAgentError that is no BindError; an
authentication code its own error (exit 3)."""

from __future__ import annotations

import pytest

from relay.agent.client import EndpointRefused, FatalAgentError, stop_error
from relay.errors import AuthError, BindError
from relay.protocol import Stop


@pytest.mark.parametrize("code", ["RLY_207", "RLY_208"])
def test_a_reservation_code_is_an_endpoint_refused(code: str) -> None:
    error = stop_error(Stop(code, "refused now"))
    assert isinstance(error, EndpointRefused) and isinstance(error, BindError)
    assert error.code == code and str(error) == "refused now"


@pytest.mark.parametrize("code", ["RLY_201", "RLY_202", "RLY_203", "RLY_204", "RLY_205", "RLY_206"])
def test_another_bind_code_is_fatal_but_no_refused_endpoint(code: str) -> None:
    error = stop_error(Stop(code, "stopped"))
    assert type(error) is FatalAgentError, error
    assert not isinstance(error, BindError) and error.code == code


def test_an_auth_code_is_its_own_error_and_others_are_fatal() -> None:
    assert isinstance(stop_error(Stop("RLY_102", "revoked")), AuthError)
    other = stop_error(Stop("RLY_999", "anything"))
    assert type(other) is FatalAgentError and other.code == "RLY_999"
