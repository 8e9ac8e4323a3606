/* context.c: host records of contexts and compiled scripts, and runs.
 * Host thread only. */
#include <stdlib.h>
#include <string.h>

#include "cordon.h"

typedef struct {
  iso_t* iso;
  cdn_engine_script_t* engine;
  uint64_t hash; /* of the source, for code caches */
  int64_t cost;  /* reported with val_adjust_external */
} ctx_script_t;

/* The import callback and the referrer's handle as engine tokens. */
static napi_status ctx__import_tokens(napi_env env, cdn_env_t* cenv,
                                      napi_value* import, cdn_source_t* src) {
  napi_valuetype type;
  CDN_CHECK(napi_typeof(env, import[0], &type));
  if (type != napi_function) return napi_ok;
  CDN_CHECK(
      prm_token_new(cenv, ISO_TOKEN_IMPORT, import[0], &src->import_callback));
  CDN_CHECK(napi_typeof(env, import[1], &type));
  if (type != napi_object && type != napi_function) return napi_ok;
  return prm_token_new(cenv, ISO_TOKEN_WEAK, import[1], &src->import_handle);
}

napi_status ctx_source(napi_env env, cdn_env_t* cenv, napi_value* argv,
                       napi_value cached, napi_value* import, ctx_source_t* s) {
  int32_t lo, co;
  uint16_t* code;
  uint16_t* file;
  napi_valuetype type;
  memset(&s->src, 0, sizeof(s->src));
  s->code_heap = s->file_heap = 0;
  s->taken = 0;
  if (import != NULL) CDN_CHECK(ctx__import_tokens(env, cenv, import, &s->src));
  CDN_CHECK(val_get_utf16(env, argv[0], s->code_buf, CTX_STACK_CODE, &code,
                          &s->src.code_len, &s->code_heap));
  s->src.code = code;
  CDN_CHECK(val_get_utf16(env, argv[1], s->file_buf, CTX_STACK_FILE, &file,
                          &s->src.filename_len, &s->file_heap));
  s->src.filename = file;
  CDN_CHECK(napi_get_value_int32(env, argv[2], &lo));
  CDN_CHECK(napi_get_value_int32(env, argv[3], &co));
  s->src.line_offset = lo;
  s->src.column_offset = co;
  if (cached == NULL) return napi_ok;
  CDN_CHECK(napi_typeof(env, cached, &type));
  if (type == napi_object) {
    /* lib/ passes a Uint8Array view of the user's cachedData. */
    void* data;
    size_t len;
    napi_typedarray_type tt;
    CDN_CHECK(
        napi_get_typedarray_info(env, cached, &tt, &len, &data, NULL, NULL));
    s->src.cached_data = data;
    s->src.cached_len = len;
  }
  return napi_ok;
}

void ctx_source_free(ctx_source_t* s) {
  if (s->code_heap) free((void*)s->src.code);
  if (s->file_heap) free((void*)s->src.filename);
  s->code_heap = s->file_heap = 0;
  if (!s->taken) {
    if (s->src.import_callback != NULL)
      prm_token_release(s->src.import_callback);
    if (s->src.import_handle != NULL) prm_token_release(s->src.import_handle);
  }
  s->src.import_callback = s->src.import_handle = NULL;
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
  napi_status st;
  if (err != CDN_OK) return cdn_throw(env, iso->env, err, out);
  st = fn_value_to_napi(env, iso, out, &v);
  cdn_value_free(out);
  CDN_CALL(env, st);
  return v;
}

/* ---- contexts --------------------------------------------------------- */

/* Let go of the engine context: its code may still run (a late task), so
 * it forgets this record first. */
static void ctx__release(ctx_t* ctx) {
  if (ctx->engine != NULL && ctx->iso->engine != NULL) {
    cdn_engine_context_set_host(ctx->engine, NULL);
    cdn_engine_context_release(ctx->engine);
  }
  /* A queued async job reads it when it starts (ctx__job_body). */
  __atomic_store_n(&ctx->engine, NULL, __ATOMIC_RELEASE);
}

