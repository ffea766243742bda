"""Edge config: file values, flag overrides, and unknown keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import load_edge_config
from relay.edge.ports import PortRange
from relay.errors import ConfigError


def test_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("listen: 127.0.0.1:7100\ntcp-ports: 30000-30010\nmux:\n  max_streams: 10\n")
    config = load_edge_config(path, {"listen": "127.0.0.1:7200", "region": None})
    assert config.listen_address() == ("127.0.0.1", 7200)
    assert config.tcp_ports == PortRange(30000, 30010)
    assert config.mux.max_streams == 10
    assert config.region == "local"


@pytest.mark.parametrize(
    "text", ["lisen: 1.2.3.4:5\n", "mux:\n  max_stream: 3\n", "- a\n- b\n", "listen: nope\n"]
)
def test_mistakes_are_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_edge_config(path, {})
