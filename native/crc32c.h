/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of the
 * snapshot header and prefetch map (DESIGN.md §4).  See zeroscan.h for the
 * CDEF rules.
 *
 * `crc` is the running value: start with 0, feed the result of one call into
 * the next to checksum a message in pieces.  wr_crc32c(0, "123456789", 9) is
 * 0xE3069283.
 */
#ifndef WRENND_CRC32C_H
#define WRENND_CRC32C_H

#include <stdint.h>

/* CDEF-BEGIN */

/* Uses the SSE4.2 crc32 instruction where the CPU has it, slice-by-8 tables
 * elsewhere; both give the same result. */
uint32_t wr_crc32c(uint32_t crc, const uint8_t *buf, uint64_t len);

/* The portable slice-by-8 path alone (tests compare the two; benchmark floor). */
uint32_t wr_crc32c_portable(uint32_t crc, const uint8_t *buf, uint64_t len);

/* CDEF-END */

#endif
