#include "CCrypto.h"
#include <nettle/hmac.h>

void ccrypto_hmac_sha256(const uint8_t *key, size_t key_length, const uint8_t *data, size_t length, uint8_t out[32]) {
    struct hmac_sha256_ctx ctx;
    hmac_sha256_set_key(&ctx, key_length, key);
    hmac_sha256_update(&ctx, length, data);
    hmac_sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
}
