/* function.c: host handles of sandbox functions (what host proxies call),
 * compileFunction, and calls. Host thread only. */
#include <stdlib.h>
#include <string.h>

#include "cordon.h"

/* Arguments up to this many are converted without a heap allocation. */
#define FN_STACK_ARGS 8

typedef struct {
  iso_t* iso;
  cdn_engine_function_t* engine;
  int64_t cost; /* reported with val_adjust_external */
} fn_t;

static void fn__finalize(napi_env env, void* data, void* hint) {
  fn_t* fn = data;
  (void)hint;
  val_adjust_external(env, -fn->cost);
  if (fn->iso->engine != NULL) cdn_engine_function_release(fn->engine);
  fn->iso->env->n_functions--;
  iso_unref(fn->iso);
  free(fn);
}

/* Run by the host's collector: the record is released at once unless the
 * isolate might go with it (its last reference), which waits. */
static void fn__finalize_gc(node_api_basic_env env, void* data, void* hint) {
  fn_t* fn = data;
  if (fn->iso->refs > 1) {
    if (fn->iso->engine != NULL) cdn_engine_function_release(fn->engine);
    val_adjust_external(env, -fn->cost);
    fn->iso->env->n_functions--;
    fn->iso->refs--;
    free(fn);
  } else if (node_api_post_finalizer(env, fn__finalize, data, hint) !=
             napi_ok) {
    abort();
  }
}

/* A handle for lib/ that owns the function record. */
static napi_status fn__handle(napi_env env, iso_t* iso,
                              cdn_engine_function_t* engine, napi_value* out) {
  fn_t* fn = malloc(sizeof(*fn));
  napi_status st;
  if (fn == NULL) {
    cdn_engine_function_release(engine);
    return napi_generic_failure;
  }
  fn->iso = iso;
  fn->engine = engine;
  fn->cost = (int64_t)cdn_engine_ref_cost(engine);
  val_adjust_external(env, fn->cost);
  iso->refs++;
  iso->env->n_functions++;
  st = napi_create_external(env, fn, fn__finalize_gc, NULL, out);
  if (st != napi_ok) fn__finalize(env, fn, NULL);
  return st;
}

napi_status fn_value_to_napi(napi_env env, iso_t* iso, cdn_value_t* v,
                             napi_value* out) {
  napi_value bytes, handles, names, lengths, h, s, n;
  size_t i;
  if (v->kind == CDN_VAL_REF) {
    CDN_CHECK(napi_get_null(env, &bytes)); /* the value is refs[0] itself */
  } else if (v->kind != CDN_VAL_BYTES || v->nrefs == 0) {
    return val_to_napi(env, v, out);
  } else {
    CDN_CHECK(napi_create_buffer_copy(env, v->len, v->u.bytes, NULL, &bytes));
  }
  CDN_CHECK(napi_create_array_with_length(env, v->nrefs, &handles));
  CDN_CHECK(napi_create_array_with_length(env, v->nrefs, &names));
  CDN_CHECK(napi_create_array_with_length(env, v->nrefs, &lengths));
  for (i = 0; i < v->nrefs; i++) {
    void* ref = v->refs[i];
    v->refs[i] = NULL; /* the handle owns it, even if making it fails */
    if (cdn_engine_ref_kind(ref) == CDN_REF_PROMISE) {
      CDN_CHECK(napi_get_null(env, &s));
      CDN_CHECK(napi_create_int32(env, -1, &n));
      CDN_CHECK(prm_watch(env, iso, ref, &h));
    } else {
      cdn_engine_function_t* engine = ref;
      size_t len;
      const char* name = cdn_engine_function_name(engine, &len);
      CDN_CHECK(napi_create_string_utf8(env, name, len, &s));
      CDN_CHECK(napi_create_int32(env, cdn_engine_function_length(engine), &n));
      CDN_CHECK(fn__handle(env, iso, engine, &h));
    }
    CDN_CHECK(napi_set_element(env, handles, (uint32_t)i, h));
    CDN_CHECK(napi_set_element(env, names, (uint32_t)i, s));
    CDN_CHECK(napi_set_element(env, lengths, (uint32_t)i, n));
  }
  CDN_CHECK(napi_create_array_with_length(env, 4, out));
  CDN_CHECK(napi_set_element(env, *out, 0, bytes));
  CDN_CHECK(napi_set_element(env, *out, 1, handles));
  CDN_CHECK(napi_set_element(env, *out, 2, names));
  return napi_set_element(env, *out, 3, lengths);
}

/* ---- calls ------------------------------------------------------------ */

typedef struct {
  fn_t* fn;
  cdn_value_t* this_arg;
  cdn_value_t* argv;
  size_t argc;
} fn_call_args_t;

static int fn__call_body(void* arg, cdn_value_t* out) {
  fn_call_args_t* a = arg;
  return cdn_engine_call(a->fn->engine, a->this_arg, a->argv, a->argc, out);
}

/* call(handle, timeoutMs, cpuTimeoutMs, thisArg, ...args): values encoded
 * by lib/. */
