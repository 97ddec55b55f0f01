/* Measurement harness (tinymlops): runs the model on every sample of input.bin, through semihosting.
 *
 * image.sha256: the SHA-256 (32 bytes) the image must have; checked before anything runs, and a
 *             mismatch ends the run with "refused image" and status 3 (see sha256/README.md).
 * input.bin:  the samples back to back (MODEL_INPUT_BYTES each).
 * output.bin: the outputs back to back (MODEL_OUTPUT_BYTES each).
 * stdout:     one line per sample, "run <status> <timer ticks> <stack bytes>".
 * Instructions: with qemu's -icount shift=0 an instruction is 1 ns of virtual time, and the
 * board's CMSDK APB timer 0 (TIMER_BASE, from variants/mcu/boards.py) counts down at its clock: a tick is
 * 40 instructions at 25 MHz (AN386, AN500), 50 at 20 MHz (AN505).
 * Stack: the free stack below the caller is painted before each run, and the distance from the
 * caller's stack pointer to the deepest word the run overwrote is its high-water mark; a run that
 * overwrote the whole painted region reports status 99 (STACK_OUTGROWN).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model.h"

#ifndef TIMER_BASE
#error "TIMER_BASE: the firmware builder passes the board's timer address (-DTIMER_BASE=...)"
#endif
#define TIMER_CTRL (*(volatile uint32_t *)(TIMER_BASE + 0x0u))
#define TIMER_VALUE (*(volatile uint32_t *)(TIMER_BASE + 0x4u))
#define TIMER_RELOAD (*(volatile uint32_t *)(TIMER_BASE + 0x8u))
#define PAINT 0xC0FFEE11u
#define STACK_OUTGROWN 99

extern uint32_t __stack_limit;
extern const uint8_t __image_start[], __image_end[];
typedef struct t_hash_state hash_state; /* sha256/hash_SHA2_template.c */
int SHA256_init(hash_state **state);
int SHA256_update(hash_state *state, const uint8_t *buf, size_t len);
int SHA256_digest(const hash_state *state, uint8_t *digest, size_t digest_size);
int SHA256_destroy(hash_state *state);
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

/* The image in flash must hash to what the flasher promised, or nothing of it runs. */
static int image_verified(void) {
  uint8_t expected[32], actual[32];
  FILE *file = fopen("image.sha256", "rb");
  if (file == NULL || fread(expected, 1, sizeof expected, file) != sizeof expected) {
    printf("refused image: no image.sha256 to check it against\n");
    return 0;
  }
  fclose(file);
  /* The image may start at address 0 (AN386, AN500), which the hash refuses as a NULL buffer: its first
     block goes in through a copy, the rest from flash. */
  uint8_t first[64];
  size_t size = (size_t)(__image_end - __image_start), head = size < sizeof first ? size : sizeof first;
  const uint8_t *volatile base = __image_start;
  memcpy(first, base, head);
  hash_state *state = NULL;
  int failed = SHA256_init(&state) || SHA256_update(state, first, head) ||
               (size > head && SHA256_update(state, base + head, size - head)) ||
               SHA256_digest(state, actual, sizeof actual);
  SHA256_destroy(state);
  if (failed || memcmp(expected, actual, sizeof actual) != 0) {
    printf("refused image: SHA-256 mismatch\n");
    return 0;
  }
  printf("image verified\n");
  return 1;
}

int main(void) {
  initialise_monitor_handles();
  if (!image_verified()) return 3;
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
    if (deepest == &__stack_limit) status = STACK_OUTGROWN; /* the high-water mark is not known */
    printf("run %d %lu %u\n", status, (unsigned long)ticks, used);
    fwrite(output, 1, MODEL_OUTPUT_BYTES, out);
    if (status != 0) break;
  }
  fclose(out);
  fclose(in);
  return 0;
}

void firmware_exit(int status) { exit(status); }
