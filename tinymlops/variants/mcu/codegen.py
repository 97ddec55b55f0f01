"""A static C driver (`model.c`, `model.h`) for a relax `main` after TVM's memory planning.

Why: TVM 0.27 emits kernels as C (`lib0.c`) but runs them from a bytecode VM
that needs the TVM-FFI runtime, which no microcontroller has.  For a graph
with static shapes, the lowered `main` is a straight line of storage
allocations, tensor views into them and kernel calls; `plan_main` reads that
line into a `ModelPlan` (the only part that touches TVM objects) and `render`
writes it out as C: constant weights in flash, one static arena per planned
storage, one kernel call per step, and the small LIFO workspace pool the
kernels draw their temporaries from.  Anything else in `main` (dynamic shapes,
a VM builtin other than the shape checks and reshape) is refused by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinymlops.errors import UnsupportedOperatorError

# DLPack type codes and the C type of each dtype we can hold in a constant or a buffer.
DTYPES = {
    "float32": (2, 32, "float"), "int8": (0, 8, "int8_t"), "uint8": (1, 8, "uint8_t"),
    "int32": (0, 32, "int32_t"), "int64": (0, 64, "int64_t"), "bool": (6, 8, "uint8_t"),
}
# Bookkeeping the VM needs and a static driver does not: shape checks, lifetime hints.
SKIPPED = {"relax.null_value", "relax.vm.kill_object", "vm.builtin.check_tensor_info", "vm.builtin.match_shape"}
ALIGN = 16
_ALLOC = re.compile(r"TVMBackendAllocWorkspace\(\d+, \w+, \(uint64_t\)(\d+)ULL")
_KERNEL = re.compile(r"^TVM_DLL int32_t __tvm_ffi_(\w+)\(void\* self_handle, [^)]*\) \{", re.MULTILINE)


@dataclass(frozen=True)
class Tensor:
    name: str  # C identifier of its DLTensor
    shape: tuple[int, ...]
    dtype: str
    storage: str | None = None  # arena it lives in (None: the input, or a constant)
    offset: int = 0
    alias_of: str | None = None  # a reshape: same bytes as this tensor

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype][1] // 8


@dataclass
class ModelPlan:
    input: Tensor
    output: Tensor
    storages: dict[str, int] = field(default_factory=dict)  # arena name -> bytes
    tensors: list[Tensor] = field(default_factory=list)  # views and aliases, in order
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # name -> values (shape kept)
    calls: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # kernel, tensor names

    @property
    def arena_bytes(self) -> int:
        return sum(self.storages.values())


def _shape(expr: Any) -> tuple[int, ...]:
    """The static dimensions of a ShapeExpr, or of a tensor-typed expression's type."""
    values = getattr(expr, "values", None)
    if values is None:
        shape = getattr(expr.ty, "shape", None)
        if shape is None:
            raise UnsupportedOperatorError(f"MCU driver: {expr} has no static shape (the MCU driver needs one)")
        values = shape.values
    dims = []
    for dim in values:
        if not hasattr(dim, "value"):
            raise UnsupportedOperatorError(f"MCU driver: dynamic dimension {dim} (the MCU driver needs static shapes)")
        dims.append(int(dim.value))
    return tuple(dims)


def _dtype(ty: Any) -> str:
    dtype = str(getattr(ty, "dtype", "unknown"))
    if dtype not in DTYPES:
        raise UnsupportedOperatorError(f"MCU driver: tensor dtype {dtype} (the MCU driver holds {', '.join(DTYPES)})")
    return dtype


