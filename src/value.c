/* value.c: napi values <-> cdn_value_t. Host thread only. */
#include <stdlib.h>
#include <string.h>

#include "cordon.h"

napi_status val_get_utf16(napi_env env, napi_value v, uint16_t* stack_buf,
                          size_t stack_len, uint16_t** out, size_t* len,
                          int* heap) {
  size_t n;
  uint16_t* buf;
  *heap = 0;
  /* One copy when it fits the stack buffer; napi writes at most len-1 units
   * and a terminator, so a full buffer means "maybe more". */
  CDN_CHECK(
      napi_get_value_string_utf16(env, v, (char16_t*)stack_buf, stack_len, &n));
  if (n + 1 < stack_len) {
    *out = stack_buf;
    *len = n;
    return napi_ok;
  }
  CDN_CHECK(napi_get_value_string_utf16(env, v, NULL, 0, &n));
  buf = malloc((n + 1) * sizeof(uint16_t));
  if (buf == NULL) return napi_generic_failure;
  CDN_CHECK(napi_get_value_string_utf16(env, v, (char16_t*)buf, n + 1, &n));
  *out = buf;
  *len = n;
  *heap = 1;
  return napi_ok;
}

napi_status val_to_napi(napi_env env, const cdn_value_t* v, napi_value* out) {
  switch (v->kind) {
    case CDN_VAL_UNDEFINED:
      return napi_get_undefined(env, out);
    case CDN_VAL_NULL:
      return napi_get_null(env, out);
    case CDN_VAL_BOOL:
      return napi_get_boolean(env, v->boolean != 0, out);
    case CDN_VAL_NUMBER:
      return napi_create_double(env, v->number, out);
    case CDN_VAL_LATIN1:
      return napi_create_string_latin1(env, (const char*)v->u.str8, v->len,
                                       out);
    case CDN_VAL_UTF16:
      return napi_create_string_utf16(env, (const char16_t*)v->u.str16, v->len,
                                      out);
    case CDN_VAL_BYTES:
      return napi_create_buffer_copy(env, v->len, v->u.bytes, NULL, out);
    case CDN_VAL_ERROR:
    case CDN_VAL_REF:
      break; /* fn_value_to_napi's and cdn_throw's */
  }
  return napi_invalid_arg;
}

/* An encoded object from lib/: [bytes, hostFunctions]. The bytes are
 * borrowed; each host function becomes a callback for the engine. */
static napi_status val__from_encoded(napi_env env, cdn_env_t* cenv,
                                     napi_value v, cdn_value_t* out) {
  napi_value bytes, fns, fn;
  uint32_t n = 0, i;
  napi_typedarray_type tt;
  void* data;
  size_t length;
  CDN_CHECK(napi_get_element(env, v, 0, &bytes));
  CDN_CHECK(napi_get_element(env, v, 1, &fns));
  CDN_CHECK(
      napi_get_typedarray_info(env, bytes, &tt, &length, &data, NULL, NULL));
  if (tt != napi_uint8_array) return napi_invalid_arg;
  out->kind = CDN_VAL_BYTES;
  out->u.bytes = data;
  out->len = length;
  out->borrowed = 1;
  CDN_CHECK(napi_get_array_length(env, fns, &n));
  if (n == 0) return napi_ok;
  out->refs = calloc(n, sizeof(void*));
  if (out->refs == NULL) return napi_generic_failure;
  out->nrefs = n;
  for (i = 0; i < n; i++) {
    bool is_promise;
    CDN_CHECK(napi_get_element(env, fns, i, &fn));
    CDN_CHECK(napi_is_promise(env, fn, &is_promise));
    if (is_promise) {
      CDN_CHECK(prm_token_new(cenv, ISO_TOKEN_HOST_PROMISE, fn, &out->refs[i]));
    } else {
      CDN_CHECK(iso_callback_new(cenv, fn, &out->refs[i]));
    }
  }
  return napi_ok;
}

void val_release(cdn_value_t* v) {
  size_t i;
  if (!v->refs_out) {
    for (i = 0; i < v->nrefs; i++) {
      if (v->refs[i] != NULL) iso_callback_free(v->refs[i]);
      v->refs[i] = NULL;
    }
  }
  cdn_value_free(v);
}

