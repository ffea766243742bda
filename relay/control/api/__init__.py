"""The control plane's REST API (FastAPI): see docs/api.md."""

from relay.control.api.app import OPENAPI_PATH, PREFIX, create_app
from relay.control.api.plane import (
    CertificateView,
    ControlPlane,
    EndpointView,
    FailureGuard,
    LiveView,
    SessionView,
)

__all__ = [
    "OPENAPI_PATH",
    "PREFIX",
    "CertificateView",
    "ControlPlane",
    "EndpointView",
    "FailureGuard",
    "LiveView",
    "SessionView",
    "create_app",
]
