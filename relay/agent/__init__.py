"""The agent: dials the edge, authenticates, binds endpoints, dials upstreams per visitor."""
