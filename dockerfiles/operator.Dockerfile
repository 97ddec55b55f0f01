# ghcr.io/tinymlops/tinymlops: the `tinymlops` command with the operator and the gateway.
#
# The Helm chart runs both from this one image (`tinymlops operator run --liveness=...` and
# `tinymlops gateway run --host 0.0.0.0 --port 8080`, see helm/tinymlops/templates/): a separate
# gateway image would be a second tag to keep in step with the chart's appVersion for no gain.
# Variant builds without a KFP host run inside the operator pod (kfp.local, subprocesses of this
# Python), so kfp, onnx and onnxruntime are here; Apache TVM and its cross linkers are not (they
# triple the size): TVM targets need operator.kfpHost, whose tasks run in pipeline-base.
#
# Build with `make images`, which passes the tag from helm/tinymlops/Chart.yaml (appVersion).

# A patch release, never a moving tag. Digests cannot be resolved where this file is written:
# pin one at build time with --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# setup.py copies crds/ and examples/ into the package (every wheel of tinymlops carries them).
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY crds/ crds/
COPY examples/ examples/
COPY tinymlops/ tinymlops/
COPY operator/ operator/
COPY pipelines/ pipelines/
# Not editable: the final stage takes the venv and leaves the sources behind. pip writes the .pyc
# files here, so the read-only root filesystem costs no start-up time at runtime.
RUN /opt/venv/bin/pip install --no-cache-dir ".[operator,gateway]"

FROM ${PYTHON_IMAGE}
# The chart's appVersion (make images passes it; the default is checked by tests/unit/test_images.py).
ARG VERSION=0.1.0
LABEL org.opencontainers.image.source="https://github.com/tinymlops/tinymlops" \
      org.opencontainers.image.title="tinymlops" \
      org.opencontainers.image.description="TinyMLOps operator and device gateway (tinymlops operator run, tinymlops gateway run)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# HOME=/tmp: the chart mounts the root filesystem read-only and /tmp as an emptyDir; kfp.local and
# onnxruntime write temporary files under HOME. TINYMLOPS_STORE matches the chart's store volume.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp \
    TINYMLOPS_STORE=/var/lib/tinymlops/store
# A named user for the chart's runAsUser/runAsGroup (65532), so tools that look the uid up find it
# (--no-log-init: a high uid would otherwise grow a sparse lastlog that layers store in full);
# /var/lib/tinymlops is owned by it for `docker run` without the chart's volume.
RUN groupadd --gid 65532 nonroot \
 && useradd --no-log-init --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin nonroot \
 && install -d -o 65532 -g 65532 /var/lib/tinymlops
COPY --from=builder /opt/venv /opt/venv
USER 65532:65532
WORKDIR /var/lib/tinymlops
# 8080: the gateway's HTTP API; 8081: the operator's liveness endpoint; 9102: operator /metrics.
EXPOSE 8080 8081 9102
ENTRYPOINT ["tinymlops"]
CMD ["--help"]
