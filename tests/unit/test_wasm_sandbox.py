"""tinymlops.wasm: the sample modules' results, and every bad module refused or failed with its reason named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinymlops.errors import IntegrityError, WasmCallError, WasmModuleError
from tinymlops.store import sha256_bytes

wasmtime = pytest.importorskip("wasmtime", reason="wasmtime is not installed (pip install 'tinymlops[wasm]')")

from tinymlops.wasm.modules import module_entry, verify_module  # noqa: E402
from tinymlops.wasm.pipeline import ModuleSet  # noqa: E402
from tinymlops.wasm.sandbox import FUEL_BASE, Sandbox, compile_module  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "wasm"


def wasm(body: str, memory: str = '(memory (export "memory") 1)') -> bytes:
    imports = body.startswith("(import")  # imports come first in a module
    data: bytes = wasmtime.wat2wasm(f"(module {body} {memory})" if imports else f"(module {memory} {body})")
    return data


# process(n) returning n without touching memory: the identity module every bad variant below departs from
IDENTITY = '(func (export "process") (param i32) (result i32) local.get 0)'


def sandbox(blob: bytes, *, outputs: int | None = None, max_memory_bytes: int = 16 << 20) -> Sandbox:
    return Sandbox(compile_module(blob, sha256_bytes(blob), what="test module"), outputs=outputs,
                   max_memory_bytes=max_memory_bytes)


def sample_module(name: str) -> Sandbox:
    return sandbox((EXAMPLES / f"{name}.wasm").read_bytes())


def test_pre_scales_raw_pixels_as_the_digits_model_was_trained() -> None:
    raw = np.array([0, 4, 8, 16, 17, -1], np.float32)
    np.testing.assert_array_equal(sample_module("pre_digits").process(raw), [0, 0.25, 0.5, 1, 1, 0])


def test_pre_batches_samples() -> None:
    x = np.random.default_rng(0).integers(0, 17, size=(5, 64)).astype(np.float32)
    np.testing.assert_allclose(sample_module("pre_digits").process_many(x), x / 16, rtol=0, atol=1e-7)


def test_post_softmaxes_logits_into_top3_pairs() -> None:
    logits = np.array([1.0, 3.0, 2.0, 0.5], np.float32)
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    out = sample_module("post_topk").process(logits)
    assert out.shape == (6,)
    np.testing.assert_array_equal(out[0::2], [1, 2, 0])
    np.testing.assert_allclose(out[1::2], probabilities[[1, 2, 0]], rtol=1e-5)


def test_post_keeps_scores_that_already_are_probabilities() -> None:
    probabilities = np.array([0.1, 0.6, 0.05, 0.25], np.float32)
    out = sample_module("post_topk").process(probabilities)
    np.testing.assert_array_equal(out, np.array([1, 0.6, 3, 0.25, 0, 0.1], np.float32))


@pytest.mark.parametrize(("body", "memory", "named"), [
    ('(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))) ' + IDENTITY, None,
     "imports wasi_snapshot_preview1.fd_write"),
    (IDENTITY, "", "does not export a memory named `memory`"),
    ('(func (export "process") (param f32) (result i32) i32.const 0)', None, "process(n: i32) -> i32"),
    ('(func (export "run") (param i32) (result i32) local.get 0)', None, "process(n: i32) -> i32"),
])
def test_a_module_off_the_abi_is_refused_naming_why(body: str, memory: str | None, named: str) -> None:
    blob = wasm(body) if memory is None else wasm(body, memory)
    with pytest.raises(WasmModuleError, match=named.replace("(", r"\(").replace(")", r"\)")):
        compile_module(blob, sha256_bytes(blob), what="test module")


def test_text_is_not_a_module() -> None:
    text = b'(module (memory (export "memory") 1))'
    with pytest.raises(WasmModuleError, match="not a WebAssembly binary"):
        compile_module(text, sha256_bytes(text), what="test module")


def test_a_module_wanting_more_memory_than_the_cap_is_refused() -> None:
    blob = wasm(IDENTITY, '(memory (export "memory") 32)')  # 2 MiB
    with pytest.raises(WasmModuleError, match="cannot be instantiated within 1 MiB"):
        sandbox(blob, max_memory_bytes=1 << 20)


def test_a_start_function_that_loops_is_stopped() -> None:
    blob = wasm('(func $spin (loop $l (br $l))) (start $spin) ' + IDENTITY)
    with pytest.raises(WasmModuleError, match=f"{FUEL_BASE} fuel"):
        sandbox(blob)


def test_a_trap_fails_that_call_only() -> None:
    # traps when asked for 7 values, echoes otherwise
    blob = wasm('(func (export "process") (param i32) (result i32) '
                '(if (i32.eq (local.get 0) (i32.const 7)) (then unreachable)) local.get 0)')
    module = sandbox(blob)
    with pytest.raises(WasmCallError, match="trapped") as caught:
        module.process(np.zeros(7, np.float32))
    assert caught.value.reason == "trap"
    np.testing.assert_array_equal(module.process(np.arange(3, dtype=np.float32)), [0, 1, 2])
    assert module.failures == {"trap": 1} and module.calls == 2


def test_a_loop_is_stopped_by_fuel_and_the_module_serves_again() -> None:
    blob = wasm('(func (export "process") (param i32) (result i32) '
                '(if (i32.eq (local.get 0) (i32.const 5)) (then (loop $l (br $l)))) local.get 0)')
    module = sandbox(blob)
    with pytest.raises(WasmCallError, match="stopped after 1,002,000 fuel for 5 values") as caught:
        module.process(np.zeros(5, np.float32))
    assert caught.value.reason == "fuel"
    assert module.process(np.ones(2, np.float32)).tolist() == [1, 1]


@pytest.mark.parametrize(("returns", "outputs"), [("-1", None), ("0", None), ("100000", None), ("3", 4)])
def test_a_wrong_output_count_fails_that_call(returns: str, outputs: int | None) -> None:
    module = sandbox(wasm(f'(func (export "process") (param i32) (result i32) i32.const {returns})'), outputs=outputs)
    with pytest.raises(WasmCallError, match=f"returned {returns} values") as caught:
        module.process(np.zeros(4, np.float32))
    assert caught.value.reason == "outputs"


def test_more_inputs_than_the_memory_holds_fail_that_call() -> None:
    module = sandbox(wasm(IDENTITY))
    with pytest.raises(WasmCallError, match="do not fit its 65536-byte memory") as caught:
        module.process(np.zeros(16385, np.float32))
    assert caught.value.reason == "inputs"


def test_module_bytes_are_checked_against_the_menu_before_compiling() -> None:
    blob = (EXAMPLES / "pre_digits.wasm").read_bytes()
    entry = module_entry("pre", blob, inputs=64, outputs=64)
    verify_module(blob, entry)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(IntegrityError, match="pre module .*sha256 is"):
        ModuleSet.load({"pre": entry}, {"pre": tampered})
    with pytest.raises(IntegrityError, match="bytes, the signed menu says"):
        verify_module(blob + b"\0", entry)


def test_golden_samples_catch_a_module_that_computes_otherwise() -> None:
    blob = (EXAMPLES / "pre_digits.wasm").read_bytes()
    modules = ModuleSet.load({"pre": module_entry("pre", blob, inputs=2, outputs=2)}, {"pre": blob})
    modules.check({"pre": {"inputs": [[8, 16]], "outputs": [[0.5, 1.0]]}})
    with pytest.raises(WasmModuleError, match="golden sample 0 differs by 0.5"):
        modules.check({"pre": {"inputs": [[8, 16]], "outputs": [[1.0, 1.0]]}})
    with pytest.raises(WasmModuleError, match="no golden samples"):
        modules.check({})
