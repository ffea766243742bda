"""The control plane's REST API (FastAPI): see docs/api.md.

The package's own import is light on purpose: the edge imports the interfaces in
``plane.py`` whether it serves the API or not, and the CLI's commands import nothing of
FastAPI until one of them needs it (FastAPI and pydantic take half a second to load).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.control.api.plane import (
    CertificateView,
    ControlPlane,
    EndpointView,
    FailureGuard,
    LiveView,
    ReloadView,
    SessionView,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "CertificateView",
    "ControlPlane",
    "EndpointView",
    "FailureGuard",
    "LiveView",
    "ReloadView",
    "SessionView",
    "create_app",
]


def create_app(plane: ControlPlane) -> FastAPI:
    """The API's ASGI application over ``plane`` (relay/control/api/app.py)."""
    from relay.control.api.app import create_app as build

    return build(plane)
