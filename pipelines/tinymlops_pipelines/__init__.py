"""TinyMLOps KFP v2 pipelines: the variant factory as a Kubeflow pipeline.

`pipeline.variants_pipeline` wires the components in `components/`;
`compile` writes the committed IR YAML; `runner` runs it locally
(kfp.local) or on a Kubeflow Pipelines backend.
"""

from tinymlops.extras import require_extra

# Its modules import these; checked once here so a missing one names the extra to install.
require_extra("pipelines", __name__)
