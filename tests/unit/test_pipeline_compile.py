"""The committed IR YAML is what the code compiles to (regenerate: make compile-pipeline)."""

import re

import yaml

from tinymlops_pipelines.compile import COMPILED, compiled_text
from tinymlops_pipelines.images import BASE_IMAGE


def normalise(text: str) -> str:
    # The SDK version changes with a kfp patch release without changing the pipeline.
    return re.sub(r"(?m)^sdkVersion: .*$", "sdkVersion: <any>", text)


def test_committed_ir_yaml_is_current() -> None:
    assert normalise(compiled_text()) == normalise(COMPILED.read_text()), (
        "pipelines/tinymlops_pipelines/compiled/variants_pipeline.yaml is stale: run `make compile-pipeline`"
    )


def test_ir_shape() -> None:
    spec = yaml.safe_load(COMPILED.read_text())
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {BASE_IMAGE}
    assert not any("pip install" in " ".join(e["container"]["command"]) for e in executors.values())
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"check-source", "watermark", "for-loop-1", "publish-menu"}
    assert tasks["check-source"]["cachingOptions"] == {}  # caching off for the URI check
    assert tasks["publish-menu"]["cachingOptions"] == {}
    assert tasks["watermark"]["cachingOptions"] == {}  # it registers the licensee in the store
    # Every variant and the menu's references are built from the watermark task's model, never the raw base.
    loop = tasks["for-loop-1"]["inputs"]["artifacts"]
    assert any(a.get("taskOutputArtifact", {}).get("producerTask") == "watermark" for a in loop.values())
    publish_base = tasks["publish-menu"]["inputs"]["artifacts"]["base"]["taskOutputArtifact"]
    assert publish_base == {"outputArtifactKey": "watermarked", "producerTask": "watermark"}
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["variants"]["defaultValue"] == ["fp32", "int8-static"]
    assert {"source_uri", "data_uri", "store_root", "namespace", "name", "accuracy_budget", "menu_version",
            "signing_key_path", "cache_dir", "licensee", "watermark_key_path"} <= set(inputs)