def plan_main(main: Any) -> ModelPlan:
    """The static plan of a lowered relax `main` (after StaticPlanBlockMemory and VM lowering)."""
    from tvm import ir

    if len(main.params) != 1:
        raise UnsupportedOperatorError(f"MCU driver: {len(main.params)} graph inputs (the MCU driver takes one)")
    param = main.params[0]
    inp = Tensor("t_input", _shape(param), _dtype(param.ty))
    names = {param: inp.name}
    tensors: dict[str, Tensor] = {inp.name: inp}
    plan = ModelPlan(input=inp, output=inp)
    tuples: dict[Any, int] = {}

    def operand(arg: Any) -> str:
        if isinstance(arg, ir.GenericConst) and hasattr(arg.value, "numpy"):  # a weight tensor
            name = f"t_const{len(plan.constants)}"
            values = arg.value.numpy()
            plan.constants[name] = values
            tensors[name] = Tensor(name, tuple(values.shape), _dtype(values))
            plan.tensors.append(tensors[name])
            return name
        if arg in names and names[arg] in tensors:
            return names[arg]
        raise UnsupportedOperatorError(f"MCU driver: kernel argument {type(arg).__name__} {arg} (only tensors)")

    for block in main.body.blocks:
        for binding in block.bindings:
            value, var = binding.value, binding.var
            if isinstance(value, ir.Tuple):  # only ever the graph's outputs, gathered for the return
                tuples[var] = len(value.fields)
                continue
            if not isinstance(value, ir.Call):
                raise UnsupportedOperatorError(f"MCU driver: {type(value).__name__} in main (only straight-line calls)")
            op = value.op
            op_name = getattr(op, "name", None) or getattr(op, "global_symbol", None) or ""
            if op_name in SKIPPED:
                continue
            if op_name == "relax.vm.alloc_storage":
                name = f"arena{len(plan.storages)}"
                plan.storages[name] = _shape(value.args[0])[0]
                names[var] = name
            elif op_name == "relax.vm.alloc_tensor":
                storage = names[value.args[0]]
                tensor = Tensor(f"t{len(tensors)}", _shape(value.args[2]), _dtype(var.ty),
                                storage=storage, offset=int(value.args[1].value))
                tensors[tensor.name] = tensor
                plan.tensors.append(tensor)
                names[var] = tensor.name
            elif op_name == "vm.builtin.reshape":
                source = tensors[operand(value.args[0])]
                tensor = Tensor(f"t{len(tensors)}", _shape(value.args[1]), source.dtype, alias_of=source.name)
                tensors[tensor.name] = tensor
                plan.tensors.append(tensor)
                names[var] = tensor.name
            elif isinstance(op, ir.GlobalVar):
                plan.calls.append((op.name_hint, tuple(operand(arg) for arg in value.args)))
            else:
                raise UnsupportedOperatorError(f"MCU driver: VM builtin {op_name or op} (no MCU driver for it)")
    result = main.body.body
    count = len(result.fields) if isinstance(result, ir.Tuple) else tuples.get(result, 1)
    if count != 1:
        raise UnsupportedOperatorError(f"MCU driver: {count} graph outputs (the MCU driver returns one)")
    plan.output = tensors[operand(result)]
    return plan


