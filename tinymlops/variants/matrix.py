"""The variant matrix: which variants an EdgeModel asks for, each a named chain of transforms (pure).

Variant ids are self-describing, so a pipeline task needs nothing but the id:

    fp32 | fp16 | int8-static | int8-dynamic     one precision of the base
    pruned-<NN>                                  magnitude-pruned to NN % sparsity (fp32)
    pruned-<NN>-<precision id>                   pruned, then converted (e.g. pruned-75-int8-static)
    tvm-<target>                                 the fp32 base compiled by Apache TVM for a target
                                                 (tvm-x86-64, tvm-aarch64, tvm-armv7l, tvm-cortex-m4,
                                                 tvm-cortex-m7, tvm-cortex-m33)
    emx-int8-<target>                            static int8 as integer C for a microcontroller target
                                                 (emx-int8-cortex-m4, ...), built when the spec asks for
                                                 int8 and that target

The spec's `precisions` use the short names fp32, fp16, int8 (static) and int8-dynamic;
`parse_precision` is the one parser of precision names and accepts the variant id
too (int8-static), so a name read from a menu can be given back; targets likewise
accept their id suffix (x86-64 for x86_64).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlops.errors import SpecError
from tinymlops.variants.mcu.boards import BOARDS
from tinymlops.variants.transforms import TRANSFORMS, Identity, Prune, Transform

if TYPE_CHECKING:
    from tinymlops.variants.tvm_tune import Tuning

# The spec's precision names -> variant id of that precision.
PRECISION_IDS = {"fp32": "fp32", "fp16": "fp16", "int8": "int8-static", "int8-dynamic": "int8-dynamic"}
ID_PRECISIONS = {vid: precision for precision, vid in PRECISION_IDS.items()}
# The spec's target names (our architecture names) <-> the id suffix (ids allow no underscore).
TARGET_IDS = {"x86_64": "x86-64", "aarch64": "aarch64", "armv7l": "armv7l", "cortex-m4": "cortex-m4",
              "cortex-m7": "cortex-m7", "cortex-m33": "cortex-m33"}
ID_TARGETS = {suffix: target for target, suffix in TARGET_IDS.items()}
# Every name a precision goes by (lower case) -> the spec's short name.
PRECISION_NAMES = {**{p: p for p in PRECISION_IDS}, **ID_PRECISIONS}
# Who asked for the matrix decides how an error names its input: the EdgeModel's fields, or the CLI's flags.
SPEC_FIELDS = {"precisions": "spec.variants.precisions", "sparsities": "spec.variants.sparsities",
               "targets": "spec.variants.targets"}
# Pruned variants are quantized too when int8 is asked for: sparsity plus int8 is the smallest combination.
PRUNED_THEN = ("int8",)

EMX_INT8 = "emx-int8-"
_PRUNED = re.compile(r"^pruned-(\d{1,2})(?:-(.+))?$")


@dataclass(frozen=True)
class VariantSpec:
    id: str
    steps: tuple[Transform, ...]
    precision: str
    format: str = "onnx"
    target: str = "any"

    @property
    def needs_calibration(self) -> bool:
        return any(step.needs_calibration for step in self.steps)

    @property
    def health_atol(self) -> float:
        return max((step.health_atol for step in self.steps), default=Identity.health_atol)

    @property
    def lineage(self) -> list[dict[str, Any]]:
        return [entry for step in self.steps for entry in step.lineage]

    def resolve(self, model: bytes) -> VariantSpec:
        """Every `auto` parameter decided for the base model (recorded in lineage)."""
        resolved = tuple(step.resolve(model) for step in self.steps)
        return VariantSpec(self.id, resolved, self.precision, self.format, self.target)


def parse_precision(name: str, *, field: str = SPEC_FIELDS["precisions"]) -> str:
    """The spec's short name of a precision (int8-static -> int8); SpecError naming `field` otherwise."""
    canonical = PRECISION_NAMES.get(name.strip().lower())
    if canonical is None:
        known = ", ".join(f"{p} ({vid})" if vid != p else p for p, vid in PRECISION_IDS.items())
        raise SpecError(f"{field}: {name!r} has no transform (available: {known})")
    return canonical


def parse_target(name: str, *, field: str = SPEC_FIELDS["targets"]) -> str:
    """The spec's architecture name of a target (x86-64 -> x86_64); SpecError naming `field` otherwise."""
    canonical = name.strip() if name.strip() in TARGET_IDS else ID_TARGETS.get(name.strip())
    if canonical is None:
        raise SpecError(f"{field}: {name!r} is not one of {', '.join(TARGET_IDS)}")
    return canonical


