/* module.c: ES modules and import(), host side. Host thread only.
 *
 * The engine hands each import() to mod_import(), which calls lib's
 * import hook with the compilation's callback, the specifier, the referrer
 * (the host's own handle while it lives, else a new handle to the same
 * sandbox object), the attributes and a resolver. lib/ loads the module
 * graph (moduleNew, moduleRequests, moduleLink), evaluates it
 * (moduleEvaluate) and answers with importResolve or settleSandbox.
 */
#include <stdlib.h>
#include <string.h>

#include "cordon.h"

typedef struct {
  iso_t* iso;
  cdn_engine_module_t* engine;
} mod_t;

static void mod__finalize(napi_env env, void* data, void* hint) {
  mod_t* m = data;
  (void)env;
  (void)hint;
  if (m->iso->engine != NULL) cdn_engine_ref_release(m->engine);
  iso_unref(m->iso);
  free(m);
}

CDN_DEFERRED_FINALIZER(mod__finalize_gc, mod__finalize)

static mod_t* mod__get(napi_env env, napi_value v) {
  mod_t* m = NULL;
  napi_get_value_external(env, v, (void**)&m);
  CDN_ASSERT(m != NULL);
  return m;
}

/* The referrer for lib/: its live handle, or a new one from the engine's
 * record (as [kind, external]), or undefined. */
static napi_status mod__referrer(napi_env env, iso_t* iso, cdn_import_t* req,
                                 napi_value* out) {
  napi_value live = NULL, raw, kind;
  iso_token_t* weak = req->handle;
  if (weak != NULL) napi_get_reference_value(env, weak->ref, &live);
  if (live != NULL || req->referrer == NULL ||
      req->kind == CDN_REFERRER_MODULE) {
    if (req->referrer != NULL && req->kind != CDN_REFERRER_MODULE)
      cdn_engine_ref_release(req->referrer);
    req->referrer = NULL;
    if (live != NULL) {
      *out = live;
      return napi_ok;
    }
    return napi_get_undefined(env, out);
  }
  if (req->kind == CDN_REFERRER_FUNCTION) {
    cdn_value_t v = {0};
    void* refs[1] = {req->referrer};
    v.kind = CDN_VAL_REF;
    v.refs = refs;
    v.nrefs = 1;
    v.refs_out = 1;
    req->referrer = NULL;
    CDN_CHECK(fn_value_to_napi(env, iso, &v, &raw));
  } else {
    CDN_CHECK(ctx_script_handle(env, iso, req->referrer, &raw));
    req->referrer = NULL;
  }
  CDN_CHECK(napi_create_array_with_length(env, 2, out));
  CDN_CHECK(napi_create_int32(env, req->kind, &kind));
  CDN_CHECK(napi_set_element(env, *out, 0, kind));
  return napi_set_element(env, *out, 1, raw);
}

void mod_import(iso_t* iso, cdn_import_t* req) {
  napi_env env = iso->env->env;
  napi_handle_scope scope;
  napi_value argv[6], fn, global, result, exc;
  napi_status st;
  iso_token_t* cb = req->callback;
  ctx_t* host = req->context_host;
  int i;
  if (napi_open_handle_scope(env, &scope) != napi_ok) {
    cdn_engine_resolver_release(req->resolver);
    return;
  }
  for (i = 0; i < 6; i++) napi_get_undefined(env, &argv[i]);
  st = prm_resolver_handle(env, iso, req->resolver, &argv[0]);
  if (st == napi_ok && cb != NULL)
    st = napi_get_reference_value(env, cb->ref, &argv[1]);
  if (st == napi_ok) st = val_to_napi(env, &req->specifier, &argv[2]);
  if (st == napi_ok) st = mod__referrer(env, iso, req, &argv[3]);
  if (st == napi_ok)
    st = fn_value_to_napi(env, iso, &req->attributes, &argv[4]);
  if (st == napi_ok && host != NULL && host->self != NULL)
    st = napi_get_reference_value(env, host->self, &argv[5]);
  if (st == napi_ok)
    st = napi_get_reference_value(env, iso->env->import_hook, &fn);
  if (st == napi_ok) st = napi_get_global(env, &global);
  /* importHook(resolver, callback, specifier, referrer, attributes,
   *            context) */
  if (st == napi_ok) st = napi_call_function(env, global, fn, 6, argv, &result);
  if (st != napi_ok) napi_get_and_clear_last_exception(env, &exc);
  if (req->referrer != NULL && req->kind != CDN_REFERRER_MODULE)
    cdn_engine_ref_release(req->referrer);
  req->referrer = NULL;
  napi_close_handle_scope(env, scope);
}

/* ---- exports ------------------------------------------------------------ */

typedef struct {
  ctx_t* ctx;
  ctx_source_t* source;
  cdn_engine_module_t* result;
} mod_new_args_t;

static int mod__new_body(void* arg, cdn_value_t* out) {
  mod_new_args_t* a = arg;
  cdn_engine_context_t* engine = ctx_engine(a->ctx);
  if (engine == NULL) return CDN_EDISPOSED; /* the tokens stay the host's */
  a->source->taken = 1;
  return cdn_engine_module_new(engine, &a->source->src, &a->result, out);
}

/* moduleNew(context, code, filename, lineOffset, columnOffset,
 *           importCallback, handle) -> module handle */
