# Strata server image (docs/operations.md, "Docker"):
#   docker build -t strata .
#   docker run -d --name strata --stop-timeout 30 -v strata-data:/data \
#     -p 7400-7402:7400-7402 strata
# Ports: 7400 gRPC, 7401 WebSocket, 7402 Prometheus metrics and the status page.
# Stop: SIGTERM drains (a master hands over first), waits up to drain_timeout_s
# (default 10 s) for calls in flight, then flushes. Docker's default stop timeout
# is 10 s, after which it sends SIGKILL: give `--stop-timeout` (compose:
# `stop_grace_period`) at least drain_timeout_s + 20 s.
#
# The base image is pinned to an exact version. To pin its digest too, resolve it
# where a registry is reachable and append it:
#   docker buildx imagetools inspect python:3.11.7-slim-bookworm --format '{{.Manifest.Digest}}'
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY storage ./storage
COPY node ./node
COPY server ./server
COPY distribution ./distribution
COPY replication ./replication
COPY client ./client
RUN pip install ./client . \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin strata \
 && mkdir -p /data \
 && chown strata:strata /data

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# gRPC, WebSocket, Prometheus metrics
EXPOSE 7400 7401 7402

# Settings come from this file (mount another over it); STRATA_* variables given
# with -e override single options.
COPY deploy/docker.toml /etc/strata/strata.toml
ENV STRATA_CONFIG=/etc/strata/strata.toml

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-m", "strata.server.healthcheck"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["strata"]
CMD ["serve"]
