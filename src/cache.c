/* cache.c: cordon's header on V8 code caches.
 *
 * V8 checks a code cache against its source by length and flags only, and
 * trusts its contents: a cache made for other source of the same length
 * runs the wrong code, and one corrupted byte can crash the process. So
 * every cache cordon hands out starts with a header holding a keyed tag
 * (SipHash-2-4) over what was compiled (the code and, for functions, the
 * parameter names) and over the cache bytes themselves. A cache whose tag
 * does not verify is rejected before V8 sees it.
 *
 * The key is random per process unless the host sets one
 * (setCodeCacheKey): caches then verify in every process that shares that
 * key. Without the key, a forged or altered cache cannot be made to pass.
 *
 * Any thread (the key is read under a mutex); the napi functions on the
 * host thread.
 */
#include <stdlib.h>
#include <string.h>

#include "cordon.h"

#define CACHE_MAGIC 0x434e4443u /* "CDNC" */
#define CACHE_VERSION 2u

typedef struct {
  uint32_t magic;
  uint32_t version;
  uint64_t tag;
} cache_header_t;

/* SipHash-2-4, incremental: the state, and up to 7 bytes not yet mixed. */
typedef struct {
  uint64_t v0, v1, v2, v3;
  uint64_t tail;
  size_t ntail;
  uint64_t total;
} cache_sip_t;

#define CACHE_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static void cache__round(cache_sip_t* s) {
  s->v0 += s->v1;
  s->v1 = CACHE_ROTL(s->v1, 13);
  s->v1 ^= s->v0;
  s->v0 = CACHE_ROTL(s->v0, 32);
  s->v2 += s->v3;
  s->v3 = CACHE_ROTL(s->v3, 16);
  s->v3 ^= s->v2;
  s->v0 += s->v3;
  s->v3 = CACHE_ROTL(s->v3, 21);
  s->v3 ^= s->v0;
  s->v2 += s->v1;
  s->v1 = CACHE_ROTL(s->v1, 17);
  s->v1 ^= s->v2;
  s->v2 = CACHE_ROTL(s->v2, 32);
}

static void cache__block(cache_sip_t* s, uint64_t m) {
  s->v3 ^= m;
  cache__round(s);
  cache__round(s);
  s->v0 ^= m;
}

static void cache__sip_init(cache_sip_t* s, const uint64_t key[2]) {
  s->v0 = key[0] ^ 0x736f6d6570736575ull;
  s->v1 = key[1] ^ 0x646f72616e646f6dull;
  s->v2 = key[0] ^ 0x6c7967656e657261ull;
  s->v3 = key[1] ^ 0x7465646279746573ull;
  s->tail = 0;
  s->ntail = 0;
  s->total = 0;
}

/* Bytes in little-endian words, whatever the host's byte order. */
static void cache__sip_update(cache_sip_t* s, const void* data, size_t len) {
  const unsigned char* p = data;
  size_t i = 0;
  s->total += len;
  while (s->ntail > 0 && s->ntail < 8 && i < len)
    s->tail |= (uint64_t)p[i++] << (8 * s->ntail++);
  if (s->ntail == 8) {
    cache__block(s, s->tail);
    s->tail = 0;
    s->ntail = 0;
  }
  for (; i + 8 <= len; i += 8) {
    uint64_t m = (uint64_t)p[i] | (uint64_t)p[i + 1] << 8 |
                 (uint64_t)p[i + 2] << 16 | (uint64_t)p[i + 3] << 24 |
                 (uint64_t)p[i + 4] << 32 | (uint64_t)p[i + 5] << 40 |
                 (uint64_t)p[i + 6] << 48 | (uint64_t)p[i + 7] << 56;
    cache__block(s, m);
  }
  while (i < len) s->tail |= (uint64_t)p[i++] << (8 * s->ntail++);
}