static void ctx__finalize(napi_env env, void* data, void* hint) {
  ctx_t* ctx = data;
  (void)hint;
  val_adjust_external(env, -ctx->cost);
  ctx__release(ctx);
  if (ctx->self != NULL) napi_delete_reference(env, ctx->self);
  ctx->iso->env->n_contexts--;
  iso_unref(ctx->iso);
  free(ctx);
}

/* Run by the host's collector: the sandbox context goes at once (what it
 * holds is the bulk); the reference and the record wait. */
static void ctx__finalize_gc(node_api_basic_env env, void* data, void* hint) {
  ctx_t* ctx = data;
  ctx__release(ctx);
  val_adjust_external(env, -ctx->cost);
  ctx->cost = 0;
  if (node_api_post_finalizer(env, ctx__finalize, data, hint) != napi_ok)
    abort();
}

typedef struct {
  iso_t* iso;
  cdn_value_t globals;
  cdn_engine_context_t* result;
} ctx_new_args_t;

static int ctx__new_body(void* arg, cdn_value_t* out) {
  ctx_new_args_t* a = arg;
  return cdn_engine_context_new(a->iso->engine, &a->globals, &a->result, out);
}

/* contextNew(isolate, globals, contextObject) -> handle; globals encoded by
 * lib/, contextObject lib's Context (held weakly, for import()). */
static napi_value ctx__js_new(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], ext = NULL;
  ctx_new_args_t a;
  cdn_value_t out;
  int err;
  ctx_t* ctx;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  a.iso = iso_from_handle(env, argv[0]);
  if (!iso_alive(a.iso)) return cdn_throw(env, a.iso->env, CDN_KDISPOSED, NULL);
  CDN_CALL(env, val_from_napi(env, a.iso->env, argv[1], &a.globals));
  err = iso_call(a.iso, 0, ctx__new_body, &a, &out);
  val_release(&a.globals);
  if (err != CDN_OK) return cdn_throw(env, a.iso->env, err, &out);

  ctx = malloc(sizeof(*ctx));
  if (ctx == NULL) {
    cdn_engine_context_release(a.result);
    CDN_CALL(env, napi_generic_failure);
  }
  ctx->iso = a.iso;
  ctx->engine = a.result;
  ctx->self = NULL;
  ctx->cost = (int64_t)cdn_engine_ref_cost(a.result);
  val_adjust_external(env, ctx->cost);
  a.iso->refs++;
  a.iso->env->n_contexts++;
  napi_create_reference(env, argv[2], 0, &ctx->self);
  cdn_engine_context_set_host(ctx->engine, ctx);
  if (napi_create_external(env, ctx, ctx__finalize_gc, NULL, &ext) != napi_ok) {
    ctx__finalize(env, ctx, NULL);
    CDN_CALL(env, napi_generic_failure);
  }
  return ext;
}

/* contextDispose(handle) */
static napi_value ctx__js_dispose(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  ctx__release(ctx__external(env, argv[0]));
  return NULL;
}

ctx_t* ctx_live(napi_env env, napi_value v, iso_t** iso) {
  ctx_t* ctx = ctx__external(env, v);
  *iso = ctx->iso;
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
  cdn_engine_context_t* engine = ctx_engine(a->ctx);
  if (engine == NULL) return CDN_EDISPOSED; /* the tokens stay the host's */
  a->source->taken = 1;
  return cdn_engine_run(engine, &a->source->src, out);
}

/* run(context, code, filename, lineOffset, columnOffset, timeoutMs,
 *     importCallback, cpuTimeoutMs) */
