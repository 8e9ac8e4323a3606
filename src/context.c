/* context.c: host records of contexts and compiled scripts, and runs.
 * Host thread only. */
#include <stdlib.h>
#include <string.h>

#include "cordon.h"

/* Code up to this many UTF-16 units is copied to the stack, not the heap. */
#define CTX_STACK_CODE 512

typedef struct {
  iso_t* iso;
  cdn_engine_context_t* engine; /* NULL once disposed */
} ctx_t;

typedef struct {
  iso_t* iso;
  cdn_engine_script_t* engine; /* NULL once released */
} ctx_script_t;

/* A source text pulled out of JS arguments. */
typedef struct {
  cdn_source_t src;
  uint16_t code_buf[CTX_STACK_CODE];
  uint16_t file_buf[128];
  int code_heap;
  int file_heap;
} ctx_source_t;

static napi_status ctx__source(napi_env env, napi_value* argv,
                               ctx_source_t* s) {
  int32_t lo, co;
  uint16_t* code;
  uint16_t* file;
  s->code_heap = s->file_heap = 0;
  CDN_CHECK(val_get_utf16(env, argv[0], s->code_buf, CTX_STACK_CODE, &code,
                          &s->src.code_len, &s->code_heap));
  s->src.code = code;
  CDN_CHECK(val_get_utf16(env, argv[1], s->file_buf, 128, &file,
                          &s->src.filename_len, &s->file_heap));
  s->src.filename = file;
  CDN_CHECK(napi_get_value_int32(env, argv[2], &lo));
  CDN_CHECK(napi_get_value_int32(env, argv[3], &co));
  s->src.line_offset = lo;
  s->src.column_offset = co;
  return napi_ok;
}

static void ctx__source_free(ctx_source_t* s) {
  if (s->code_heap) free((void*)s->src.code);
  if (s->file_heap) free((void*)s->src.filename);
}

static void* ctx__external(napi_env env, napi_value v) {
  void* p = NULL;
  napi_get_value_external(env, v, &p);
  CDN_ASSERT(p != NULL);
  return p;
}

/* A run's outcome as the host sees it: the value, or a thrown error. */
static napi_value ctx__result(napi_env env, iso_t* iso, int err,
                              cdn_value_t* out) {
  napi_value v;
  if (err != CDN_OK) return cdn_throw(env, iso->env, err, out);
  if (val_to_napi(env, out, &v) != napi_ok) {
    cdn_value_free(out);
    CDN_CALL(env, napi_generic_failure);
  }
  cdn_value_free(out);
  return v;
}

/* ---- contexts --------------------------------------------------------- */

static void ctx__finalize(napi_env env, void* data, void* hint) {
  ctx_t* ctx = data;
  (void)env;
  (void)hint;
  if (ctx->engine != NULL && ctx->iso->engine != NULL)
    cdn_engine_context_release(ctx->engine);
  ctx->iso->env->n_contexts--;
  iso_unref(ctx->iso);
  free(ctx);
}

typedef struct {
  iso_t* iso;
  cdn_value_t globals;
  cdn_callback_t* callbacks;
  size_t ncallbacks;
  cdn_engine_context_t* result;
} ctx_new_args_t;

static int ctx__new_body(void* arg, cdn_value_t* out) {
  ctx_new_args_t* a = arg;
  return cdn_engine_context_new(a->iso->engine, &a->globals, a->callbacks,
                                a->ncallbacks, &a->result, out);
}

