/* The TinyMLOps pre/post module ABI (docs/interfaces.md, "WebAssembly pre/post modules").
 *
 * The host writes one sample's n float32 values at offset 0 of the exported
 * `memory` and calls process(n); the module leaves its m float32 outputs at
 * offset 0 and returns m.  The module imports nothing: no libc, no WASI.
 *
 * These modules are linked with --global-base=65536, so their own data and
 * stack live above the first 64 KiB page, which is the I/O area (up to
 * IO_FLOATS values in and out).  Built with -fno-delete-null-pointer-checks:
 * offset 0 is a valid address in wasm32, not a null pointer to optimise away. */
#ifndef TINYMLOPS_ABI_H
#define TINYMLOPS_ABI_H

#define IO_FLOATS 16384
#define EXPORT(name) __attribute__((export_name(name)))

static float *const io = (float *)0;

#endif
