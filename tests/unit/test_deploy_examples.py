"""The files an operator copies are valid as they stand: deploy/edge.yml and the agent
config in docs/running-a-pop.md load with relay's own loaders."""

from __future__ import annotations

import re
from pathlib import Path

from relay.agent.config import load_agent_config
from relay.config import load_edge_config

ROOT = Path(__file__).resolve().parents[2]
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


def test_example_edge_config_loads_as_a_pop_with_lets_encrypt() -> None:
    config = load_edge_config(ROOT / "deploy" / "edge.yml", {})
    assert config.cert_issuer == "acme"
    assert config.acme_directory == LETS_ENCRYPT
    assert config.public_host == config.base_domain == "edge.example.com"
    # The standard web ports: deploy/systemd/relay-edge.service grants the bind.
    assert config.http_listen.endswith(":80") and config.https_listen.endswith(":443")


def test_running_a_pop_agent_file_is_a_valid_agent_config(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "running-a-pop.md").read_text()
    found = re.search(r"agents/web\.yml <<'EOF'\n(.*?)\nEOF\n", page, re.S)
    assert found, "the agent config heredoc in docs/running-a-pop.md"
    text = found.group(1).replace("rly_…", "rly_abcdefghijkl_" + "A" * 43)
    text = text.replace("sha256:…", "sha256:" + "ab" * 32)
    path = tmp_path / "web.yml"
    path.write_text(text)
    loaded = load_agent_config(path, env={})
    assert [e.name for e in loaded.endpoints] == ["web"]
    assert loaded.agent.edge == ("edge.example.com", 7000)
