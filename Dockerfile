# Strata server image: `docker build -t strata . && docker run -p 7400:7400 -v strata-data:/data strata`
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY storage ./storage
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

ENV STRATA_DATA_DIR=/data \
    STRATA_GRPC_LISTEN=0.0.0.0:7400 \
    STRATA_WS_LISTEN=0.0.0.0:7401 \
    STRATA_METRICS_LISTEN=0.0.0.0:7402

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-m", "strata.server.healthcheck"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["strata"]
CMD ["serve"]