/* contextNew(isolate, globalsBytes|undefined, names[], fns[]) -> handle */
static napi_value ctx__js_new(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], ext = NULL;
  ctx_new_args_t a;
  cdn_value_t out;
  uint32_t n = 0, i;
  int err;
  ctx_t* ctx;
  napi_status st = napi_ok;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  memset(&a, 0, sizeof(a));
  a.iso = iso_from_handle(env, argv[0]);
  if (!iso_alive(a.iso)) return cdn_throw(env, a.iso->env, CDN_KDISPOSED, NULL);
  CDN_CALL(env, val_from_napi(env, argv[1], &a.globals));
  CDN_CALL(env, napi_get_array_length(env, argv[2], &n));
  a.callbacks = calloc(n > 0 ? n : 1, sizeof(cdn_callback_t));
  if (a.callbacks == NULL) CDN_CALL(env, napi_generic_failure);
  for (i = 0; i < n && st == napi_ok; i++) {
    napi_value name, fn;
    uint16_t* s;
    int heap;
    st = napi_get_element(env, argv[2], i, &name);
    if (st == napi_ok) st = napi_get_element(env, argv[3], i, &fn);
    if (st == napi_ok)
      st = val_get_utf16(env, name, NULL, 0, &s, &a.callbacks[i].name_len,
                         &heap);
    if (st != napi_ok) break;
    a.callbacks[i].name = s;
    st = iso_callback_new(a.iso->env, fn, &a.callbacks[i].cb);
    if (st != napi_ok) break;
    a.ncallbacks++;
  }
  if (st != napi_ok) {
    for (i = 0; i < a.ncallbacks; i++) iso_callback_free(a.callbacks[i].cb);
    err = CDN_EINTERNAL;
    memset(&out, 0, sizeof(out));
  } else {
    err = iso_call(a.iso, 0, ctx__new_body, &a, &out);
  }
  for (i = 0; i < n; i++) free((void*)a.callbacks[i].name);
  free(a.callbacks);
  if (err != CDN_OK) return cdn_throw(env, a.iso->env, err, &out);

  ctx = malloc(sizeof(*ctx));
  if (ctx == NULL) {
    cdn_engine_context_release(a.result);
    CDN_CALL(env, napi_generic_failure);
  }
  ctx->iso = a.iso;
  ctx->engine = a.result;
  a.iso->refs++;
  a.iso->env->n_contexts++;
  if (napi_create_external(env, ctx, ctx__finalize, NULL, &ext) != napi_ok) {
    ctx__finalize(env, ctx, NULL);
    CDN_CALL(env, napi_generic_failure);
  }
  return ext;
}

/* contextDispose(handle) */
static napi_value ctx__js_dispose(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  ctx_t* ctx;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  ctx = ctx__external(env, argv[0]);
  if (ctx->engine != NULL && ctx->iso->engine != NULL)
    cdn_engine_context_release(ctx->engine);
  ctx->engine = NULL;
  return NULL;
}

/* The context behind a handle, or NULL after a throw if it or its isolate
 * is disposed. */
static ctx_t* ctx__live(napi_env env, napi_value v) {
  ctx_t* ctx = ctx__external(env, v);
  if (ctx->engine == NULL || !iso_alive(ctx->iso)) {
    cdn_throw(env, ctx->iso->env, CDN_KDISPOSED, NULL);
    return NULL;
  }
  return ctx;
}

typedef struct {
  ctx_t* ctx;
  ctx_source_t* source;
  ctx_script_t* script;
} ctx_run_args_t;

static int ctx__run_body(void* arg, cdn_value_t* out) {
  ctx_run_args_t* a = arg;
  return cdn_engine_run(a->ctx->engine, &a->source->src, out);
}

/* run(context, code, filename, lineOffset, columnOffset, timeoutMs) */
static napi_value ctx__js_run(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  ctx_source_t source;
  ctx_run_args_t a;
  cdn_value_t out;
  double timeout;
  int err;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  a.ctx = ctx__live(env, argv[0]);
  if (a.ctx == NULL) return NULL;
  CDN_CALL(env, napi_get_value_double(env, argv[5], &timeout));
  if (ctx__source(env, argv + 1, &source) != napi_ok) {
    ctx__source_free(&source);
    CDN_CALL(env, napi_generic_failure);
  }
  a.source = &source;
  err = iso_call(a.ctx->iso, timeout, ctx__run_body, &a, &out);
  ctx__source_free(&source);
  return ctx__result(env, a.ctx->iso, err, &out);
}

