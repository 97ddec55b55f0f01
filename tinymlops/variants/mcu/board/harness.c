/* Measurement harness (tinymlops): runs the model on every sample of input.bin, through semihosting.
 *
 * input.bin:  the samples back to back (MODEL_INPUT_BYTES each).
 * output.bin: the outputs back to back (MODEL_OUTPUT_BYTES each).
 * stdout:     one line per sample, "run <status> <timer ticks> <stack bytes>".
 * Instructions: with qemu's -icount shift=0 an instruction is 1 ns of virtual time, and the
 * CMSDK APB timer 0 (0x40000000) counts down at 25 MHz, so a tick is 40 instructions.
 * Stack: the free stack below the caller is painted before each run, and the distance from the
 * caller's stack pointer to the deepest word the run overwrote is its high-water mark.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "model.h"

#define TIMER_CTRL (*(volatile uint32_t *)0x40000000)
#define TIMER_VALUE (*(volatile uint32_t *)0x40000004)
#define TIMER_RELOAD (*(volatile uint32_t *)0x40000008)
#define PAINT 0xC0FFEE11u

extern uint32_t __stack_limit;
extern void initialise_monitor_handles(void);
static uint8_t input[MODEL_INPUT_BYTES] __attribute__((aligned(16)));
static uint8_t output[MODEL_OUTPUT_BYTES] __attribute__((aligned(16)));

__attribute__((noinline)) static uint32_t *stack_pointer(void) {
  uint32_t *sp;
  __asm volatile("mov %0, sp" : "=r"(sp));
  return sp;
}

__attribute__((noinline)) static void paint(uint32_t *top) {
  for (uint32_t *word = &__stack_limit; word < top; ++word) *word = PAINT;
}

int main(void) {
  initialise_monitor_handles();
  FILE *in = fopen("input.bin", "rb");
  FILE *out = fopen("output.bin", "wb");
  if (in == NULL || out == NULL) {
    printf("error cannot open input.bin or output.bin\n");
    return 2;
  }
  while (fread(input, 1, MODEL_INPUT_BYTES, in) == MODEL_INPUT_BYTES) {
    uint32_t *sp = stack_pointer();
    uint32_t *top = sp - 64; /* below paint()'s own frame */
    paint(top);
    TIMER_CTRL = 0;
    TIMER_RELOAD = 0xFFFFFFFFu;
    TIMER_VALUE = 0xFFFFFFFFu;
    TIMER_CTRL = 1;
    uint32_t start = TIMER_VALUE;
    int status = model_run((const void *)input, (void *)output);
    uint32_t ticks = start - TIMER_VALUE;
    uint32_t *deepest = &__stack_limit;
    while (deepest < top && *deepest == PAINT) ++deepest;
    unsigned used = (unsigned)((char *)sp - (char *)deepest);
    printf("run %d %lu %u\n", status, (unsigned long)ticks, used);
    fwrite(output, 1, MODEL_OUTPUT_BYTES, out);
    if (status != 0) break;
  }
  fclose(out);
  fclose(in);
  return 0;
}

void firmware_exit(int status) { exit(status); }
