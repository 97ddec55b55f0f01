# ghcr.io/tinymlops/agent: the device agent for Linux edge devices (linux/amd64, linux/arm64,
# linux/arm/v7 with buildx).
#
# Only what `tinymlops agent ...` imports is installed: the project with its `agent` extra, which is the
# core dependencies alone (pyproject.toml: no kfp, kopf, kubernetes, scikit-learn, kmock, onnx, TVM), and
# `privacy` (OpenDP), which noises drift histograms when a fleet's policy asks for histograms+dp, and
# `protection` (scipy), whose Shapiro-Wilk test drives the per-client extraction monitor.
# tests/unit/test_images.py checks that the agent modules import with only these.
#
# linux/arm/v7: PyPI has no armv7l wheels of onnxruntime (and no sdist) nor of numpy.
# Pass --build-arg PIP_EXTRA_INDEX_URL=<an index serving cp311 linux_armv7l wheels for them>
# (`make images AGENT_PIP_EXTRA_INDEX_URL=...` adds linux/arm/v7 to the platforms and passes it).
#
# Build with `make images`, which passes the chart's appVersion as the tag.

# A patch release, never a moving tag. Digests cannot be resolved where this file is written:
# pin one at build time with --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
# (the digest of the multi-arch index, so every platform resolves its own manifest).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Declared without a default: unset unless given, and pip reads it from the environment.
ARG PIP_EXTRA_INDEX_URL
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
RUN /opt/venv/bin/pip install --no-cache-dir ".[agent,licensing,privacy,protection,wasm]"

FROM ${PYTHON_IMAGE}
# The chart's appVersion: the agent is released with the operator that publishes its plans.
ARG VERSION=0.1.0
LABEL org.opencontainers.image.source="https://github.com/tinymlops/tinymlops" \
      org.opencontainers.image.title="tinymlops-agent" \
      org.opencontainers.image.description="TinyMLOps device agent: verify, install and serve model variants on an edge device" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp
# The state directory holds the pinned publisher key and the A/B model slots: it must outlive the
# container, hence a volume, owned by the agent's user so a fresh volume is writable.
RUN groupadd --gid 65532 nonroot \
 && useradd --no-log-init --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin nonroot \
 && install -d -o 65532 -g 65532 -m 0700 /var/lib/tinymlops-agent
COPY --from=builder /opt/venv /opt/venv
USER 65532:65532
VOLUME ["/var/lib/tinymlops-agent"]
WORKDIR /var/lib/tinymlops-agent
ENTRYPOINT ["tinymlops"]
# There is no long-running agent command yet: the online loop (tinymlops/agent/online.py, shipped here and
# importing nothing from the simulator in tinymlops/fleet) so far runs many devices at once under the fleet
# simulator.  By default show what is installed. Sideload a signed variant directory with
#   docker run -v agent-state:/var/lib/tinymlops-agent -v $PWD/variants:/variants:ro -v $PWD/keys:/keys:ro IMAGE \
#     agent install /variants --state-dir /var/lib/tinymlops-agent --pubkey /keys/signing-key.pub.pem
CMD ["agent", "status", "--state-dir", "/var/lib/tinymlops-agent"]