static napi_value ctx__js_run(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value argv[8], import[2];
  ctx_source_t source;
  ctx_run_args_t a;
  cdn_value_t out;
  double timeout, cpu;
  iso_t* iso;
  int err;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  a.ctx = ctx_live(env, argv[0], &iso);
  if (a.ctx == NULL) return cdn_pending(env);
  CDN_CALL(env, napi_get_value_double(env, argv[5], &timeout));
  CDN_CALL(env, napi_get_value_double(env, argv[7], &cpu));
  import[0] = argv[6];
  CDN_CALL(env, napi_get_undefined(env, &import[1]));
  if (ctx_source(env, iso->env, argv + 1, NULL, import, &source) != napi_ok) {
    ctx_source_free(&source);
    CDN_CALL(env, napi_generic_failure);
  }
  a.source = &source;
  err = iso_call_ex(iso, timeout, cpu, ctx__run_body, &a, &out);
  ctx_source_free(&source);
  return ctx__result(env, iso, err, &out);
}

/* ---- async runs -----------------------------------------------------------
 */

/* A run of code or of a script on a runner thread. */
typedef struct {
  iso_job_t job;
  ctx_t* ctx;
  ctx_script_t* script; /* NULL: run `source` */
  ctx_source_t source;
} ctx_job_t;

/* Runner thread. The context is read only now: a dispose() after the job
 * was queued leaves it NULL (the engine frees released records only under
 * the lock, which this job holds). */
static int ctx__job_body(void* arg, cdn_value_t* out) {
  ctx_job_t* j = arg;
  cdn_engine_context_t* engine = ctx_engine(j->ctx);
  if (engine == NULL) return CDN_EDISPOSED;
  if (j->script != NULL)
    return cdn_engine_script_run(j->script->engine, engine, out);
  j->source.taken = 1;
  return cdn_engine_run(engine, &j->source.src, out);
}

static void ctx__job_free(iso_job_t* job) {
  ctx_job_t* j = (ctx_job_t*)job;
  if (j->script == NULL) ctx_source_free(&j->source);
  free(j);
}

static ctx_job_t* ctx__job_new(napi_env env, napi_value context,
                               napi_value timeout, napi_value cpu,
                               iso_t** iso) {
  ctx_job_t* j;
  if (ctx_live(env, context, iso) == NULL) return NULL;
  j = calloc(1, sizeof(*j));
  if (j == NULL) {
    cdn_throw_status(env, napi_generic_failure, "job");
    return NULL; /* the caller returns cdn_pending() */
  }
  j->ctx = ctx__external(env, context);
  j->job.iso = *iso;
  j->job.body = ctx__job_body;
  j->job.free = ctx__job_free;
  if (napi_get_value_double(env, timeout, &j->job.timeout_ms) != napi_ok ||
      napi_get_value_double(env, cpu, &j->job.cpu_ms) != napi_ok) {
    free(j);
    cdn_throw_status(env, napi_invalid_arg, "job");
    return NULL; /* the caller returns cdn_pending() */
  }
  return j;
}

/* runAsync(context, code, filename, lineOffset, columnOffset, timeoutMs,
 *          importCallback, cpuTimeoutMs, done) */
static napi_value ctx__js_run_async(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9], import[2];
  ctx_job_t* j;
  iso_t* iso;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  j = ctx__job_new(env, argv[0], argv[5], argv[7], &iso);
  if (j == NULL) return cdn_pending(env);
  import[0] = argv[6];
  if (napi_get_undefined(env, &import[1]) != napi_ok ||
      ctx_source(env, iso->env, argv + 1, NULL, import, &j->source) !=
          napi_ok) {
    ctx__job_free(&j->job);
    CDN_CALL(env, napi_generic_failure);
  }
  return iso_start(env, &j->job, argv[8]);
}

/* scriptRunAsync(script, context, timeoutMs, cpuTimeoutMs, done) */
static napi_value ctx__js_script_run_async(napi_env env,
                                           napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  ctx_job_t* j;
  iso_t* iso;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  j = ctx__job_new(env, argv[1], argv[2], argv[3], &iso);
  if (j == NULL) return cdn_pending(env);
  j->script = ctx__external(env, argv[0]);
  CDN_ASSERT(j->script->iso == iso);
  return iso_start(env, &j->job, argv[4]);
}

/* ---- scripts ---------------------------------------------------------- */

