"""The first-run admin flow, as an operator types it, against a real edge: an admin key
made in the store, `relay login`, then accounts, credentials and API keys through the
REST API on the edge's admin listener, and the audit chain checked at the end."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.e2e.procs import RELAY, Edge


def relay(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RELAY, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.timeout(180)
def test_an_operator_bootstraps_logs_in_and_manages_accounts_through_the_api(
    tmp_path: Path,
) -> None:
    config_dir = tmp_path / "config"
    # Nothing from the caller's environment may stand in for what this test sets up.
    base = {k: v for k, v in os.environ.items() if k not in ("RELAY_API_KEY", "RELAY_API")}
    env = {**base, "RELAY_CONFIG_DIR": str(config_dir)}
    edge = Edge(tmp_path / "edge")
    try:
        edge.start()
        api = f"http://127.0.0.1:{edge.admin_port}"

        # The first admin key comes straight from the store: no key exists to call with.
        boot = relay("api-keys", "bootstrap", "--data-dir", str(edge.data_dir), env=env)
        admin_key = ok(boot).strip()
        assert admin_key.startswith("rlk_")
        assert "shown only now" in boot.stderr and "default (operator)" in boot.stderr

        key_file = tmp_path / "admin.key"
        key_file.write_text(admin_key + "\n")
        key_file.chmod(0o600)
        login = relay("login", "--api", api, "--key-file", str(key_file), env=env)
        assert f"logged in to {api}" in ok(login)
        saved = config_dir / "login.json"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
        assert json.loads(saved.read_text()) == {"api": api, "key": admin_key}

        # From here on the saved login is the only credential the commands have.
        account = json.loads(ok(relay("accounts", "create", "team-a", "-o", "json", env=env)))
        assert account["name"] == "team-a" and account["role"] == "member"
        account_id = account["id"]
        assert account_id.startswith("acc_")

        created = relay("credentials", "create", "--account", account_id, env=env)
        token = ok(created).strip()
        assert token.startswith("rly_")
        assert "shown only now" in created.stderr and account_id in created.stderr

        made = relay(
            "api-keys",
            "create",
            "--account",
            account_id,
            "--scope",
            "credentials:read",
            "-o",
            "json",
            env=env,
        )
        member_key = json.loads(ok(made))
        assert member_key["key"].startswith("rlk_")
        assert member_key["account_id"] == account_id
        assert member_key["scopes"] == ["credentials:read"]

        listed = json.loads(ok(relay("accounts", "list", "-o", "json", env=env)))
        assert {a["name"] for a in listed} >= {"default", "team-a"}
        assert any(a["id"] == account_id and a["status"] == "active" for a in listed)
        table = ok(relay("accounts", "list", env=env)).splitlines()
        assert table[0].split() == ["ID", "NAME", "ROLE", "STATUS", "CREATED"]
        assert any(line.split()[:4] == [account_id, "team-a", "member", "active"] for line in table)

        # The member's key: its own account's credentials, and a clear no for the rest.
        as_member = {**env, "RELAY_API_KEY": member_key["key"]}
        theirs = json.loads(ok(relay("credentials", "list", "-o", "json", env=as_member)))
        assert [c["account_id"] for c in theirs] == [account_id]
        refused = relay("accounts", "list", env=as_member)
        assert refused.returncode == 1
        assert refused.stderr.startswith("error RLY_120: ") and "(request req_" in refused.stderr
        assert member_key["key"] not in refused.stderr + refused.stdout

        verified = relay("audit", "verify", env=env)
        out = ok(verified)
        assert out.startswith("audit log intact: ") and "events checked" in out and "hash " in out

        assert "logged out" in ok(relay("logout", env=env))
        assert not saved.exists()
        gone = relay("accounts", "list", env=env)
        assert gone.returncode == 2 and "relay login" in gone.stderr
    finally:
        edge.stop()
