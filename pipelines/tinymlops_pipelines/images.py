"""The one container image every component runs in (tinymlops + kfp installed).

Components do not pip-install at start-up (install_kfp_package=False): the
image carries the exact versions the pipeline was compiled against.
"""

BASE_IMAGE = "ghcr.io/tinymlops/pipeline-base:0.1.0"