static uint64_t cache__sip_final(cache_sip_t* s) {
  cache__block(s, s->tail | (s->total & 0xff) << 56);
  s->v2 ^= 0xff;
  cache__round(s);
  cache__round(s);
  cache__round(s);
  cache__round(s);
  return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

static uv_once_t cache__once = UV_ONCE_INIT;
static uv_mutex_t cache__mu;
static uint64_t cache__key[2];

static void cache__init_key(void) {
  uint64_t key[2] = {0, 0};
  if (uv_mutex_init(&cache__mu) != 0) abort();
  /* Random per process; without entropy there is no safe key. */
  if (uv_random(NULL, NULL, key, sizeof(key), 0, NULL) != 0) abort();
  memcpy(cache__key, key, sizeof(key));
}

static void cache__get_key(uint64_t key[2]) {
  uv_once(&cache__once, cache__init_key);
  uv_mutex_lock(&cache__mu);
  key[0] = cache__key[0];
  key[1] = cache__key[1];
  uv_mutex_unlock(&cache__mu);
}

void cache_set_key(const void* secret, size_t len) {
  /* Two fixed-key SipHashes of the secret make the 128-bit key. */
  static const uint64_t derive[2][2] = {
      {0x636f72646f6e2d31ull, 0x6b65792d64657269ull},
      {0x636f72646f6e2d32ull, 0x6b65792d64657269ull}};
  uint64_t key[2];
  int i;
  for (i = 0; i < 2; i++) {
    cache_sip_t s;
    cache__sip_init(&s, derive[i]);
    cache__sip_update(&s, secret, len);
    key[i] = cache__sip_final(&s);
  }
  uv_once(&cache__once, cache__init_key);
  uv_mutex_lock(&cache__mu);
  cache__key[0] = key[0];
  cache__key[1] = key[1];
  uv_mutex_unlock(&cache__mu);
}

uint64_t cache_hash(const cdn_source_t* src, const cdn_param_t* params,
                    size_t nparams) {
  uint64_t key[2], n;
  cache_sip_t s;
  size_t i;
  cache__get_key(key);
  cache__sip_init(&s, key);
  n = src->code_len;
  cache__sip_update(&s, &n, sizeof(n));
  cache__sip_update(&s, src->code, src->code_len * sizeof(uint16_t));
  for (i = 0; i < nparams; i++) {
    n = params[i].len;
    cache__sip_update(&s, &n, sizeof(n));
    cache__sip_update(&s, params[i].name, params[i].len * sizeof(uint16_t));
  }
  return cache__sip_final(&s);
}

/* The tag of a cache: the source's keyed hash, then V8's bytes. */
static uint64_t cache__tag(uint64_t hash, const uint8_t* data, size_t len) {
  uint64_t key[2];
  cache_sip_t s;
  cache__get_key(key);
  cache__sip_init(&s, key);
  cache__sip_update(&s, &hash, sizeof(hash));
  cache__sip_update(&s, data, len);
  return cache__sip_final(&s);
}

int cache_accept(cdn_source_t* src, uint64_t hash) {
  cache_header_t header;
  if (src->cached_data == NULL) return 0;
  if (src->cached_len < sizeof(header)) goto reject;
  memcpy(&header, src->cached_data, sizeof(header));
  if (header.magic != CACHE_MAGIC || header.version != CACHE_VERSION ||
      header.tag != cache__tag(hash, src->cached_data + sizeof(header),
                               src->cached_len - sizeof(header)))
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
  cache_header_t header = {CACHE_MAGIC, CACHE_VERSION, 0};
  void* buf;
  if (data == NULL) return napi_get_undefined(env, out);
  header.tag = cache__tag(hash, data, len);
  CDN_CHECK(napi_create_buffer(env, sizeof(header) + len, &buf, out));
  memcpy(buf, &header, sizeof(header));
  memcpy((char*)buf + sizeof(header), data, len);
  return napi_ok;
}

/* setCodeCacheKey(bytes): a Uint8Array of at least 16 bytes (lib/ checks). */
static napi_value cache__js_set_key(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_typedarray_type type;
  size_t len;
  void* data;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CDN_CALL(env, napi_get_typedarray_info(env, argv[0], &type, &len, &data, NULL,
                                         NULL));
  if (type != napi_uint8_array) CDN_CALL(env, napi_invalid_arg);
  cache_set_key(data, len);
  return NULL;
}

napi_value cache_init_exports(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"setCodeCacheKey", NULL, cache__js_set_key, NULL, NULL, NULL,
       napi_default, NULL},
  };
  if (napi_define_properties(env, exports, 1, props) != napi_ok) return NULL;
  return exports;
}