static void ctx__script_finalize(napi_env env, void* data, void* hint) {
  ctx_script_t* s = data;
  (void)hint;
  val_adjust_external(env, -s->cost);
  if (s->engine != NULL && s->iso->engine != NULL)
    cdn_engine_script_release(s->engine);
  s->iso->env->n_scripts--;
  iso_unref(s->iso);
  free(s);
}

/* Run by the host's collector: the compiled script goes at once. */
static void ctx__script_finalize_gc(node_api_basic_env env, void* data,
                                    void* hint) {
  ctx_script_t* s = data;
  if (s->engine != NULL && s->iso->engine != NULL)
    cdn_engine_script_release(s->engine);
  s->engine = NULL;
  val_adjust_external(env, -s->cost);
  s->cost = 0;
  if (node_api_post_finalizer(env, ctx__script_finalize, data, hint) != napi_ok)
    abort();
}

typedef struct {
  iso_t* iso;
  ctx_source_t* source;
  cdn_engine_script_t* result;
  cdn_cache_result_t cache;
  uint64_t hash;
  int accepted; /* cache_accept() */
} ctx_script_new_args_t;

static int ctx__script_new_body(void* arg, cdn_value_t* out) {
  ctx_script_new_args_t* a = arg;
  a->source->taken = 1;
  return cdn_engine_script_new(a->iso->engine, &a->source->src, &a->result, out,
                               &a->cache);
}

static napi_status ctx__script_wrap(napi_env env, iso_t* iso,
                                    cdn_engine_script_t* engine, uint64_t hash,
                                    napi_value* out) {
  napi_status st;
  ctx_script_t* s = malloc(sizeof(*s));
  if (s == NULL) {
    cdn_engine_script_release(engine);
    return napi_generic_failure;
  }
  s->iso = iso;
  s->engine = engine;
  s->hash = hash;
  s->cost = (int64_t)cdn_engine_ref_cost(engine);
  val_adjust_external(env, s->cost);
  iso->refs++;
  iso->env->n_scripts++;
  st = napi_create_external(env, s, ctx__script_finalize_gc, NULL, out);
  if (st != napi_ok) ctx__script_finalize(env, s, NULL);
  return st;
}

napi_status ctx_script_handle(napi_env env, iso_t* iso,
                              cdn_engine_script_t* engine, napi_value* out) {
  return ctx__script_wrap(env, iso, engine, 0, out);
}

static napi_value ctx__script_result(napi_env env, ctx_script_new_args_t* a) {
  napi_value ext, rejected, buf, result;
  CDN_CALL(env, ctx__script_wrap(env, a->iso, a->result, a->hash, &ext));
  CDN_CALL(env,
           napi_create_int32(env, a->accepted < 0 ? 1 : a->cache.cache_rejected,
                             &rejected));
  CDN_CALL(env, cache_to_napi(env, a->hash, a->cache.cache, a->cache.cache_len,
                              &buf));
  CDN_CALL(env, napi_create_array_with_length(env, 3, &result));
  CDN_CALL(env, napi_set_element(env, result, 0, ext));
  CDN_CALL(env, napi_set_element(env, result, 1, rejected));
  CDN_CALL(env, napi_set_element(env, result, 2, buf));
  return result;
}

/* scriptNew(isolate, code, filename, lineOffset, columnOffset, cachedData,
 *           produceCachedData, importCallback, referrerHandle)
 *   -> [handle, cacheRejected, cacheBuffer] */
