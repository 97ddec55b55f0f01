"""One pre/post module in a wasmtime sandbox: checked before it runs, bounded while it runs, fast per call.

The ABI (DESIGN §6): the module exports `memory` and `process(n: i32) -> i32`;
the host writes one sample's `n` float32 values at offset 0, calls `process(n)`,
and reads the `m` float32 values the module left at offset 0.

The sandbox grants nothing: the module is instantiated with no imports at all (no
WASI, so no files, network or clock), and one that imports anything is refused
when it is compiled, naming the imports.  Its store caps linear memory at
`MAX_MEMORY_BYTES` (instantiation fails above it, `memory.grow` returns -1), and
every call gets `fuel_for(n)` units of fuel (about one per wasm instruction): a
module that loops traps when the fuel runs out, a deterministic bound that is the
same on the build host and on every device (`benchmarks/wasm.py` measures how
long it takes here).  A trap, running out of fuel or a wrong output count fails
that call with `WasmCallError` and instantiates the module afresh; nothing else
is affected.

The call path is the one `wasmtime.Func.__call__` takes without its per-call
work: the function's type is checked once, then each call sets the fuel, copies
the sample into a numpy view of the module's memory, and calls
`wasmtime_func_call_unchecked` with an argument buffer allocated once.
"""

from __future__ import annotations

import ctypes
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.errors import WasmCallError, WasmModuleError
from tinymlops.extras import require_extra

require_extra("wasm", "running WebAssembly pre/post modules", "wasmtime")

import wasmtime  # noqa: E402  (after the extra check, so a missing wasmtime names the extra)
from wasmtime import _ffi as ffi  # noqa: E402

WASM_MAGIC = b"\0asm"
# Linear memory a module may have: the sample modules use 256 KiB; a digits-sized model's I/O needs 256 bytes.
MAX_MEMORY_BYTES = 16 << 20
# Fuel per call: a base for the call itself plus a budget per value in.  The sample post module (softmax and
# top-3) burns ~240 per value, the pre module ~21 (fuel is deterministic); a module that loops traps after
# fuel_for(n) units (1.03 M for 64 values; how long that takes here: benchmarks/wasm.py).
FUEL_BASE = 1_000_000
FUEL_PER_VALUE = 400
F32 = 4

_engine_lock = threading.Lock()
_engine: wasmtime.Engine | None = None
_compiled: dict[str, wasmtime.Module] = {}


