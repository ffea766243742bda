"""The point of presence: agent listener, agent sessions, endpoints and their listeners."""
