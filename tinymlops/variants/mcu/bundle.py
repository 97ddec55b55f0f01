"""The `tvm-cortex-m*` artifact (cortex-m4, -m7, -m33): a self-contained C bundle, built from a relax module.

The module goes through `tvm.fused_pipeline` (fusion, legalization, static
memory planning, VM lowering) once; its TIR kernels are emitted as C by TVM's
`c` target with runtime asserts off (a microcontroller has nowhere to report
them, and they were a third of a small CNN's code), and its `main` becomes the
static driver of `codegen.py`.  The tar holds `lib0.c`, `model.c`, `model.h`
and `bundle.json` (what a firmware build needs to know without parsing C).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tinymlops.variants.mcu import codegen
from tinymlops.variants.mcu.boards import board_for
from tinymlops.variants.tvm import deterministic_tar, fused_pipeline

BUNDLE_FORMAT = 1


def c_bundle(mod: Any, spec: Any) -> bytes:
    """The deterministic tar of the C bundle of relax module `mod` for TargetSpec `spec`."""
    import tvm

    target = tvm.target.Target(spec.tvm_target)
    with target:
        lowered = fused_pipeline()(mod)
    plan = codegen.plan_main(lowered["main"])
    kernels = tvm.IRModule({gv: f for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)})
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
        kernels_c = tvm.tirx.build(kernels, target=target).inspect_source()
    workspace = codegen.workspace_bytes(kernels_c)
    model_c, model_h = codegen.render(plan, workspace, model_name=f"tinymlops {spec.name} model",
                                      build_flags=" ".join(board_for(spec.name).cflags))
    info = {
        "format": BUNDLE_FORMAT, "target": spec.name, "tvm_target": spec.tvm_target,
        "input": {"shape": list(plan.input.shape), "dtype": plan.input.dtype, "bytes": plan.input.nbytes},
        "output": {"shape": list(plan.output.shape), "dtype": plan.output.dtype, "bytes": plan.output.nbytes},
        "arena_bytes": plan.arena_bytes, "workspace_bytes": workspace,
        "kernel_calls": len(plan.calls), "kernels": sorted({k for k, _ in plan.calls}),
    }
    with tempfile.TemporaryDirectory(prefix="tinymlops-mcu-") as tmp:
        files = {"lib0.c": kernels_c, "model.c": model_c, "model.h": model_h,
                 "bundle.json": json.dumps(info, indent=2, sort_keys=True) + "\n"}
        paths = []
        for name, text in files.items():
            path = Path(tmp) / name
            path.write_text(text)
            paths.append(path)
        return deterministic_tar(paths)