/* ---- scripts ---------------------------------------------------------- */

static void ctx__script_finalize(napi_env env, void* data, void* hint) {
  ctx_script_t* s = data;
  (void)env;
  (void)hint;
  if (s->engine != NULL && s->iso->engine != NULL)
    cdn_engine_script_release(s->engine);
  s->iso->env->n_scripts--;
  iso_unref(s->iso);
  free(s);
}

typedef struct {
  iso_t* iso;
  ctx_source_t* source;
  cdn_engine_script_t* result;
} ctx_script_new_args_t;

static int ctx__script_new_body(void* arg, cdn_value_t* out) {
  ctx_script_new_args_t* a = arg;
  return cdn_engine_script_new(a->iso->engine, &a->source->src, &a->result,
                               out);
}

/* scriptNew(isolate, code, filename, lineOffset, columnOffset) -> handle */
static napi_value ctx__js_script_new(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], ext;
  ctx_source_t source;
  ctx_script_new_args_t a;
  cdn_value_t out;
  ctx_script_t* s;
  int err;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  a.iso = iso_from_handle(env, argv[0]);
  if (!iso_alive(a.iso)) return cdn_throw(env, a.iso->env, CDN_KDISPOSED, NULL);
  if (ctx__source(env, argv + 1, &source) != napi_ok) {
    ctx__source_free(&source);
    CDN_CALL(env, napi_generic_failure);
  }
  a.source = &source;
  err = iso_call(a.iso, 0, ctx__script_new_body, &a, &out);
  ctx__source_free(&source);
  if (err != CDN_OK) return cdn_throw(env, a.iso->env, err, &out);
  s = malloc(sizeof(*s));
  if (s == NULL) {
    cdn_engine_script_release(a.result);
    CDN_CALL(env, napi_generic_failure);
  }
  s->iso = a.iso;
  s->engine = a.result;
  a.iso->refs++;
  a.iso->env->n_scripts++;
  if (napi_create_external(env, s, ctx__script_finalize, NULL, &ext) !=
      napi_ok) {
    ctx__script_finalize(env, s, NULL);
    CDN_CALL(env, napi_generic_failure);
  }
  return ext;
}

static int ctx__script_run_body(void* arg, cdn_value_t* out) {
  ctx_run_args_t* a = arg;
  return cdn_engine_script_run(a->script->engine, a->ctx->engine, out);
}

/* scriptRun(script, context, timeoutMs). lib/ checks both share an
 * isolate. */
static napi_value ctx__js_script_run(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  ctx_run_args_t a;
  cdn_value_t out;
  double timeout;
  int err;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  a.script = ctx__external(env, argv[0]);
  a.ctx = ctx__live(env, argv[1]);
  if (a.ctx == NULL) return NULL;
  CDN_ASSERT(a.script->iso == a.ctx->iso);
  if (a.script->engine == NULL)
    return cdn_throw(env, a.ctx->iso->env, CDN_KDISPOSED, NULL);
  CDN_CALL(env, napi_get_value_double(env, argv[2], &timeout));
  err = iso_call(a.ctx->iso, timeout, ctx__script_run_body, &a, &out);
  return ctx__result(env, a.ctx->iso, err, &out);
}

napi_value ctx_init_exports(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"contextNew", NULL, ctx__js_new, NULL, NULL, NULL, napi_default, NULL},
      {"contextDispose", NULL, ctx__js_dispose, NULL, NULL, NULL, napi_default,
       NULL},
      {"run", NULL, ctx__js_run, NULL, NULL, NULL, napi_default, NULL},
      {"scriptNew", NULL, ctx__js_script_new, NULL, NULL, NULL, napi_default,
       NULL},
      {"scriptRun", NULL, ctx__js_script_run, NULL, NULL, NULL, napi_default,
       NULL},
  };
  CDN_CALL(env, napi_define_properties(
                    env, exports, sizeof(props) / sizeof(props[0]), props));
  return exports;
}
