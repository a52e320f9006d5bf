# The operator image: slim Python with Kopf and the operator, no torch, non-root.
#   docker build -t adamw-operator:dev -f Dockerfile .        (or: make images)
# Runs as UID 10001 with a read-only root filesystem (the chart mounts /tmp).

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
# The package (one pyproject for trainer and operator); the `operator` extra has no torch.
COPY pyproject.toml constraints.txt README.md ./
COPY trainer_image/adamw_trainer ./trainer_image/adamw_trainer
COPY operator/adamw_operator ./operator/adamw_operator
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --constraint constraints.txt ".[operator]" \
    && /opt/venv/bin/python -c "import adamw_operator.cli, sys; assert 'torch' not in sys.modules"

FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="adamw-operator" \
      org.opencontainers.image.description="Kubernetes operator for AdamWTrainingJob" \
      org.opencontainers.image.source="https://github.com/adamw-operator/adamw-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 operator \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /tmp --shell /usr/sbin/nologin operator
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
# 8080: liveness (/healthz), 9100: Prometheus metrics.
EXPOSE 8080 9100
ENTRYPOINT ["adamw-operator"]
CMD ["--all-namespaces"]
