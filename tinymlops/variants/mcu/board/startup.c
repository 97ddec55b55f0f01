/* Reset and fault vectors for the MPS2 boards' firmware (tinymlops; see variants/mcu/boards.py). */
#include <stdint.h>
#include <string.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
void firmware_exit(int status);

void Reset_Handler(void) {
  memcpy(&_sdata, &_sidata, (size_t)((char *)&_edata - (char *)&_sdata));
  memset(&_sbss, 0, (size_t)((char *)&_ebss - (char *)&_sbss));
  /* The model's kernels use the FPU: grant CP10/CP11 full access before any float instruction. */
  *(volatile uint32_t *)0xE000ED88 |= (0xFu << 20);
  __asm volatile("dsb\n isb");
  firmware_exit(main());
}

/* A fault ends the run with a status the host can tell from a clean exit (no hang in qemu). */
void Fault_Handler(void) { firmware_exit(70); }

__attribute__((section(".isr_vector"), used)) static const void *const vectors[16] = {
  &_estack, (void *)Reset_Handler, (void *)Fault_Handler, (void *)Fault_Handler,
  (void *)Fault_Handler, (void *)Fault_Handler, (void *)Fault_Handler, 0, 0, 0, 0,
  (void *)Fault_Handler, (void *)Fault_Handler, 0, (void *)Fault_Handler, (void *)Fault_Handler,
};
