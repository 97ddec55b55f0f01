/* The smallest application of the model: what flash and static RAM a device needs for it.
   Linked alone (no stdio, no semihosting), so its sizes are the model's plus a reset vector. */
#include <stdint.h>
#include "model.h"

static uint8_t input[MODEL_INPUT_BYTES] __attribute__((aligned(16)));
static uint8_t output[MODEL_OUTPUT_BYTES] __attribute__((aligned(16)));
volatile int footprint_status;

int main(void) {
  footprint_status = model_run((const void *)input, (void *)output);
  return footprint_status;
}

void firmware_exit(int status) {
  (void)status;
  for (;;) {
  }
}