napi_status val_from_napi(napi_env env, cdn_env_t* cenv, napi_value v,
                          cdn_value_t* out) {
  napi_valuetype type;
  bool is_array;
  napi_status st;
  memset(out, 0, sizeof(*out));
  CDN_CHECK(napi_typeof(env, v, &type));
  switch (type) {
    case napi_undefined:
      out->kind = CDN_VAL_UNDEFINED;
      return napi_ok;
    case napi_null:
      out->kind = CDN_VAL_NULL;
      return napi_ok;
    case napi_boolean: {
      bool b;
      CDN_CHECK(napi_get_value_bool(env, v, &b));
      out->kind = CDN_VAL_BOOL;
      out->boolean = b;
      return napi_ok;
    }
    case napi_number:
      out->kind = CDN_VAL_NUMBER;
      return napi_get_value_double(env, v, &out->number);
    case napi_string: {
      size_t n;
      CDN_CHECK(napi_get_value_string_utf16(env, v, NULL, 0, &n));
      out->u.str16 = malloc((n + 1) * sizeof(uint16_t));
      if (out->u.str16 == NULL) return napi_generic_failure;
      out->kind = CDN_VAL_UTF16;
      return napi_get_value_string_utf16(env, v, (char16_t*)out->u.str16, n + 1,
                                         &out->len);
    }
    case napi_object:
      CDN_CHECK(napi_is_array(env, v, &is_array));
      if (!is_array) return napi_invalid_arg;
      st = val__from_encoded(env, cenv, v, out);
      if (st != napi_ok) val_release(out);
      return st;
    default:
      return napi_invalid_arg;
  }
}

napi_status val_own(cdn_value_t* v) {
  uint8_t* copy;
  if (!v->borrowed) return napi_ok;
  copy = malloc(v->len > 0 ? v->len : 1);
  if (copy == NULL) return napi_generic_failure;
  memcpy(copy, v->u.bytes, v->len);
  v->u.bytes = copy;
  v->borrowed = 0;
  return napi_ok;
}

/* A UTF-8 copy of a JS string into *out; non-strings leave it NULL. */
static napi_status val__utf8(napi_env env, napi_value v, char** out) {
  napi_valuetype type;
  size_t n;
  CDN_CHECK(napi_typeof(env, v, &type));
  if (type != napi_string) return napi_ok;
  CDN_CHECK(napi_get_value_string_utf8(env, v, NULL, 0, &n));
  if ((*out = malloc(n + 1)) == NULL) return napi_generic_failure;
  return napi_get_value_string_utf8(env, v, *out, n + 1, &n);
}

napi_status val_error_from_napi(napi_env env, napi_value desc, uint32_t first,
                                cdn_value_t* out) {
  napi_value part;
  char** slots[3];
  bool is_buffer;
  void* data;
  size_t len;
  int i;
  memset(out, 0, sizeof(*out));
  out->kind = CDN_VAL_ERROR;
  slots[0] = &out->name;
  slots[1] = &out->message;
  slots[2] = &out->code;
  for (i = 0; i < 3; i++) {
    CDN_CHECK(napi_get_element(env, desc, first + (uint32_t)i, &part));
    CDN_CHECK(val__utf8(env, part, slots[i]));
  }
  CDN_CHECK(napi_get_element(env, desc, first + 3, &part));
  CDN_CHECK(napi_is_buffer(env, part, &is_buffer));
  if (!is_buffer) return napi_ok;
  CDN_CHECK(napi_get_buffer_info(env, part, &data, &len));
  if (len == 0) return napi_ok;
  if ((out->u.bytes = malloc(len)) == NULL) return napi_generic_failure;
  memcpy(out->u.bytes, data, len);
  out->len = len;
  return napi_ok;
}

napi_status val_error_to_napi(napi_env env, const cdn_value_t* v,
                              napi_value* argv) {
  const char* parts[4];
  int i;
  parts[0] = v->name;
  parts[1] = v->message;
  parts[2] = v->stack;
  parts[3] = v->code;
  if (v->u.bytes != NULL && v->len > 0) {
    CDN_CHECK(napi_create_buffer_copy(env, v->len, v->u.bytes, NULL, &argv[0]));
  } else {
    CDN_CHECK(napi_get_undefined(env, &argv[0]));
  }
  for (i = 0; i < 4; i++) {
    if (parts[i] != NULL) {
      CDN_CHECK(napi_create_string_utf8(env, parts[i], NAPI_AUTO_LENGTH,
                                        &argv[1 + i]));
    } else {
      CDN_CHECK(napi_get_undefined(env, &argv[1 + i]));
    }
  }
  return napi_ok;
}

/* Tell the host's collector about sandbox memory a handle keeps alive
 * (`bytes` added, or given back when negative): the handles are small, so
 * without this the host would collect none of them while the sandbox
 * fills. A failure only loses the hint. */
void val_adjust_external(node_api_basic_env env, int64_t bytes) {
  int64_t total;
  if (bytes != 0) (void)napi_adjust_external_memory(env, bytes, &total);
}