def workspace_bytes(kernels_c: str) -> int:
    """The LIFO pool the kernels of `kernels_c` need: the largest sum of one kernel's workspaces.

    Each kernel frees its workspaces before it returns, so kernels never hold
    workspace at the same time; within a kernel every allocation is live at once
    at worst.
    """
    starts = [(m.start(), m.group(1)) for m in _KERNEL.finditer(kernels_c)]
    worst = 0
    for i, (start, _name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(kernels_c)
        sizes = [int(s) for s in _ALLOC.findall(kernels_c, start, end)]
        worst = max(worst, sum(-(-size // ALIGN) * ALIGN for size in sizes))
    return worst


def _literal(value: Any, dtype: str) -> str:
    if dtype == "float32":
        number = float(value)
        if not np.isfinite(number):
            return "INFINITY" if number > 0 else ("-INFINITY" if number < 0 else "NAN")
        return f"{number.hex()}f"
    if dtype == "int64":
        return f"{int(value)}LL"
    return str(int(value))


def _const_array(name: str, values: np.ndarray, dtype: str) -> str:
    flat = values.reshape(-1)
    items = [_literal(v, dtype) for v in flat] or ["0"]
    rows = ",\n  ".join(", ".join(items[i : i + 8]) for i in range(0, len(items), 8))
    declaration = f"static const {DTYPES[dtype][2]} {name}_data[{max(len(flat), 1)}] __attribute__((aligned({ALIGN})))"
    return f"{declaration} = {{\n  {rows}\n}};\n"


def _dltensor(tensor: Tensor, data: str) -> list[str]:
    code, bits, _ = DTYPES[tensor.dtype]
    dims = ", ".join(str(d) for d in tensor.shape) or "1"
    return [
        f"static int64_t {tensor.name}_shape[{max(len(tensor.shape), 1)}] = {{{dims}}};",
        f"static DLTensor {tensor.name} = {{(void*){data}, {{kDLCPU, 0}}, {len(tensor.shape)}, "
        f"{{{code}, {bits}, 1}}, {tensor.name}_shape, NULL, 0}};",
    ]


def render(plan: ModelPlan, workspace: int, *, model_name: str,
           build_flags: str = "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16") -> tuple[str, str]:
    """`model.c` and `model.h` of `plan`, with a `workspace`-byte pool for the kernels; `build_flags`: the
    target's CPU flags, as the header tells a firmware build."""
    in_c, out_c = DTYPES[plan.input.dtype][2], DTYPES[plan.output.dtype][2]
    header = f"""/* {model_name}: a TVM-compiled model as plain C, no TVM runtime needed (generated by tinymlops).
 *
 * int model_run(const {in_c} *input, {out_c} *output);
 *   input:  {_shape_text(plan.input)} {plan.input.dtype}, row-major ({plan.input.nbytes} bytes)
 *   output: {_shape_text(plan.output)} {plan.output.dtype}, row-major ({plan.output.nbytes} bytes)
 *   returns 0, or the failing kernel's non-zero status (e.g. the workspace pool ran out).
 *   Not reentrant: activations live in static arenas.
 *
 * Static RAM: {plan.arena_bytes} bytes of arenas + {workspace} bytes of kernel workspace.
 * Build: {build_flags} -O3 -ffunction-sections
 *        with TVM's headers (tvm/include, tvm_ffi/include) on the include path.
 */
#ifndef TINYMLOPS_MODEL_H
#define TINYMLOPS_MODEL_H
#include <stdint.h>
#define MODEL_INPUT_BYTES {plan.input.nbytes}
#define MODEL_OUTPUT_BYTES {plan.output.nbytes}
#define MODEL_ARENA_BYTES {plan.arena_bytes}
#define MODEL_WORKSPACE_BYTES {workspace}
int model_run(const {in_c} *input, {out_c} *output);
#endif
"""
    lines = [
        f"/* {model_name}: static driver for the kernels in lib0.c (generated by tinymlops; see model.h). */",
        "#include <math.h>", "#include <stddef.h>", "#include <string.h>",
        '#include "tvm/ffi/c_api.h"', '#include "tvm/runtime/c_backend_api.h"', '#include "model.h"', "",
        "/* Kernel temporaries: a LIFO pool (TVM frees a kernel's workspaces in reverse order). */",
        f"static uint8_t workspace[MODEL_WORKSPACE_BYTES + 1] __attribute__((aligned({ALIGN})));",
        "static size_t workspace_top, workspace_marks[32], workspace_depth;",
        "void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int code, int bits) {",
        "  (void)device_type; (void)device_id; (void)code; (void)bits;",
        f"  size_t size = (size_t)((nbytes + {ALIGN - 1}u) & ~(uint64_t){ALIGN - 1}u);",
        "  if (workspace_depth == 32 || workspace_top + size > MODEL_WORKSPACE_BYTES) return NULL;",
        "  workspace_marks[workspace_depth++] = workspace_top;",
        "  void* ptr = workspace + workspace_top;",
        "  workspace_top += size;",
        "  return ptr;",
        "}",
        "int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {",
        "  (void)device_type; (void)device_id;",
        "  if (workspace_depth == 0 || ptr != workspace + workspace_marks[workspace_depth - 1]) return -1;",
        "  workspace_top = workspace_marks[--workspace_depth];",
        "  return 0;",
        "}",
        "",
    ]
    kernels = sorted({kernel for kernel, _ in plan.calls})
    lines += [f"int32_t __tvm_ffi_{k}(void* self, void* args, int32_t num_args, void* result);" for k in kernels]
    lines.append("")
    for name, storage in plan.storages.items():
        lines.append(f"static uint8_t {name}[{max(storage, 1)}] __attribute__((aligned({ALIGN})));")
    for name, values in plan.constants.items():
        lines.append(_const_array(name, values, next(t.dtype for t in plan.tensors if t.name == name)))
    lines += _dltensor(plan.input, "NULL")
    by_name = {t.name: t for t in plan.tensors}
    for tensor in plan.tensors:
        if tensor.name in plan.constants:
            lines += _dltensor(tensor, f"{tensor.name}_data")
        elif tensor.alias_of is not None:
            lines += _dltensor(tensor, "NULL")  # set at run time: its source may be the input
        else:
            lines += _dltensor(tensor, f"({tensor.storage} + {tensor.offset})")
    lines += ["", f"int model_run(const {in_c} *input, {out_c} *output) {{",
              "  TVMFFIAny args[8];", "  int32_t status;", "  t_input.data = (void*)input;"]
    for tensor in plan.tensors:
        if tensor.alias_of is not None:
            lines.append(f"  {tensor.name}.data = {by_name.get(tensor.alias_of, plan.input).name}.data;")
    for kernel, operands in plan.calls:
        if len(operands) > 8:
            raise UnsupportedOperatorError(f"MCU driver: kernel {kernel} takes {len(operands)} tensors (at most 8)")
        for i, name in enumerate(operands):
            lines.append(f"  args[{i}].type_index = kTVMFFIDLTensorPtr; args[{i}].zero_padding = 0; "
                         f"args[{i}].v_ptr = &{name};")
        lines.append(f"  status = __tvm_ffi_{kernel}(NULL, args, {len(operands)}, NULL);")
        lines.append("  if (status != 0) return status;")
    lines += [f"  memcpy(output, {plan.output.name}.data, MODEL_OUTPUT_BYTES);", "  return 0;", "}", ""]
    return "\n".join(lines), header


def _shape_text(tensor: Tensor) -> str:
    return "x".join(str(d) for d in tensor.shape) or "scalar"
