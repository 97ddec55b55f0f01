"""A tuned TVM build states the CPU extensions it needs; a device without them (or stating none) is refused it."""

from __future__ import annotations

import pytest

from tinymlops.cpufeatures import (
    NFD_CPUID_PREFIX,
    feature_labels,
    features_from_cpuinfo,
    features_from_labels,
    required_features,
)
from tinymlops.devices import DeviceCapabilities, capabilities_from_labels
from tinymlops.fleet.profiles import make_fleet
from tinymlops.selection.filters import rejection_reason

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 popcnt avx f16c avx2 bmi1 bmi2 avx512f avx512dq avx512_vnni
processor\t: 1
flags\t\t: fpu
"""
ARM64_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 atomics asimdhp asimddp sve i8mm\n"


def test_llvm_feature_names_become_nfd_names_and_baseline_ones_are_left_out() -> None:
    assert required_features(["sse4.2", "avx", "avx2", "fma", "bmi2", "avx512f", "avx512vnni", "64bit"]) == [
        "AVX", "AVX2", "AVX512F", "AVX512VNNI", "FMA3"]
    assert required_features(["neon", "dotprod", "fullfp16", "crc"]) == ["ASIMD", "ASIMDDP", "ASIMDHP"]


def test_proc_cpuinfo_reads_the_first_cpu_on_either_architecture() -> None:
    assert features_from_cpuinfo(X86_CPUINFO) == {"FMA3", "AVX", "AVX2", "AVX512F", "AVX512DQ", "AVX512VNNI"}
    assert features_from_cpuinfo(ARM64_CPUINFO) == {"ASIMD", "ASIMDHP", "ASIMDDP", "SVE", "I8MM"}
    assert features_from_cpuinfo("processor: 0\n") == frozenset()


def test_nfd_labels_round_trip_and_no_label_means_unknown() -> None:
    labels = feature_labels({"AVX2", "FMA3"})
    assert labels == {f"{NFD_CPUID_PREFIX}AVX2": "true", f"{NFD_CPUID_PREFIX}FMA3": "true"}
    assert features_from_labels({**labels, f"{NFD_CPUID_PREFIX}AVX512F": "false"}) == {"AVX2", "FMA3"}
    assert features_from_labels({"tinymlops.io/arch": "x86_64"}) is None
    caps = DeviceCapabilities("pc", "x86_64", "industrial-pc", 8192, 1024, ("onnxruntime", "tvm"),
                              cpu_features=frozenset({"AVX2", "FMA3"}))
    assert capabilities_from_labels(caps.labels(), name="pc") == caps


def tuned_variant(features: list[str]) -> dict[str, object]:
    return {"id": "tvm-x86_64", "accepted": True, "format": "tvm-lib", "size_bytes": 100_000,
            "requirements": {"arch": ["x86_64"], "min_ram_mb": 0, "cpu_features": features}}


@pytest.mark.parametrize(("features", "expected"), [
    (None, "needs CPU features AVX, AVX2, AVX512F, AVX512VNNI, FMA3; the device states none"),
    (frozenset({"AVX", "AVX2", "FMA3"}), "needs CPU features AVX512F, AVX512VNNI; the device lacks them"),
    (frozenset({"AVX", "AVX2", "FMA3", "AVX512F", "AVX512VNNI"}), None),
])
def test_a_tuned_build_goes_only_to_devices_with_its_extensions(features: frozenset[str] | None,
                                                                expected: str | None) -> None:
    device = DeviceCapabilities("pc", "x86_64", "industrial-pc", 8192, 1024, ("onnxruntime", "tvm"),
                                cpu_features=features)
    reason = rejection_reason(tuned_variant(["AVX", "AVX2", "AVX512F", "AVX512VNNI", "FMA3"]), device)
    assert reason is None if expected is None else reason is not None and reason.startswith(expected)
    untuned = tuned_variant([])
    assert rejection_reason(untuned, device) is None  # an untuned build asks nothing of the CPU


def test_simulated_gateway_pcs_state_avx2_without_avx512() -> None:
    pc = next(d for d in make_fleet(20) if d.device_class == "industrial-pc")
    assert pc.cpu_features == {"AVX", "AVX2", "FMA3"}
    assert capabilities_from_labels(pc.labels(), name=pc.name).cpu_features == pc.cpu_features


def test_llvm_says_what_a_build_for_a_named_cpu_may_use() -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'tinymlops[tvm]')")
    from tinymlops.variants.tvm import cpu_features_of

    assert cpu_features_of({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}) == [
        "AVX", "AVX2", "FMA3"]
    skylake = cpu_features_of({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"})
    assert {"AVX512F", "AVX512BW", "AVX512VL"} <= set(skylake) and "AMXTILE" not in skylake
    assert cpu_features_of({"kind": "llvm", "mtriple": "x86_64-linux-gnu"}) == []  # the baseline ISA