def engine() -> wasmtime.Engine:
    """The one engine of this process, configured to meter fuel (modules compile once per digest for it)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            config = wasmtime.Config()
            config.consume_fuel = True
            # Traps by explicit checks, not by catching SIGSEGV/SIGILL: the agent's process also hosts onnxruntime,
            # TVM, torch and others, and a signal handler one of them installs after ours turned a module's trap
            # into the death of the whole process (seen as "Illegal instruction" in the full test suite).
            config.signals_based_traps = False
            _engine = wasmtime.Engine(config)
        return _engine


def fuel_for(values: int) -> int:
    return FUEL_BASE + FUEL_PER_VALUE * values


@dataclass(frozen=True)
class CompiledModule:
    """A module that passed the ABI checks, compiled for `engine()`; `what` names it in every error."""

    module: wasmtime.Module
    sha256: str
    what: str


def compile_module(blob: bytes, sha256: str, *, what: str) -> CompiledModule:
    """Compile (once per digest) and check the ABI; WasmModuleError naming what is wrong.

    The caller has verified `blob` against `sha256` (the signed menu's digest)."""
    if not blob.startswith(WASM_MAGIC):
        raise WasmModuleError(f"{what}: not a WebAssembly binary (no \\0asm header)")
    eng = engine()
    with _engine_lock:
        module = _compiled.get(sha256)
    if module is None:
        try:
            module = wasmtime.Module(eng, blob)
        except wasmtime.WasmtimeError as exc:
            raise WasmModuleError(f"{what}: does not compile ({_first_line(exc)})") from exc
        check_abi(module, what=what)
        with _engine_lock:
            _compiled[sha256] = module
    return CompiledModule(module, sha256, what)


def check_abi(module: wasmtime.Module, *, what: str) -> None:
    """No imports; exports `memory` and `process(i32) -> i32`."""
    imports = [f"{item.module}.{item.name}" for item in module.imports]
    if imports:
        raise WasmModuleError(f"{what}: imports {', '.join(imports)}; a pre/post module may import nothing")
    exports = {item.name: item.type for item in module.exports}
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        raise WasmModuleError(f"{what}: does not export a memory named `memory`")
    process = exports.get("process")
    i32 = wasmtime.ValType.i32()
    if not (isinstance(process, wasmtime.FuncType) and process.params == [i32] and process.results == [i32]):
        raise WasmModuleError(f"{what}: does not export `process(n: i32) -> i32`")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# Our own handles on three C functions (`dll[name]` makes a new one; the bindings' shared ones stay untouched):
# void-pointer results are plain ints, cheaper than the bindings' POINTER results.
def _c_function(name: str, restype: Any, argtypes: list[Any]) -> Any:
    function = ffi.dll[name]
    function.restype, function.argtypes = restype, argtypes
    return function


_CONTEXT, _TRAP = ctypes.POINTER(ffi.wasmtime_context_t), ctypes.POINTER(ctypes.POINTER(ffi.wasm_trap_t))
_call_unchecked = _c_function("wasmtime_func_call_unchecked", ctypes.c_void_p,
                              [_CONTEXT, ctypes.POINTER(ffi.wasmtime_func_t), ctypes.POINTER(ffi.wasmtime_val_raw_t),
                               ctypes.c_size_t, _TRAP])
_memory_data = _c_function("wasmtime_memory_data", ctypes.c_void_p, [_CONTEXT, ctypes.POINTER(ffi.wasmtime_memory_t)])
_set_fuel = _c_function("wasmtime_context_set_fuel", ctypes.c_void_p, [_CONTEXT, ctypes.c_uint64])


class Sandbox:
    """One instance of a compiled module, called sample by sample.  Not thread-safe: one per device agent.

    `outputs`: the number of values each call must return (None: any that fits the memory)."""

    def __init__(self, compiled: CompiledModule, *, outputs: int | None = None,
                 max_memory_bytes: int = MAX_MEMORY_BYTES) -> None:
        self.compiled = compiled
        self.outputs = outputs
        self.max_memory_bytes = max_memory_bytes
        self.calls = 0
        self.failures: Counter[str] = Counter()  # by WasmCallError.reason
        self._instantiate()

    def _instantiate(self) -> None:
        what = self.compiled.what
        store = wasmtime.Store(engine())
        store.set_limits(memory_size=self.max_memory_bytes)
        store.set_fuel(FUEL_BASE)  # a start function that loops is stopped too
        try:
            instance = wasmtime.Instance(store, self.compiled.module, [])
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise WasmModuleError(f"{what}: cannot be instantiated within {self.max_memory_bytes >> 20} MiB "
                                  f"and {FUEL_BASE} fuel ({_first_line(exc)})") from exc
        exports = instance.exports(store)
        memory, process = exports["memory"], exports["process"]
        assert isinstance(memory, wasmtime.Memory) and isinstance(process, wasmtime.Func)  # check_abi
        self._store, self._memory = store, memory  # keep them alive: the raw handles below point into them
        self._context = store._context()
        self._func = ctypes.byref(process._func)
        self._memory_ref = ctypes.byref(memory._memory)
        self._args = (ffi.wasmtime_val_raw_t * 1)()
        self._arg = self._args[0]
        self._trap = ctypes.POINTER(ffi.wasm_trap_t)()
        self._trap_ref = ctypes.byref(self._trap)
        # Memory only grows, so its size now bounds the I/O area for good.
        self.capacity = memory.data_len(store) // F32
        self._base = 0
        self._view: NDArray[np.float32] = np.zeros(0, np.float32)
        self._refresh_view()

    def _refresh_view(self) -> None:
        """Point the numpy view at the memory's current base (growth may move it on a small address space)."""
        base = int(_memory_data(self._context, self._memory_ref) or 0)
        if base != self._base:
            self._base = base
            self._view = np.ctypeslib.as_array((ctypes.c_float * self.capacity).from_address(base))

    def process(self, values: NDArray[np.float32]) -> NDArray[np.float32]:
        """The module's outputs for one sample (flattened); WasmCallError when the call fails."""
        n = values.size
        if n > self.capacity:
            raise self._failed("inputs", f"{n} values do not fit its {self.capacity * F32}-byte memory")
        self.calls += 1
        _set_fuel(self._context, fuel_for(n))
        self._view[:n] = values.reshape(-1)
        self._arg.i32 = n
        error = _call_unchecked(self._context, self._func, self._args, 1, self._trap_ref)
        if error or self._trap:
            raise self._trapped(error, n)
        self._refresh_view()
        m = self._arg.i32
        if not 0 < m <= self.capacity or (self.outputs is not None and m != self.outputs):
            expected = f"{self.outputs}" if self.outputs is not None else f"1..{self.capacity}"
            raise self._failed("outputs", f"returned {m} values for {n}, expected {expected}")
        return self._view[:m].copy()

    def process_many(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """One call per sample of the batch `x` (batch first), stacked: shape (len(x), m)."""
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
        if not len(x):
            return np.zeros((0, self.outputs or 0), np.float32)
        return np.stack([self.process(sample) for sample in x])

    def _trapped(self, error: int | None, n: int) -> WasmCallError:
        if error:
            message = _first_line(wasmtime.WasmtimeError._from_ptr(
                ctypes.cast(error, ctypes.POINTER(ffi.wasmtime_error_t))))
            return self._failed("trap", message, reinstantiate=True)
        trap = wasmtime.Trap._from_ptr(self._trap)  # takes ownership; the call state is rebuilt by _failed
        if trap.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
            return self._failed("fuel", f"stopped after {fuel_for(n):,} fuel for {n} values (a loop?)",
                                reinstantiate=True)
        return self._failed("trap", f"trapped: {_first_line(trap)}", reinstantiate=True)

    def _failed(self, reason: str, message: str, *, reinstantiate: bool = False) -> WasmCallError:
        self.failures[reason] += 1
        if reinstantiate:  # whatever state the module was left in is gone
            self._instantiate()
        return WasmCallError(reason, f"{self.compiled.what}: {message}")