def calibrated(variant_ids: Sequence[str]) -> list[str]:
    """The variants among `variant_ids` that are calibrated on data (static int8, alone or after pruning)."""
    return [vid for vid in variant_ids if spec_for(vid).needs_calibration]


def spec_for(variant_id: str, *, tuning: Tuning | None = None, tuning_dir: Path | None = None) -> VariantSpec:
    """The spec a variant id stands for; SpecError naming the id when it stands for nothing.

    `tuning`/`tuning_dir`: the EdgeModel's MetaSchedule budget and where its databases are cached (TVM variants).
    """
    vid = PRECISION_IDS.get(variant_id, variant_id)  # "int8" is accepted for "int8-static"
    if vid in ID_PRECISIONS:
        step = TRANSFORMS[ID_PRECISIONS[vid]]()
        return VariantSpec(vid, (step,), step.precision)
    if match := _PRUNED.match(vid):
        percent, then = int(match.group(1)), match.group(2)
        prune = Prune(percent / 100)
        if then is None:
            return VariantSpec(vid, (prune,), "fp32")
        then = PRECISION_IDS.get(then, then)  # pruned-50-int8 is pruned-50-int8-static
        if then not in ID_PRECISIONS or then == "fp32":
            raise SpecError(f"variant {variant_id!r}: {then!r} is not a precision a pruned model can be converted to")
        step = TRANSFORMS[ID_PRECISIONS[then]]()
        return VariantSpec(f"pruned-{match.group(1)}-{then}", (prune, step), step.precision)
    if vid.startswith("tvm-") and vid.removeprefix("tvm-") in ID_TARGETS:
        from tinymlops.variants.tvm_transform import TvmCompile

        compile_step = TvmCompile(ID_TARGETS[vid.removeprefix("tvm-")], tuning, tuning_dir)
        return VariantSpec(vid, (compile_step,), "fp32", compile_step.format, compile_step.target)
    if vid.startswith(EMX_INT8) and ID_TARGETS.get(vid.removeprefix(EMX_INT8)) in BOARDS:
        from tinymlops.variants.emx_transform import EmxGenerate, quantize_for_mcu

        generate = EmxGenerate(ID_TARGETS[vid.removeprefix(EMX_INT8)])
        return VariantSpec(vid, (quantize_for_mcu(), generate), "int8", generate.format, generate.target)
    known = ", ".join([*ID_PRECISIONS, "pruned-<NN>[-<precision>]", *(f"tvm-{t}" for t in ID_TARGETS),
                       *(f"{EMX_INT8}{TARGET_IDS[t]}" for t in BOARDS)])
    raise SpecError(f"variant {variant_id!r} is not one this factory builds (known: {known})")


def variant_matrix(
    precisions: Sequence[str], sparsities: Sequence[float] = (), targets: Sequence[str] = (),
    *, fields: Mapping[str, str] = SPEC_FIELDS,
) -> list[str]:
    """The variant ids of an EdgeModel spec, in a stable order; SpecError names the offending field.

    `fields` names the inputs in errors: the EdgeModel's fields by default, the CLI passes its flags.
    """
    if not precisions:
        raise SpecError(f"{fields['precisions']}: at least one precision is needed")
    precisions = [parse_precision(p, field=fields["precisions"]) for p in precisions]
    targets = [parse_target(t, field=fields["targets"]) for t in targets]
    for field, values in (("precisions", precisions), ("sparsities", sparsities), ("targets", targets)):
        if len(set(values)) != len(values):
            raise SpecError(f"{fields[field]}: {list(values)} lists a value twice")
    ids = [PRECISION_IDS[p] for p in precisions]
    for sparsity in sparsities:
        if not 0.0 < float(sparsity) < 1.0 or round(float(sparsity) * 100) != float(sparsity) * 100:
            raise SpecError(f"{fields['sparsities']}: {sparsity} must be a whole percentage between 0 and 1 "
                            "(e.g. 0.5, 0.75)")
        base = f"pruned-{round(float(sparsity) * 100)}"
        ids.append(base)
        ids.extend(f"{base}-{PRECISION_IDS[p]}" for p in PRUNED_THEN if p in precisions)
    ids.extend(f"tvm-{TARGET_IDS[target]}" for target in targets)
    if "int8" in precisions:  # a microcontroller's int8 is integer C, not an ONNX graph it cannot run
        ids.extend(f"{EMX_INT8}{TARGET_IDS[target]}" for target in targets if target in BOARDS)
    return ids
