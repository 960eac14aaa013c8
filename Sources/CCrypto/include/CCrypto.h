// HMAC-SHA256 from Debian's Nettle (small and self-contained, so the
// statically linked per-VM process stays small): snapshot seals.
#ifndef SKIFF_CCRYPTO_H
#define SKIFF_CCRYPTO_H
#include <stddef.h>
#include <stdint.h>
void ccrypto_hmac_sha256(const uint8_t *key, size_t key_length, const uint8_t *data, size_t length, uint8_t out[32]);
#endif
