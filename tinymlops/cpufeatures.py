"""The CPU features a tuned TVM build needs, and the ones a device has, by Node Feature Discovery's names (pure).

A tuned host variant is compiled for the build machine's CPU (`variants.tvm.tuning_target`: LLVM's `-mcpu` of
this machine), so it may use AVX-512 or FMA where a device has neither: loading it there would end in SIGILL,
not in a refusal. The menu states what such a build needs in `requirements.cpu_features`, and a device states
what it has with the labels Kubernetes' Node Feature Discovery (NFD) puts on nodes,
`feature.node.kubernetes.io/cpu-cpuid.<NAME>: "true"` (e.g. `...cpu-cpuid.AVX2`), so a fleet can select on them
with ordinary label selectors and `tinymlops.selection.filters` refuses the variant for a device without them.

Only vector and matrix extensions are named: those are what decide whether generated kernels run, and NFD labels
them by default (it leaves out baseline ones such as SSE4 or BMI2, which every CPU with AVX2 has anyway).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

NFD_CPUID_PREFIX = "feature.node.kubernetes.io/cpu-cpuid."

# NFD's name (from klauspost/cpuid) of each extension a tuned build can depend on, by LLVM's feature name.
LLVM_TO_NFD = {
    # x86-64
    "avx": "AVX", "avx2": "AVX2", "fma": "FMA3", "avxvnni": "AVXVNNI",
    "avx512f": "AVX512F", "avx512bw": "AVX512BW", "avx512cd": "AVX512CD", "avx512dq": "AVX512DQ",
    "avx512vl": "AVX512VL", "avx512vnni": "AVX512VNNI", "avx512bf16": "AVX512BF16", "avx512fp16": "AVX512FP16",
    "avx512ifma": "AVX512IFMA", "avx512vbmi": "AVX512VBMI", "avx512vbmi2": "AVX512VBMI2",
    "avx512bitalg": "AVX512BITALG", "avx512vpopcntdq": "AVX512VPOPCNTDQ",
    "avx512vp2intersect": "AVX512VP2INTERSECT", "amx-tile": "AMXTILE", "amx-int8": "AMXINT8",
    "amx-bf16": "AMXBF16",
    # aarch64
    "neon": "ASIMD", "dotprod": "ASIMDDP", "fullfp16": "ASIMDHP", "sve": "SVE", "sve2": "SVE2", "i8mm": "I8MM",
    "bf16": "BF16",
}
KNOWN = frozenset(LLVM_TO_NFD.values())


def nfd_name_of_flag(flag: str) -> str:
    """NFD's name of a /proc/cpuinfo flag (x86 "flags", arm64 "Features"): upper case without underscores
    (avx512_vnni: AVX512VNNI, asimddp: ASIMDDP), except fma, which NFD calls FMA3."""
    return "FMA3" if flag == "fma" else flag.upper().replace("_", "")


def required_features(llvm_features: Iterable[str]) -> list[str]:
    """The NFD names of the extensions among `llvm_features` (what LLVM enables for a build's -mcpu), sorted."""
    return sorted({LLVM_TO_NFD[name] for name in llvm_features if name in LLVM_TO_NFD})


def features_from_labels(labels: Mapping[str, str]) -> frozenset[str] | None:
    """The extensions a device's NFD labels say it has; None when it carries none (unknown, not "none")."""
    named = {key.removeprefix(NFD_CPUID_PREFIX): value for key, value in labels.items()
             if key.startswith(NFD_CPUID_PREFIX)}
    if not named:
        return None
    return frozenset(name for name, value in named.items() if value.lower() == "true")


def feature_labels(features: Iterable[str]) -> dict[str, str]:
    """The NFD labels that state `features`."""
    return {f"{NFD_CPUID_PREFIX}{name}": "true" for name in sorted(features)}


def features_from_cpuinfo(text: str) -> frozenset[str]:
    """The extensions /proc/cpuinfo's first "flags" (x86) or "Features" (arm64) line lists, by NFD name."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(name for name in map(nfd_name_of_flag, value.split()) if name in KNOWN)
    return frozenset()


def host_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """This machine's extensions, or None where /proc/cpuinfo cannot be read (not Linux)."""
    try:
        return features_from_cpuinfo(cpuinfo.read_text())
    except OSError:
        return None


def missing_features(required: Iterable[str], present: frozenset[str] | None) -> list[str]:
    """What of `required` a device lacks; every one of them when the device states no features at all."""
    return sorted(set(required) - (present or frozenset()))