static napi_value mod__js_new(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7], ext;
  ctx_source_t source;
  mod_new_args_t a;
  cdn_value_t out;
  iso_t* iso;
  mod_t* m;
  int err;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  a.ctx = ctx_live(env, argv[0], &iso);
  if (a.ctx == NULL) return cdn_pending(env);
  if (ctx_source(env, iso->env, argv + 1, NULL, argv + 5, &source) != napi_ok) {
    ctx_source_free(&source);
    CDN_CALL(env, napi_generic_failure);
  }
  a.source = &source;
  err = iso_call(iso, 0, mod__new_body, &a, &out);
  ctx_source_free(&source);
  if (err != CDN_OK) return cdn_throw(env, iso->env, err, &out);
  m = malloc(sizeof(*m));
  if (m == NULL) {
    cdn_engine_ref_release(a.result);
    CDN_CALL(env, napi_generic_failure);
  }
  m->iso = iso;
  m->engine = a.result;
  iso->refs++;
  if (napi_create_external(env, m, mod__finalize_gc, NULL, &ext) != napi_ok) {
    mod__finalize(env, m, NULL);
    CDN_CALL(env, napi_generic_failure);
  }
  return ext;
}

static int mod__requests_body(void* arg, cdn_value_t* out) {
  return cdn_engine_module_requests(arg, out);
}

static int mod__evaluate_body(void* arg, cdn_value_t* out) {
  return cdn_engine_module_evaluate(arg, out);
}

/* moduleRequests(module) / moduleEvaluate(module, timeout): values. */
static napi_value mod__js_value(napi_env env, napi_callback_info info,
                                iso_body_fn body) {
  size_t argc = 2;
  napi_value argv[2], result;
  cdn_value_t out;
  double timeout = 0;
  napi_valuetype type;
  napi_status st;
  mod_t* m;
  int err;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  m = mod__get(env, argv[0]);
  if (!iso_alive(m->iso))
    return cdn_throw(env, m->iso->env, CDN_KDISPOSED, NULL);
  CDN_CALL(env, napi_typeof(env, argv[1], &type));
  if (type == napi_number)
    CDN_CALL(env, napi_get_value_double(env, argv[1], &timeout));
  err = iso_call(m->iso, timeout, body, m->engine, &out);
  if (err != CDN_OK) return cdn_throw(env, m->iso->env, err, &out);
  st = fn_value_to_napi(env, m->iso, &out, &result);
  cdn_value_free(&out);
  CDN_CALL(env, st);
  return result;
}

static int mod__namespace_body(void* arg, cdn_value_t* out) {
  return cdn_engine_module_namespace(arg, out);
}

static napi_value mod__js_namespace(napi_env env, napi_callback_info info) {
  return mod__js_value(env, info, mod__namespace_body);
}

static napi_value mod__js_requests(napi_env env, napi_callback_info info) {
  return mod__js_value(env, info, mod__requests_body);
}

static napi_value mod__js_evaluate(napi_env env, napi_callback_info info) {
  return mod__js_value(env, info, mod__evaluate_body);
}

/* moduleLink(module, index, target) */
static napi_value mod__js_link(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  uint32_t index;
  mod_t* m;
  mod_t* target;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CDN_CALL(env, napi_get_value_uint32(env, argv[1], &index));
  m = mod__get(env, argv[0]);
  target = mod__get(env, argv[2]);
  /* The import callback ran in between: the isolate may be gone. */
  if (!iso_alive(m->iso) || !iso_alive(target->iso))
    return cdn_throw(env, m->iso->env, CDN_KDISPOSED, NULL);
  CDN_ASSERT(m->iso == target->iso);
  cdn_engine_module_link(m->engine, index, target->engine);
  return NULL;
}

typedef struct {
  cdn_engine_resolver_t* resolver;
  cdn_engine_module_t* module;
} mod_resolve_args_t;

static int mod__resolve_body(void* arg, cdn_value_t* out) {
  mod_resolve_args_t* a = arg;
  (void)out;
  return cdn_engine_import_resolve(a->resolver, a->module);
}

/* importResolve(resolver, module, timeout) */
static napi_value mod__js_resolve(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  mod_resolve_args_t a;
  cdn_value_t out;
  double timeout;
  iso_t* iso;
  int err;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  a.resolver = prm_resolver_engine(env, argv[0], &iso);
  a.module = mod__get(env, argv[1])->engine;
  CDN_CALL(env, napi_get_value_double(env, argv[2], &timeout));
  if (!iso_alive(iso)) return cdn_throw(env, iso->env, CDN_KDISPOSED, NULL);
  err = iso_call(iso, timeout, mod__resolve_body, &a, &out);
  if (err != CDN_OK) return cdn_throw(env, iso->env, err, &out);
  return NULL;
}

napi_value mod_init_exports(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"moduleNew", NULL, mod__js_new, NULL, NULL, NULL, napi_default, NULL},
      {"moduleRequests", NULL, mod__js_requests, NULL, NULL, NULL, napi_default,
       NULL},
      {"moduleLink", NULL, mod__js_link, NULL, NULL, NULL, napi_default, NULL},
      {"moduleNamespace", NULL, mod__js_namespace, NULL, NULL, NULL,
       napi_default, NULL},
      {"moduleEvaluate", NULL, mod__js_evaluate, NULL, NULL, NULL, napi_default,
       NULL},
      {"importResolve", NULL, mod__js_resolve, NULL, NULL, NULL, napi_default,
       NULL},
  };
  CDN_CALL(env, napi_define_properties(
                    env, exports, sizeof(props) / sizeof(props[0]), props));
  return exports;
}
