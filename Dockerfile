# relay edge image: `docker build -t relay .` (or `make image`).
#
# Two stages. The builder compiles the Rust multiplexer (maturin) and the Cython byte path
# into a venv at /opt/relay with scripts/install-prefix.sh, the same script a bare-metal
# PoP and tests/e2e/test_image_build_script.py run. The runtime stage is the slim Python
# image plus that venv: no compiler, no cargo, no pip.
#
# Run (host networking: a PoP hands out up to 1,000 TCP ports, and one docker-proxy per
# published port costs more than the edge; the drain needs longer than docker's 10 s):
#   docker run -d --name relay-edge --network host --stop-timeout 45 \
#     -v relay-data:/var/lib/relay relay edge --public-host edge.example.com \
#     --base-domain edge.example.com --tcp-ports 20000-20999
#   docker exec relay-edge relay token create --description laptop

# Both Python stages must be the same Python: the venv's interpreter link points at
# /usr/local/bin/python3.11 of the image it was made in.
ARG PYTHON_VERSION=3.11

# Only its toolchain is used: rustup's self-contained tree under /usr/local.
FROM rust:1.95-slim-bookworm AS rust

# The full (non-slim) Python image already has gcc and libc headers for setup.py and for
# rustc's linker, so nothing comes from apt unpinned.
FROM python:${PYTHON_VERSION}-bookworm AS builder
COPY --from=rust /usr/local/rustup /usr/local/rustup
COPY --from=rust /usr/local/cargo /usr/local/cargo
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
RUN scripts/install-prefix.sh /opt/relay

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="relay" \
      org.opencontainers.image.description="Self-hosted tunneling edge (PoP) and agent" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed uid/gid, so a volume's owner means the same user on every host and upgrade.
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --home-dir /var/lib/relay \
        --shell /usr/sbin/nologin relay \
    && install -d -o relay -g relay -m 0700 /var/lib/relay
COPY --from=builder /opt/relay /opt/relay
COPY deploy/edge.yml /etc/relay/edge.example.yml
ENV PATH=/opt/relay/bin:$PATH \
    RELAY_DATA_DIR=/var/lib/relay \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The token database, the pepper, the local CA and certificates: keep them across upgrades.
VOLUME ["/var/lib/relay"]
WORKDIR /var/lib/relay
# Numeric, so a runtime can tell it is not root without reading /etc/passwd.
USER 10001:10001
# 7000 agents (TLS); 8080 http and 8443 https/tls endpoints (a non-root process cannot
# bind 80/443: map or redirect them to these, docs/running-a-pop.md); 20000-20999 tcp
# endpoints (--tcp-ports). The admin listener (/healthz, /readyz, /metrics) stays on
# 127.0.0.1:9190 and is not exposed.
EXPOSE 7000 8080 8443 20000-20999
# The slim image has no curl. No proxy handler: an HTTP_PROXY in the environment must not
# route a loopback probe elsewhere. RELAY_HEALTH_URL follows a changed --admin-listen.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(os.environ.get('RELAY_HEALTH_URL', 'http://127.0.0.1:9190/readyz'), timeout=3)"]
# The edge drains on SIGTERM (GoAway to agents, live streams get drain_timeout, 30 s by
# default): give `docker stop` / --stop-timeout more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["relay"]
CMD ["edge"]
