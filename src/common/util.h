/* util.h - small helpers every part uses: a monotonic clock, rounding up to an
 * alignment, a pause for spin-waits. (Sizes as the tools take them: moe_parse_size
 * in moe.h.) */
#ifndef MOE_COMMON_UTIL_H
#define MOE_COMMON_UTIL_H

#include <stdint.h>

#include "moe.h"

/* Token ids, of models and of tokenizers, are below this (4 Mi; the largest
 * vocabularies are ~256 Ki): no id read from a file can ask for more memory. */
#define MOE_MAX_VOCAB (1u << 22)

/* v rounded up to a multiple of a (a > 0) */
static inline uint64_t moe_align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

/* one round of a spin-wait: tells the core (and a hyperthread sibling) it may idle */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void moe_cpu_relax(void) { _mm_pause(); }
#elif defined(__aarch64__)
static inline void moe_cpu_relax(void) { __asm__ __volatile__("yield"); }
#else
static inline void moe_cpu_relax(void) {}
#endif

#endif
