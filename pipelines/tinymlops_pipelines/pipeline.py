"""The variants pipeline: check the source, build each precision in parallel, publish the signed menu.

    check-source ──► watermark ──► for variant in variants: build-variant ──► publish-menu
                                    (dsl.ParallelFor)                          (dsl.Collected)

With a `licensee`, the watermark task embeds that licensee's watermark in the
base first, and the whole matrix is built from the watermarked copy and
published as the licensee's menu (`tinymlops.layout.licensee_prefix`); without
one it hands the base on as it is.

`variants` are variant ids (`tinymlops.variants.matrix`: fp32, int8-static,
pruned-75-int8-static, tvm-aarch64, ...); the operator derives them from the
EdgeModel's precisions, sparsities and targets.

Parameters name where things are, never the bytes: the store root, the
signing key, the watermark key and the data key (for encrypted artifacts) are paths that the task
pods (or the local subprocesses) can read; recipients are public keys.
"""

from kfp import dsl

from tinymlops_pipelines.components import build_variant, check_source, publish_menu, watermark

PIPELINE_NAME = "tinymlops-variants"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Build, score and sign the variants (precisions, pruning, TVM targets) of one ONNX model.",
)
def variants_pipeline(
    source_uri: str,
    store_root: str,
    name: str,
    signing_key_path: str,
    data_uri: str = "",
    namespace: str = "default",
    variants: list[str] = ["fp32", "int8-static"],  # noqa: B006  (a pipeline default, never mutated)
    accuracy_budget: float = 0.01,
    menu_version: int = 1,
    cache_dir: str = "",
    data_key_path: str = "",
    recipients: list[str] = [],  # noqa: B006  (a pipeline default, never mutated)
    pre_uri: str = "",
    post_uri: str = "",
    licensee: str = "",
    watermark_key_path: str = "",
    split_parts: bool = False,
    tuning_trials: int = 0,
    tuning_time_budget_s: float = 0.0,
) -> str:
    """Returns the sha256 of the published menu.json.  `pre_uri`/`post_uri`: WebAssembly pre/post modules."""
    check = check_source(source_uri=source_uri, data_uri=data_uri, store_root=store_root, pre_uri=pre_uri,
                         post_uri=post_uri)
    # The URI's content may change under the same string: never reuse a cached check.
    check.set_caching_options(False)
    check.set_display_name("check source")
    marked = watermark(base=check.outputs["base"], data=check.outputs["data"], licensee=licensee,
                       key_path=watermark_key_path, store_root=store_root)
    marked.set_caching_options(False)  # it writes the licensee's record to the store's registry
    marked.set_display_name("watermark")
    with dsl.ParallelFor(items=variants, name="variants", parallelism=2) as variant_id:
        build = build_variant(
            base=marked.outputs["watermarked"],
            data=check.outputs["data"],
            variant_id=variant_id,
            accuracy_budget=accuracy_budget,
            cache_dir=cache_dir,
            tuning_trials=tuning_trials,
            tuning_time_budget_s=tuning_time_budget_s,
        )
        build.set_display_name("build variant")
    publish = publish_menu(
        base_info=check.outputs["Output"],
        entries=dsl.Collected(build.outputs["Output"]),
        variants=dsl.Collected(build.outputs["variant"]),
        variant_ids=variants,
        store_root=store_root,
        namespace=namespace,
        name=name,
        menu_version=menu_version,
        signing_key_path=signing_key_path,
        base=marked.outputs["watermarked"],
        data=check.outputs["data"],
        data_key_path=data_key_path,
        recipients=recipients,
        pre_uri=pre_uri,
        post_uri=post_uri,
        licensee=licensee,
        split_parts=split_parts,
    )
    publish.set_caching_options(False)  # it writes to the store: a side effect a cache would skip
    publish.set_display_name("publish menu")
    digest: str = publish.output  # a channel at compile time, the digest at run time
    return digest