static napi_value fn__js_call(napi_env env, napi_callback_info info) {
  napi_value stack_argv[4 + FN_STACK_ARGS];
  napi_value* jsargv = stack_argv;
  cdn_value_t stack_vals[FN_STACK_ARGS];
  cdn_value_t* vals = stack_vals;
  cdn_value_t this_arg, out;
  size_t argc = 4 + FN_STACK_ARGS, n, i, made = 0;
  fn_call_args_t a;
  double timeout, cpu;
  napi_status st = napi_ok;
  napi_value result = NULL;
  int err;
  cdn_env_t* cenv;

  CDN_CALL(env, napi_get_cb_info(env, info, &argc, jsargv, NULL, NULL));
  if (argc > 4 + FN_STACK_ARGS) {
    size_t want = argc;
    jsargv = malloc(want * sizeof(napi_value));
    vals = malloc((want - 4) * sizeof(cdn_value_t));
    if (jsargv == NULL || vals == NULL) {
      free(jsargv);
      free(vals);
      CDN_CALL(env, napi_generic_failure);
    }
    CDN_CALL(env, napi_get_cb_info(env, info, &argc, jsargv, NULL, NULL));
  }
  n = argc - 4;
  CDN_CALL(env, napi_get_value_external(env, jsargv[0], (void**)&a.fn));
  cenv = a.fn->iso->env;
  if (!iso_alive(a.fn->iso)) {
    result = cdn_throw(env, cenv, CDN_KDISPOSED, NULL);
    goto done;
  }
  st = napi_get_value_double(env, jsargv[1], &timeout);
  if (st == napi_ok) st = napi_get_value_double(env, jsargv[2], &cpu);
  if (st == napi_ok) st = val_from_napi(env, cenv, jsargv[3], &this_arg);
  if (st != napi_ok) goto done;
  for (i = 0; i < n && st == napi_ok; i++) {
    st = val_from_napi(env, cenv, jsargv[4 + i], &vals[i]);
    if (st == napi_ok) made++;
  }
  if (st != napi_ok) {
    val_release(&this_arg);
    goto done;
  }
  a.this_arg = &this_arg;
  a.argv = vals;
  a.argc = n;
  err = iso_call_ex(a.fn->iso, timeout, cpu, fn__call_body, &a, &out);
  val_release(&this_arg);
  if (err != CDN_OK) {
    result = cdn_throw(env, cenv, err, &out);
  } else {
    st = fn_value_to_napi(env, a.fn->iso, &out, &result);
    cdn_value_free(&out);
  }
done:
  for (i = 0; i < made; i++) val_release(&vals[i]);
  if (jsargv != stack_argv) free(jsargv);
  if (vals != stack_vals) free(vals);
  if (st != napi_ok) return cdn_throw_status(env, st, "call");
  return result;
}

/* A call on a runner thread; the values own their bytes. */
typedef struct {
  iso_job_t job;
  fn_t* fn;
  cdn_value_t this_arg;
  size_t argc;
  size_t made; /* values filled in, for freeing */
  cdn_value_t argv[];
} fn_job_t;

static int fn__job_body(void* arg, cdn_value_t* out) {
  fn_job_t* j = arg;
  return cdn_engine_call(j->fn->engine, &j->this_arg, j->argv, j->argc, out);
}

static void fn__job_free(iso_job_t* job) {
  fn_job_t* j = (fn_job_t*)job;
  size_t i;
  if (j->made > 0) val_release(&j->this_arg);
  for (i = 1; i < j->made; i++) val_release(&j->argv[i - 1]);
  free(j);
}

/* callAsync(handle, timeoutMs, cpuTimeoutMs, done, thisArg, ...args) */
static napi_value fn__js_call_async(napi_env env, napi_callback_info info) {
  size_t argc = 0, n, i;
  napi_value* argv;
  fn_job_t* j;
  fn_t* fn;
  napi_status st;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, NULL, NULL, NULL));
  CDN_ASSERT(argc >= 5);
  n = argc - 5;
  argv = malloc(argc * sizeof(napi_value));
  j = calloc(1, sizeof(*j) + n * sizeof(cdn_value_t));
  if (argv == NULL || j == NULL) {
    free(argv);
    free(j);
    CDN_CALL(env, napi_generic_failure);
  }
  j->job.free = fn__job_free;
  j->job.body = fn__job_body;
  j->argc = n;
  st = napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (st == napi_ok) st = napi_get_value_external(env, argv[0], (void**)&j->fn);
  if (st == napi_ok) {
    fn = j->fn;
    j->job.iso = fn->iso;
    if (!iso_alive(fn->iso)) {
      free(argv);
      fn__job_free(&j->job);
      return cdn_throw(env, fn->iso->env, CDN_KDISPOSED, NULL);
    }
    st = napi_get_value_double(env, argv[1], &j->job.timeout_ms);
  }
  if (st == napi_ok) st = napi_get_value_double(env, argv[2], &j->job.cpu_ms);
  for (i = 0; i <= n && st == napi_ok; i++) {
    cdn_value_t* v = i == 0 ? &j->this_arg : &j->argv[i - 1];
    st = val_from_napi(env, j->fn->iso->env, argv[4 + i], v);
    if (st == napi_ok) {
      j->made++;
      st = val_own(v);
    }
  }
  if (st != napi_ok) {
    free(argv);
    fn__job_free(&j->job);
    CDN_CALL(env, st);
  }
  {
    napi_value done = argv[3];
    free(argv);
    return iso_start(env, &j->job, done);
  }
}