static napi_value ctx__js_script_new(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9], result;
  ctx_source_t source;
  ctx_script_new_args_t a;
  cdn_value_t out;
  bool produce;
  int err;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  memset(&a, 0, sizeof(a));
  a.iso = iso_from_handle(env, argv[0]);
  if (!iso_alive(a.iso)) return cdn_throw(env, a.iso->env, CDN_KDISPOSED, NULL);
  CDN_CALL(env, napi_get_value_bool(env, argv[6], &produce));
  if (ctx_source(env, a.iso->env, argv + 1, argv[5], argv + 7, &source) !=
      napi_ok) {
    ctx_source_free(&source);
    CDN_CALL(env, napi_generic_failure);
  }
  source.src.produce_cached_data = produce;
  a.hash = cache_hash(&source.src, NULL, 0);
  a.accepted = cache_accept(&source.src, a.hash);
  a.source = &source;
  err = iso_call(a.iso, 0, ctx__script_new_body, &a, &out);
  ctx_source_free(&source);
  if (err != CDN_OK) {
    cdn_cache_result_free(&a.cache);
    return cdn_throw(env, a.iso->env, err, &out);
  }
  result = ctx__script_result(env, &a);
  cdn_cache_result_free(&a.cache);
  return result;
}

static int ctx__script_run_body(void* arg, cdn_value_t* out) {
  ctx_run_args_t* a = arg;
  cdn_engine_context_t* engine = ctx_engine(a->ctx);
  if (engine == NULL) return CDN_EDISPOSED;
  return cdn_engine_script_run(a->script->engine, engine, out);
}

/* scriptRun(script, context, timeoutMs, cpuTimeoutMs). lib/ checks both
 * share an isolate. */
static napi_value ctx__js_script_run(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  ctx_run_args_t a;
  cdn_value_t out;
  double timeout, cpu;
  iso_t* iso;
  int err;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  a.script = ctx__external(env, argv[0]);
  a.ctx = ctx_live(env, argv[1], &iso);
  if (a.ctx == NULL) return cdn_pending(env);
  CDN_ASSERT(a.script->iso == iso);
  CDN_CALL(env, napi_get_value_double(env, argv[2], &timeout));
  CDN_CALL(env, napi_get_value_double(env, argv[3], &cpu));
  err = iso_call_ex(iso, timeout, cpu, ctx__script_run_body, &a, &out);
  return ctx__result(env, iso, err, &out);
}

typedef struct {
  ctx_script_t* script;
  uint8_t* data;
  size_t len;
} ctx_cache_args_t;

static int ctx__script_cache_body(void* arg, cdn_value_t* out) {
  ctx_cache_args_t* a = arg;
  (void)out;
  return cdn_engine_script_cache(a->script->engine, &a->data, &a->len);
}

/* scriptCache(script) -> Buffer */
static napi_value ctx__js_script_cache(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], buf;
  ctx_cache_args_t a = {0};
  cdn_value_t out;
  napi_status st;
  int err;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  a.script = ctx__external(env, argv[0]);
  if (!iso_alive(a.script->iso))
    return cdn_throw(env, a.script->iso->env, CDN_KDISPOSED, NULL);
  err = iso_call(a.script->iso, 0, ctx__script_cache_body, &a, &out);
  if (err != CDN_OK) return cdn_throw(env, a.script->iso->env, err, &out);
  st = cache_to_napi(env, a.script->hash, a.data, a.len, &buf);
  free(a.data);
  CDN_CALL(env, st);
  return buf;
}

napi_value ctx_init_exports(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"contextNew", NULL, ctx__js_new, NULL, NULL, NULL, napi_default, NULL},
      {"contextDispose", NULL, ctx__js_dispose, NULL, NULL, NULL, napi_default,
       NULL},
      {"run", NULL, ctx__js_run, NULL, NULL, NULL, napi_default, NULL},
      {"runAsync", NULL, ctx__js_run_async, NULL, NULL, NULL, napi_default,
       NULL},
      {"scriptRunAsync", NULL, ctx__js_script_run_async, NULL, NULL, NULL,
       napi_default, NULL},
      {"scriptNew", NULL, ctx__js_script_new, NULL, NULL, NULL, napi_default,
       NULL},
      {"scriptRun", NULL, ctx__js_script_run, NULL, NULL, NULL, napi_default,
       NULL},
      {"scriptCache", NULL, ctx__js_script_cache, NULL, NULL, NULL,
       napi_default, NULL},
  };
  CDN_CALL(env, napi_define_properties(
                    env, exports, sizeof(props) / sizeof(props[0]), props));
  return exports;
}
