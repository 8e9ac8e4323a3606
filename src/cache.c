/* cache.c: cordon's header on V8 code caches.
 *
 * V8 checks a code cache against its source by length and flags only, so a
 * cache made for other source of the same length would be accepted, and
 * run the wrong code. Every cache cordon hands out starts with a header
 * holding a hash of what was compiled (the code and, for functions, the
 * parameter names); a cache whose header does not match is rejected before
 * V8 sees it. Host thread only.
 */
#include <stdlib.h>
#include <string.h>

#include "cordon.h"

#define CACHE_MAGIC 0x434e4443u /* "CDNC" */
#define CACHE_VERSION 1u

typedef struct {
  uint32_t magic;
  uint32_t version;
  uint64_t hash;
} cache_header_t;

static uint64_t cache__fnv(uint64_t h, const void* data, size_t len) {
  const unsigned char* p = data;
  size_t i;
  for (i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

uint64_t cache_hash(const cdn_source_t* src, const cdn_param_t* params,
                    size_t nparams) {
  uint64_t h = 0xcbf29ce484222325ull;
  size_t i;
  h = cache__fnv(h, src->code, src->code_len * sizeof(uint16_t));
  for (i = 0; i < nparams; i++) {
    uint64_t len = params[i].len;
    h = cache__fnv(h, &len, sizeof(len));
    h = cache__fnv(h, params[i].name, params[i].len * sizeof(uint16_t));
  }
  return h;
}

int cache_accept(cdn_source_t* src, uint64_t hash) {
  cache_header_t header;
  if (src->cached_data == NULL) return 0;
  if (src->cached_len < sizeof(header)) goto reject;
  memcpy(&header, src->cached_data, sizeof(header));
  if (header.magic != CACHE_MAGIC || header.version != CACHE_VERSION ||
      header.hash != hash)
    goto reject;
  src->cached_data += sizeof(header);
  src->cached_len -= sizeof(header);
  return 1;
reject:
  src->cached_data = NULL;
  src->cached_len = 0;
  return -1;
}

napi_status cache_to_napi(napi_env env, uint64_t hash, const uint8_t* data,
                          size_t len, napi_value* out) {
  cache_header_t header = {CACHE_MAGIC, CACHE_VERSION, hash};
  void* buf;
  if (data == NULL) return napi_get_undefined(env, out);
  CDN_CHECK(napi_create_buffer(env, sizeof(header) + len, &buf, out));
  memcpy(buf, &header, sizeof(header));
  memcpy((char*)buf + sizeof(header), data, len);
  return napi_ok;
}
