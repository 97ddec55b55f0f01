# ghcr.io/tinymlops/pipeline-base: the image every KFP component of the variants pipeline runs in.
#
# The components are compiled with install_kfp_package=False (pipelines/tinymlops_pipelines/images.py):
# nothing is pip-installed when a task starts, so this image carries tinymlops with the operator and
# pipeline packages, the kfp SDK the committed IR was compiled with, Apache TVM (the `tvm` extra, with
# MetaSchedule's cost model for `variants.tuning`: `tune`), emx-onnx-cgen for int8 microcontroller variants
# (`mcu`), the GNU linkers TVM cross-links target libraries with (x86-64, aarch64, armv7; docs/variants.md,
# "TVM targets") and the Arm toolchain and qemu that build and measure microcontroller firmware. KFP starts each task as `sh -ec ... python3 -m kfp.dsl.executor_main`, so sh and python3
# must be on PATH.
#
# Build with `make images`: it passes the tag of BASE_IMAGE in images.py and the IR's sdkVersion.
# Built for linux/amd64: the x86-64 TVM target links with the native gcc installed below, and that is
# the platform the pinned apache-tvm runs on in CI.

# A patch release, never a moving tag. Digests cannot be resolved where this file is written:
# pin one at build time with --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# The kfp SDK the committed IR names (sdkVersion in compiled/variants_pipeline.yaml): the executor in
# the image then reads exactly what that compiler wrote.
ARG KFP_VERSION=2.17.3
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
# Not editable: the final stage takes the venv and leaves the sources behind. The watermark extra (torch, for the
# pipeline's watermark task) from PyTorch's CPU index: PyPI's Linux wheel pulls in the CUDA libraries.
RUN /opt/venv/bin/pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        ".[mcu,pipelines,tune,tvm,watermark]" "kfp==${KFP_VERSION}"

FROM ${PYTHON_IMAGE}
# The tag of BASE_IMAGE in pipelines/tinymlops_pipelines/images.py (checked by tests/unit/test_images.py).
ARG VERSION=0.1.0
LABEL org.opencontainers.image.source="https://github.com/tinymlops/tinymlops" \
      org.opencontainers.image.title="pipeline-base" \
      org.opencontainers.image.description="Runtime of the TinyMLOps KFP variants pipeline: tinymlops, kfp, Apache TVM, cross linkers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# The linkers TVM's export_library calls per target (tinymlops/variants/tvm.py): gcc for x86-64,
# the aarch64 and armhf cross drivers. The libc6-dev packages are only Recommends of the drivers
# but hold the crt files and libc stubs a shared-library link needs, so they are named here.
# Cortex-M4 variants are built as firmware against newlib and measured in qemu (tinymlops/variants/mcu/).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      gcc libc6-dev \
      gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
      gcc-arm-linux-gnueabihf libc6-dev-armhf-cross \
      gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp
# The KFP v2 launcher puts input artifacts under /gcs, /minio and /s3 (a fixed contract with the
# Python executor); owning them lets the non-root user work on backends that mount no emptyDir there.
RUN groupadd --gid 65532 nonroot \
 && useradd --no-log-init --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin nonroot \
 && install -d -o 65532 -g 65532 /gcs /minio /s3
COPY --from=builder /opt/venv /opt/venv
USER 65532:65532
WORKDIR /tmp
# No ENTRYPOINT: KFP sets the command of every task (sh -ec ...); a tinymlops entrypoint would be prepended to it.
CMD ["python3"]
