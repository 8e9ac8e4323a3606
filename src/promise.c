/* promise.c: promises across the boundary, host side. Host thread only.
 *
 * Out of the sandbox: a promise record becomes a host promise made by lib/
 * (makeDeferred); its token is watched by the engine and delivered from
 * the host loop (prm_deliver), inside a callback scope so that the host's
 * microtasks run after it.
 *
 * Into the sandbox: a host promise's token is adopted by the engine, which
 * hands back a resolver; lib/ (adopt) settles it when the host promise
 * settles, through settleSandbox().
 */
#include <stdlib.h>
#include <string.h>

#include "cordon.h"

typedef struct {
  iso_t* iso;
  cdn_engine_resolver_t* engine;
} prm_resolver_t;

/* Call lib's hook `ref` with argv; in a callback scope when `scoped`. */
static napi_status prm__call(napi_env env, iso_t* iso, napi_ref ref,
                             napi_value recv, size_t argc, napi_value* argv,
                             int scoped, napi_value* result) {
  napi_value fn, global;
  CDN_CHECK(napi_get_reference_value(env, ref, &fn));
  if (recv == NULL) {
    CDN_CHECK(napi_get_global(env, &global));
    recv = global;
  }
  if (scoped)
    return napi_make_callback(env, iso->async, recv, fn, argc, argv, result);
  return napi_call_function(env, recv, fn, argc, argv, result);
}

napi_status prm_token_new(cdn_env_t* cenv, int kind, napi_value v, void** out) {
  iso_token_t* t = malloc(sizeof(*t));
  if (t == NULL) return napi_generic_failure;
  t->kind = kind;
  t->cenv = cenv;
  t->next = NULL;
  /* A referrer's handle is held weakly; everything else strongly. */
  if (napi_create_reference(cenv->env, v, kind == ISO_TOKEN_WEAK ? 0 : 1,
                            &t->ref) != napi_ok) {
    free(t);
    return napi_generic_failure;
  }
  *out = t;
  return napi_ok;
}

/* A settled (or disposed) watched promise: lib's deferred.settle(state,
 * value, name, message, stack, code). `v` NULL: the isolate went away. */
static void prm__settle(napi_env env, iso_t* iso, iso_token_t* t, int state,
                        cdn_value_t* v, int scoped) {
  napi_handle_scope scope;
  napi_value deferred, settle, argv[6], result, exc;
  cdn_value_t none = {0};
  napi_status st;
  int i;
  if (v == NULL) v = &none;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  st = napi_get_reference_value(env, t->ref, &deferred);
  if (st == napi_ok)
    st = napi_get_named_property(env, deferred, "settle", &settle);
  if (st == napi_ok) st = napi_create_int32(env, state, &argv[0]);
  for (i = 1; i < 6; i++) napi_get_undefined(env, &argv[i]);
  if (st == napi_ok && v->kind == CDN_VAL_ERROR) {
    st = val_error_to_napi(env, v, &argv[1]);
  } else if (st == napi_ok) {
    st = fn_value_to_napi(env, iso, v, &argv[1]);
  }
  if (st == napi_ok) {
    napi_value fn = settle;
    if (v == &none || !scoped) {
      st = napi_call_function(env, deferred, fn, 6, argv, &result);
    } else {
      st = napi_make_callback(env, iso->async, deferred, fn, 6, argv, &result);
    }
  }
  if (st != napi_ok) napi_get_and_clear_last_exception(env, &exc);
  napi_close_handle_scope(env, scope);
}

void prm_token_release(iso_token_t* t) {
  napi_env env = t->cenv->env;
  if (t->kind == ISO_TOKEN_WATCH && !t->cenv->closing) {
    /* The engine dropped a watched promise unsettled: its isolate is being
     * disposed, inside the engine. The host promise rejects with
     * ERR_ISOLATE_DISPOSED once that is done (prm_settle_orphans): no host
     * code runs while the engine frees its records. */
    t->next = t->cenv->orphans;
    t->cenv->orphans = t;
    return;
  }
  napi_delete_reference(env, t->ref);
  free(t);
}

void prm_settle_orphans(cdn_env_t* cenv) {
  while (cenv->orphans != NULL) {
    iso_token_t* t = cenv->orphans;
    cenv->orphans = t->next;
    if (!cenv->closing) prm__settle(cenv->env, NULL, t, PRM_DISPOSED, NULL, 0);
    napi_delete_reference(cenv->env, t->ref);
    free(t);
  }
}

