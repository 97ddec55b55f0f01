"""TinyMLOps KFP v2 pipelines: the variant factory as a Kubeflow pipeline.

`pipeline.variants_pipeline` wires the components in `components/`;
`compile` writes the committed IR YAML; `runner` runs it locally
(kfp.local) or on a Kubeflow Pipelines backend.
"""
