# rpcproxy, installed from a wheelhouse built on the host (`make wheelhouse`),
# and the reference Nomad peer, a static Go binary built on the host
# (`make nomad-peer`, build/nomad-peer): nothing inside the build reaches the
# network.
#
#   make wheelhouse nomad-peer
#   docker build --build-arg BASE_IMAGE=rpcproxy-base:bookworm -t rpcproxy:local .
#
# BASE_IMAGE is any image with python3 (3.11) and its venv module; on a machine
# that cannot pull images, docker/build-base-image.sh makes one from Debian
# packages.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_INDEX=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/rpcproxy/bin:$PATH

# docker-compose.yml's Nomad-server stand-ins run it. Static (CGO off), so it
# needs nothing from the base image; copied before the wheelhouse because it
# changes far less often.
COPY build/nomad-peer /usr/local/bin/nomad-peer
COPY wheelhouse/ /tmp/wheelhouse/
RUN python3 -m venv /opt/rpcproxy \
    && /opt/rpcproxy/bin/pip install --quiet --no-index --find-links /tmp/wheelhouse rpcproxy \
    && rm -rf /tmp/wheelhouse \
    && groupadd --system rpcproxy \
    && useradd --system --gid rpcproxy --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin rpcproxy \
    && mkdir /keys \
    && chown rpcproxy:rpcproxy /keys

USER rpcproxy
# /keys: where docker-compose.yml mounts its CURVE keys volume. A new named
# volume starts as a copy of this directory, owned by rpcproxy, so
# `rpcproxy keygen /keys ...` works there without root.
EXPOSE 4650 4651 4652 4653

# A real request: the proxy must answer a ping on its query socket.
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=3 \
    CMD ["rpcproxy", "ping", "--query", "tcp://127.0.0.1:4650", "--timeout", "1"]

CMD ["rpcproxy", "serve"]