napi_status prm_watch(napi_env env, iso_t* iso, cdn_engine_promise_t* p,
                      napi_value* out) {
  napi_value deferred;
  void* token;
  napi_status st;
  st =
      prm__call(env, iso, iso->env->make_deferred, NULL, 0, NULL, 0, &deferred);
  if (st == napi_ok)
    st = napi_get_named_property(env, deferred, "promise", out);
  if (st == napi_ok)
    st = prm_token_new(iso->env, ISO_TOKEN_WATCH, deferred, &token);
  CDN_ASSERT(iso->engine != NULL);
  /* No lock: a runner thread may hold the isolate (this runs while a
   * host callback of its job takes a promise as an argument). */
  if (st == napi_ok) {
    cdn_engine_promise_watch(p, token);
    /* Settled already: its delivery keeps the loop alive until it is done. */
    if (cdn_engine_has_settled(iso->engine)) iso_keep_alive(iso);
  } else {
    cdn_engine_ref_release(p);
  }
  return st;
}

/* ---- resolvers: host promises the sandbox awaits ------------------------ */

static void prm__resolver_finalize(napi_env env, void* data, void* hint) {
  prm_resolver_t* r = data;
  (void)env;
  (void)hint;
  if (r->iso->engine != NULL) cdn_engine_resolver_release(r->engine);
  iso_unref(r->iso);
  free(r);
}

CDN_DEFERRED_FINALIZER(prm__resolver_finalize_gc, prm__resolver_finalize)

napi_status prm_resolver_handle(napi_env env, iso_t* iso,
                                cdn_engine_resolver_t* engine,
                                napi_value* out) {
  napi_status st;
  prm_resolver_t* r = malloc(sizeof(*r));
  if (r == NULL) {
    cdn_engine_resolver_release(engine);
    return napi_generic_failure;
  }
  r->iso = iso;
  r->engine = engine;
  iso->refs++;
  st = napi_create_external(env, r, prm__resolver_finalize_gc, NULL, out);
  if (st != napi_ok) prm__resolver_finalize(env, r, NULL);
  return st;
}

cdn_engine_resolver_t* prm_resolver_engine(napi_env env, napi_value v,
                                           iso_t** iso) {
  prm_resolver_t* r = NULL;
  napi_get_value_external(env, v, (void**)&r);
  CDN_ASSERT(r != NULL);
  *iso = r->iso;
  return r->engine;
}

void prm_adopt(iso_t* iso, iso_token_t* t, cdn_engine_resolver_t* engine) {
  napi_env env = iso->env->env;
  napi_handle_scope scope;
  napi_value argv[2], result, exc;
  napi_status st;
  if (napi_open_handle_scope(env, &scope) != napi_ok) {
    cdn_engine_resolver_release(engine);
  } else {
    st = prm_resolver_handle(env, iso, engine, &argv[1]);
    if (st == napi_ok) st = napi_get_reference_value(env, t->ref, &argv[0]);
    if (st == napi_ok)
      st = prm__call(env, iso, iso->env->adopt, NULL, 2, argv, 0, &result);
    if (st != napi_ok) napi_get_and_clear_last_exception(env, &exc);
    napi_close_handle_scope(env, scope);
  }
  prm_token_release(t);
}

typedef struct {
  prm_resolver_t* r;
  int rejected;
  cdn_value_t* value;
} prm_settle_args_t;

static int prm__settle_body(void* arg, cdn_value_t* out) {
  prm_settle_args_t* a = arg;
  (void)out;
  return cdn_engine_resolver_settle(a->r->engine, a->rejected, a->value);
}

/* A settlement queued behind the async job that holds the isolate. */
typedef struct {
  iso_job_t job;
  prm_settle_args_t a;
  cdn_value_t value;
} prm_settle_job_t;

static int prm__settle_job_body(void* arg, cdn_value_t* out) {
  prm_settle_job_t* j = arg;
  return prm__settle_body(&j->a, out);
}

static void prm__settle_job_free(iso_job_t* job) {
  prm_settle_job_t* j = (prm_settle_job_t*)job;
  val_release(&j->value);
  free(j);
}

/* settleSandbox(resolver, rejected, value, timeoutMs, errorDescription,
 *               done[, fromNow]): at once, or, when an async job holds the
 * isolate (or jobs wait for it), as a job after them, which ends by calling
 * lib's `done` (its scope: the context and bound): the host loop never waits
 * for a runner here. */
