/* The microbenchmarks compiled for the host (gcc -O2), called through cffi as the JIT is. */
#include "../micro/kernels.h"

unsigned int micro_native_alu_mix(void) { return micro_alu_mix(); }
unsigned int micro_native_branchy(void) { return micro_branchy(); }
unsigned int micro_native_bytes(void) { return micro_bytes(); }
unsigned int micro_native_bitcount(void) { return micro_bitcount(); }
unsigned int micro_native_calls(void) { return micro_calls(); }