/* ---- compileFunction --------------------------------------------------- */

typedef struct {
  ctx_t* ctx;
  ctx_source_t* source;
  cdn_source_t* src;
  cdn_param_t* params;
  size_t nparams;
  cdn_value_t* extensions;
  cdn_cache_result_t* cache;
} fn_compile_args_t;

static int fn__compile_body(void* arg, cdn_value_t* out) {
  fn_compile_args_t* a = arg;
  cdn_engine_context_t* engine = ctx_engine(a->ctx);
  if (engine == NULL) return CDN_EDISPOSED; /* the tokens stay the host's */
  a->source->taken = 1;
  return cdn_engine_compile_function(engine, a->src, a->params, a->nparams,
                                     a->extensions, out, a->cache);
}

/* compileFunction(context, code, filename, lineOffset, columnOffset,
 *                 params[], extensions, cachedData, produceCachedData,
 *                 importCallback, referrerHandle)
 *   -> [functionValue, cacheRejected, cacheBuffer] */
static napi_value fn__js_compile(napi_env env, napi_callback_info info) {
  size_t argc = 11;
  napi_value argv[11], result = NULL, v;
  ctx_source_t source;
  fn_compile_args_t a;
  cdn_value_t out, extensions;
  cdn_cache_result_t cache = {0};
  uint32_t n = 0, i;
  iso_t* iso;
  bool produce;
  int err, accepted;
  uint64_t hash = 0;
  napi_status st;

  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  a.ctx = ctx_live(env, argv[0], &iso);
  if (a.ctx == NULL) return cdn_pending(env);
  CDN_CALL(env, napi_get_array_length(env, argv[5], &n));
  CDN_CALL(env, napi_get_value_bool(env, argv[8], &produce));
  a.params = calloc(n > 0 ? n : 1, sizeof(cdn_param_t));
  if (a.params == NULL) CDN_CALL(env, napi_generic_failure);
  st = ctx_source(env, iso->env, argv + 1, argv[7], argv + 9, &source);
  a.source = &source;
  for (i = 0; i < n && st == napi_ok; i++) {
    uint16_t* s;
    int heap;
    st = napi_get_element(env, argv[5], i, &v);
    if (st == napi_ok)
      st = val_get_utf16(env, v, NULL, 0, &s, &a.params[i].len, &heap);
    if (st == napi_ok) a.params[i].name = s;
  }
  if (st == napi_ok) st = val_from_napi(env, iso->env, argv[6], &extensions);
  if (st == napi_ok) {
    source.src.produce_cached_data = produce;
    /* Hashing the source costs: only when a cache is given or wanted. */
    if (source.src.cached_data != NULL || produce)
      hash = cache_hash(&source.src, a.params, n);
    accepted = cache_accept(&source.src, hash);
    a.src = &source.src;
    a.nparams = n;
    a.extensions = &extensions;
    a.cache = &cache;
    err = iso_call(iso, 0, fn__compile_body, &a, &out);
    val_release(&extensions);
    if (err != CDN_OK) {
      result = cdn_throw(env, iso->env, err, &out);
    } else {
      napi_value fn, rejected, buf;
      st = fn_value_to_napi(env, iso, &out, &fn);
      cdn_value_free(&out);
      if (st == napi_ok)
        st = napi_create_int32(env, accepted < 0 ? 1 : cache.cache_rejected,
                               &rejected);
      if (st == napi_ok)
        st = cache_to_napi(env, hash, cache.cache, cache.cache_len, &buf);
      if (st == napi_ok) st = napi_create_array_with_length(env, 3, &result);
      if (st == napi_ok) st = napi_set_element(env, result, 0, fn);
      if (st == napi_ok) st = napi_set_element(env, result, 1, rejected);
      if (st == napi_ok) st = napi_set_element(env, result, 2, buf);
    }
  }
  cdn_cache_result_free(&cache);
  ctx_source_free(&source);
  for (i = 0; i < n; i++) free((void*)a.params[i].name);
  free(a.params);
  if (st != napi_ok) return cdn_throw_status(env, st, "compileFunction");
  return result;
}

napi_value fn_init_exports(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"call", NULL, fn__js_call, NULL, NULL, NULL, napi_default, NULL},
      {"callAsync", NULL, fn__js_call_async, NULL, NULL, NULL, napi_default,
       NULL},
      {"compileFunction", NULL, fn__js_compile, NULL, NULL, NULL, napi_default,
       NULL},
  };
  CDN_CALL(env, napi_define_properties(
                    env, exports, sizeof(props) / sizeof(props[0]), props));
  return exports;
}
