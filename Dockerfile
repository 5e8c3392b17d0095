# One image for both entrypoints: `evstore serve` (a store node, the default) and `evstore operator`.
# Build: docker build -t ghcr.io/evstore/evstore:dev .

FROM python:3.11.13-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
# src/evstore/{node,client,operator} are symlinks to the top-level directories; copy both sides.
COPY pyproject.toml README.md ./
COPY src/ src/
COPY node/ node/
COPY client/ client/
COPY operator/ operator/
RUN /opt/venv/bin/pip install --no-cache-dir ".[operator]"

FROM python:3.11.13-slim-bookworm
LABEL org.opencontainers.image.title="evstore" \
      org.opencontainers.image.description="Event store for event sourcing, with its Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 evstore \
 && useradd --system --uid 10001 --gid evstore --home-dir /data --no-create-home --shell /usr/sbin/nologin evstore \
 && mkdir /data \
 && chown evstore:evstore /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EVSTORE_HOST=0.0.0.0 \
    EVSTORE_PORT=7113 \
    EVSTORE_DATA_DIR=/data
WORKDIR /data
USER 10001:10001
EXPOSE 7113
ENTRYPOINT ["evstore"]
CMD ["serve"]
