"""Every TLS hop a tunnel's bytes take is AES-128-GCM (relay/tls.py ``TLS13_SUITES``):
the agent link, whichever order the agent offers (the edge picks), and the link between
cluster nodes. Real handshakes between real contexts, over memory BIOs."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from relay._tlslink import set_tls13_suites
from relay.certs.local_ca import LocalCA
from relay.edge.cluster import node_certificate
from relay.tls import client_context, server_context

AES_128 = "TLS_AES_128_GCM_SHA256"
AES_256 = "TLS_AES_256_GCM_SHA384"


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A full handshake between the two, done: (the client's end, the server's)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    done = [False, False]
    for _ in range(10):  # a TLS 1.3 handshake takes two flights each way
        for i, end in enumerate((cli, srv)):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done):
            break
    assert all(done), "the handshake did not finish"
    return cli, srv


def negotiated(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> str:
    """The suite a full handshake between the two settles on (both ends agree)."""
    cli, srv = handshake(server, client, hostname)
    suite, server_suite = cli.cipher(), srv.cipher()
    assert suite is not None and server_suite is not None
    assert suite[0] == server_suite[0]
    return suite[0]


@pytest.fixture
def edge_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    ca = LocalCA.load_or_create(tmp_path / "ca")
    chain, key = ca.issue_server_cert(["localhost"], ["127.0.0.1"])
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(key)
    return server_context(tmp_path / "chain.pem", tmp_path / "key.pem"), ca.ca_pem_path


def test_the_agent_link_is_aes_128_gcm(edge_contexts: tuple[ssl.SSLContext, Path]) -> None:
    server, ca_file = edge_contexts
    assert negotiated(server, client_context(ca_file=ca_file), "localhost") == AES_128


def test_an_agent_that_offers_aes_256_first_gets_aes_128_from_the_edge(
    edge_contexts: tuple[ssl.SSLContext, Path],
) -> None:
    """An agent of an earlier release offers OpenSSL's order, AES-256-GCM first; the
    edge's order decides."""
    server, ca_file = edge_contexts
    older = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    older.load_verify_locations(cafile=str(ca_file))
    assert older.get_ciphers()[0]["name"] == AES_256
    assert negotiated(server, older, "localhost") == AES_128


def test_without_the_preference_openssl_would_pick_aes_256(
    edge_contexts: tuple[ssl.SSLContext, Path], tmp_path: Path
) -> None:
    """The control: the same certificate in a context of OpenSSL's order."""
    _, ca_file = edge_contexts
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    plain.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    older = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    older.load_verify_locations(cafile=str(ca_file))
    assert negotiated(plain, older, "localhost") == AES_256


def test_the_link_between_nodes_is_aes_128_gcm(tmp_path: Path) -> None:
    a = node_certificate(tmp_path / "cluster-ca", "node-a")
    b = node_certificate(tmp_path / "cluster-ca", "node-b")
    assert negotiated(b.server(), a.client(), "node.relay-cluster.invalid") == AES_128


def test_suites_openssl_does_not_know_are_refused_and_change_nothing() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    before = [c["name"] for c in ctx.get_ciphers()]
    with pytest.raises(ValueError, match="refused"):
        set_tls13_suites(ctx, "TLS_NOT_A_SUITE")
    assert [c["name"] for c in ctx.get_ciphers()] == before
    set_tls13_suites(ctx, AES_256)
    assert [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"] == [AES_256]