static napi_value prm__js_settle(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  napi_valuetype desc_type;
  prm_settle_job_t* j;
  cdn_value_t out;
  bool rejected;
  double timeout;
  napi_status st;
  iso_t* iso;
  int err;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  j = calloc(1, sizeof(*j));
  if (j == NULL) CDN_CALL(env, napi_generic_failure);
  j->job.body = prm__settle_job_body;
  j->job.free = prm__settle_job_free;
  st = napi_get_value_external(env, argv[0], (void**)&j->a.r);
  if (st == napi_ok) st = napi_get_value_bool(env, argv[1], &rejected);
  if (st == napi_ok) st = napi_get_value_double(env, argv[3], &timeout);
  if (st == napi_ok) st = napi_typeof(env, argv[4], &desc_type);
  if (st != napi_ok) {
    free(j);
    CDN_CALL(env, st);
  }
  iso = j->a.r->iso;
  if (!iso_alive(iso)) {
    free(j);
    return cdn_throw(env, iso->env, CDN_KDISPOSED, NULL);
  }
  if (desc_type == napi_object)
    st = val_error_from_napi(env, argv[4], 0, &j->value);
  else
    st = val_from_napi(env, iso->env, argv[2], &j->value);
  if (st != napi_ok) {
    prm__settle_job_free(&j->job);
    CDN_CALL(env, st);
  }
  j->a.rejected = rejected;
  j->a.value = &j->value;
  j->job.iso = iso;
  j->job.timeout_ms = timeout;
  if (run_busy(iso)) {
    bool from_now = false;
    /* Queued behind a runner: a bound that is what is left of the unit of
     * work that awaits it counts from now, not from when it runs. */
    if (argc > 6 && napi_get_value_bool(env, argv[6], &from_now) == napi_ok &&
        from_now && timeout > 0)
      j->job.deadline_ns = uv_hrtime() + (uint64_t)(timeout * 1e6);
    /* The job holds the resolver's handle (its finaliser frees the
     * engine's record) until it has run. */
    st = val_own(&j->value);
    if (st == napi_ok)
      st = napi_create_reference(env, argv[0], 1, &j->job.keep);
    if (st == napi_ok)
      st = napi_create_reference(env, argv[5], 1, &j->job.done);
    if (st != napi_ok) {
      if (j->job.keep != NULL) napi_delete_reference(env, j->job.keep);
      prm__settle_job_free(&j->job);
      CDN_CALL(env, st);
    }
    err = iso_submit(&j->job);
    if (err == 0) return NULL;
    napi_delete_reference(env, j->job.keep);
    napi_delete_reference(env, j->job.done);
    prm__settle_job_free(&j->job);
    return cdn_throw(env, iso->env, err, NULL);
  }
  err = iso_call(iso, timeout, prm__settle_body, &j->a, &out);
  prm__settle_job_free(&j->job);
  if (err != CDN_OK) return cdn_throw(env, iso->env, err, &out);
  return NULL;
}

/* ---- delivery ------------------------------------------------------------ */

void prm_deliver(iso_t* iso, cdn_settlement_t* list, size_t n) {
  napi_env env = iso->env->env;
  size_t i;
  for (i = 0; i < n; i++) {
    iso_token_t* t = list[i].token;
    int state =
        list[i].state == CDN_PROMISE_FULFILLED ? PRM_FULFILLED : PRM_REJECTED;
    if (!iso->env->closing) prm__settle(env, iso, t, state, &list[i].value, 1);
    cdn_value_free(&list[i].value);
    napi_delete_reference(env, t->ref);
    free(t);
  }
  free(list);
}

/* Unhandled rejections: lib's rejectionHook(context, value, name, message,
 * stack, code) for each, in a callback scope (listeners are host code). */
void prm_report(iso_t* iso, cdn_rejection_t* list, size_t n) {
  napi_env env = iso->env->env;
  size_t i;
  for (i = 0; i < n; i++) {
    ctx_t* ctx = list[i].context_host;
    cdn_value_t* v = &list[i].reason;
    napi_handle_scope scope;
    napi_value argv[6], fn, result, exc;
    napi_status st = napi_ok;
    int k;
    if (!iso->env->closing && napi_open_handle_scope(env, &scope) == napi_ok) {
      for (k = 0; k < 6; k++) napi_get_undefined(env, &argv[k]);
      if (ctx->self != NULL)
        st = napi_get_reference_value(env, ctx->self, &argv[0]);
      if (st == napi_ok && v->kind == CDN_VAL_ERROR) {
        st = val_error_to_napi(env, v, &argv[1]);
      } else if (st == napi_ok) {
        st = fn_value_to_napi(env, iso, v, &argv[1]);
      }
      if (st == napi_ok)
        st = napi_get_reference_value(env, iso->env->rejection_hook, &fn);
      if (st == napi_ok)
        st = napi_make_callback(env, iso->async, argv[0], fn, 6, argv, &result);
      if (st != napi_ok) napi_get_and_clear_last_exception(env, &exc);
      napi_close_handle_scope(env, scope);
    }
    cdn_value_free(v);
  }
  free(list);
}

napi_value prm_init_exports(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"settleSandbox", NULL, prm__js_settle, NULL, NULL, NULL, napi_default,
       NULL},
  };
  CDN_CALL(env, napi_define_properties(env, exports, 1, props));
  return exports;
}
