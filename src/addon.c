/* addon.c: module init and per-environment state.
 *
 * The addon is context-aware: each Node environment (the main thread, each
 * worker thread) gets its own cdn_env_t through napi_set_instance_data, and
 * nothing global is mutable.
 *
 * Teardown (DESIGN.md rules 5 and 6). When the environment goes away
 * (normal exit, the end of a worker, worker.terminate()), Node runs its
 * cleanup hooks with no JS on the stack. Ours is an async cleanup hook
 * (napi_add_async_cleanup_hook): it stops the runner threads, disposes
 * every isolate still alive (each unregistered from the platform before
 * Node tears the platform down), joins the watchdog and closes the
 * environment's libuv handles; it reports itself done only from the close
 * callback of the last handle. Node keeps turning the loop until then and
 * unloads the addon only after: so no close callback runs after the
 * library is gone (a worker that was the first to load cordon used to
 * crash there, in uv__finish_close). Host records that Node finalises
 * afterwards find their isolate disposed and only drop references; the
 * state itself is freed by whichever of the instance-data finaliser, the
 * last isolate record and the last handle lets go of it last.
 * process.exit() skips cleanup hooks: the process ends with isolates alive,
 * which is harmless since nothing runs them.
 */
#include <stdio.h>
#include <stdlib.h>

#include <node_version.h>

#include "cordon.h"

void cdn_abort(const char* file, int line, const char* expr) {
  fprintf(stderr, "cordon: %s:%d: assertion failed: %s\n", file, line, expr);
  fflush(stderr);
  abort();
}

/* Leave `err` as the call's error; returns the marker for the napi
 * callback to return (NULL before lib's setup: then it throws). */
static napi_value cdn__leave(napi_env env, napi_value err) {
  cdn_env_t* cenv = NULL;
  napi_value marker = NULL, box;
  napi_get_instance_data(env, (void**)&cenv);
  if (cenv == NULL || cenv->marker == NULL ||
      napi_get_reference_value(env, cenv->marker, &marker) != napi_ok) {
    napi_throw(env, err);
    return NULL;
  }
  if (cenv->pending != NULL) napi_delete_reference(env, cenv->pending);
  cenv->pending = NULL;
  /* In a box: a thrown value may be a primitive, which a reference cannot
   * hold before Node-API 10. */
  if (napi_create_array_with_length(env, 1, &box) != napi_ok ||
      napi_set_element(env, box, 0, err) != napi_ok ||
      napi_create_reference(env, box, 1, &cenv->pending) != napi_ok) {
    napi_throw(env, err);
    return NULL;
  }
  return marker;
}

napi_value cdn_throw_status(napi_env env, napi_status status,
                            const char* call) {
  bool pending = false;
  char msg[256];
  napi_value code, text, err;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending)
    return NULL; /* a JS exception: it propagates as it is */
  snprintf(msg, sizeof(msg), "cordon internal error %d in %s", (int)status,
           call);
  if (napi_create_string_utf8(env, "ERR_CORDON_INTERNAL", NAPI_AUTO_LENGTH,
                              &code) != napi_ok ||
      napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text) != napi_ok ||
      napi_create_error(env, code, text, &err) != napi_ok) {
    napi_throw_error(env, "ERR_CORDON_INTERNAL", msg);
    return NULL;
  }
  return cdn__leave(env, err);
}

napi_value cdn_pending(napi_env env) {
  cdn_env_t* cenv = NULL;
  napi_value marker = NULL;
  napi_get_instance_data(env, (void**)&cenv);
  if (cenv == NULL || cenv->pending == NULL || cenv->marker == NULL)
    return NULL;
  if (napi_get_reference_value(env, cenv->marker, &marker) != napi_ok)
    return NULL;
  return marker;
}

cdn_env_t* cdn_env_get(napi_env env) {
  void* data = NULL;
  napi_get_instance_data(env, &data);
  CDN_ASSERT(data != NULL);
  return data;
}

void cdn_env_unref(cdn_env_t* cenv) {
  if (--cenv->refs > 0) return;
  wd_close(&cenv->wd);
  free(cenv);
}

void cdn_handle_opened(cdn_env_t* cenv) {
  cenv->handles++;
  cenv->refs++;
}

void cdn_handle_closed(cdn_env_t* cenv) {
  if (--cenv->handles == 0 && cenv->cleanup != NULL) {
    napi_async_cleanup_hook_handle h = cenv->cleanup;
    cenv->cleanup = NULL;
    napi_remove_async_cleanup_hook(h); /* Node may now unload the addon */
  }
  cdn_env_unref(cenv);
}

static napi_value cdn__str(napi_env env, const char* s) {
  napi_value v = NULL;
  if (s == NULL)
    napi_get_undefined(env, &v);
  else
    napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
  return v;
}

void cdn_error_argv(napi_env env, int kind, cdn_value_t* v, napi_value* argv) {
  cdn_value_t empty = {0};
  napi_value e[5];
  if (v == NULL) v = &empty;
  argv[0] = NULL;
  napi_create_int32(env, kind, &argv[0]);
  if (v->kind == CDN_VAL_ERROR && val_error_to_napi(env, v, e) == napi_ok) {
    argv[1] = e[1]; /* name */
    argv[2] = e[2]; /* message */
    argv[3] = e[3]; /* stack */
    argv[4] = e[0]; /* other own properties */
    argv[5] = e[4]; /* code */
  } else {
    argv[1] = cdn__str(env, v->name);
    argv[2] = cdn__str(env, v->message);
    argv[3] = cdn__str(env, v->stack);
    argv[5] = cdn__str(env, v->code);
    /* a thrown value that is not an Error, or the reason of a failure */
    if (v->kind == CDN_VAL_ERROR || val_to_napi(env, v, &argv[4]) != napi_ok)
      napi_get_undefined(env, &argv[4]);
  }
  cdn_value_free(v);
}

/* Build the error through lib's makeError(kind, name, message, stack,
 * value, code) and leave it as the call's outcome. Frees `v`. Returns what
 * the napi callback must return.
 *
 * Not napi_throw: V8 treats any exception thrown from a Node-API callback
 * as uncaught when it predicts its catcher (nodejs/node#28409), so under
 * the host's --abort-on-uncaught-exception the process aborts even though
 * the caller catches it. The error waits in cenv->pending; the callback
 * returns lib's PENDING marker, and lib/binding.js throws the error from
 * JS, where V8 sees the caller's handler. */
napi_value cdn_throw(napi_env env, cdn_env_t* cenv, int kind, cdn_value_t* v) {
  napi_value argv[6], fn, global, err;
  napi_status st;
  cdn_error_argv(env, kind, v, argv);
  st = napi_get_reference_value(env, cenv->make_error, &fn);
  if (st == napi_ok) st = napi_get_global(env, &global);
  if (st == napi_ok) st = napi_call_function(env, global, fn, 6, argv, &err);
  if (st != napi_ok) return cdn_throw_status(env, st, "makeError");
  return cdn__leave(env, err);
}

/* takePending() -> the error cdn_throw left, once. */
static napi_value cdn__js_take_pending(napi_env env, napi_callback_info info) {
  cdn_env_t* cenv = cdn_env_get(env);
  napi_value box, err = NULL;
  (void)info;
  if (cenv->pending == NULL) return NULL;
  CDN_CALL(env, napi_get_reference_value(env, cenv->pending, &box));
  CDN_CALL(env, napi_delete_reference(env, cenv->pending));
  cenv->pending = NULL;
  CDN_CALL(env, napi_get_element(env, box, 0, &err));
  return err;
}

/* Async cleanup hook: the environment is going away. Done when the last
 * libuv handle has closed (cdn_handle_closed). */
static void cdn__env_cleanup(napi_async_cleanup_hook_handle handle, void* arg) {
  cdn_env_t* cenv = arg;
  cenv->closing = 1;
  cenv->refs++;   /* until the end of this function */
  run_stop(cenv); /* async jobs first: they hold isolates */
  while (cenv->isolates != NULL) iso_dispose(cenv->isolates);
  prm_settle_orphans(cenv); /* closing: only frees */
  run_close(cenv);
  wd_close(&cenv->wd);
  if (cenv->handles == 0)
    napi_remove_async_cleanup_hook(handle);
  else
    cenv->cleanup = handle;
  cdn_env_unref(cenv);
}

static void cdn__env_finalize(napi_env env, void* data, void* hint) {
  cdn_env_t* cenv = data;
  (void)hint;
  if (cenv->make_error != NULL) napi_delete_reference(env, cenv->make_error);
  if (cenv->make_deferred != NULL)
    napi_delete_reference(env, cenv->make_deferred);
  if (cenv->adopt != NULL) napi_delete_reference(env, cenv->adopt);
  if (cenv->import_hook != NULL) napi_delete_reference(env, cenv->import_hook);
  if (cenv->rejection_hook != NULL)
    napi_delete_reference(env, cenv->rejection_hook);
  if (cenv->job_scope != NULL) napi_delete_reference(env, cenv->job_scope);
  if (cenv->pending != NULL) napi_delete_reference(env, cenv->pending);
  if (cenv->marker != NULL) napi_delete_reference(env, cenv->marker);
  cenv->pending = cenv->marker = NULL;
  cenv->make_error = cenv->make_deferred = cenv->adopt = NULL;
  cenv->import_hook = cenv->rejection_hook = cenv->job_scope = NULL;
  cdn_env_unref(cenv);
}

/* setup(makeError, makeDeferred, adopt, importHook, rejectionHook,
 * jobScope, PENDING): lib's hooks, once per environment. */
static napi_value cdn__js_setup(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  cdn_env_t* cenv = cdn_env_get(env);
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CDN_ASSERT(cenv->make_error == NULL);
  CDN_CALL(env, napi_create_reference(env, argv[0], 1, &cenv->make_error));
  CDN_CALL(env, napi_create_reference(env, argv[1], 1, &cenv->make_deferred));
  CDN_CALL(env, napi_create_reference(env, argv[2], 1, &cenv->adopt));
  CDN_CALL(env, napi_create_reference(env, argv[3], 1, &cenv->import_hook));
  CDN_CALL(env, napi_create_reference(env, argv[4], 1, &cenv->rejection_hook));
  CDN_CALL(env, napi_create_reference(env, argv[5], 1, &cenv->job_scope));
  CDN_CALL(env, napi_create_reference(env, argv[6], 1, &cenv->marker));
  return NULL;
}

/* shutdown(): the process is exiting (process.exit() skips cleanup
 * hooks): stop async jobs and join the runner threads before Node tears
 * the platform down under them. Sync calls keep working. */
static napi_value cdn__js_shutdown(napi_env env, napi_callback_info info) {
  (void)info;
  run_stop(cdn_env_get(env));
  return NULL;
}

/* cordon calls V8's C++ API besides Node-API, so a binary serves only the
 * Node line it was built against; Node-API would load it into any. Refuse a
 * binary of another line (a stale build/, a copied node_modules) before
 * any V8 call, with a coded error instead of a crash. Module init runs in
 * require(), under the caller's try/catch, so throwing here is fine. */
static int cdn__check_node(napi_env env) {
  const napi_node_version* version = NULL;
  char msg[160];
  napi_value code, text, error;
  if (napi_get_node_version(env, &version) != napi_ok) return -1;
  if (version->major == NODE_MAJOR_VERSION) return 0;
  snprintf(msg, sizeof(msg),
           "cordon's binary was built for Node %d and cannot run on Node %u: "
           "run `npm rebuild cordon`",
           NODE_MAJOR_VERSION, version->major);
  if (napi_create_string_utf8(env, "ERR_CORDON_WRONG_NODE", NAPI_AUTO_LENGTH,
                              &code) == napi_ok &&
      napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text) == napi_ok &&
      napi_create_error(env, code, text, &error) == napi_ok)
    napi_throw(env, error);
  return -1;
}

static napi_value cdn__init(napi_env env, napi_value exports) {
  if (cdn__check_node(env) != 0) return NULL;
  cdn_env_t* cenv = calloc(1, sizeof(*cenv));
  napi_property_descriptor props[] = {
      {"setup", NULL, cdn__js_setup, NULL, NULL, NULL, napi_default, NULL},
      {"shutdown", NULL, cdn__js_shutdown, NULL, NULL, NULL, napi_default,
       NULL},
      {"takePending", NULL, cdn__js_take_pending, NULL, NULL, NULL,
       napi_default, NULL},
  };
  napi_value name;
  if (cenv == NULL) CDN_CALL(env, napi_generic_failure);
  cenv->env = env;
  cenv->refs = 1;
  if (wd_init(&cenv->wd) != 0) {
    free(cenv);
    CDN_CALL(env, napi_generic_failure);
  }
  if (napi_get_uv_event_loop(env, &cenv->loop) != napi_ok ||
      run_init(cenv) != 0) {
    wd_close(&cenv->wd);
    free(cenv);
    CDN_CALL(env, napi_generic_failure);
  }
  CDN_CALL(env, napi_set_instance_data(env, cenv, cdn__env_finalize, NULL));
  CDN_CALL(env, napi_add_async_cleanup_hook(env, cdn__env_cleanup, cenv, NULL));
  CDN_CALL(env,
           napi_create_string_utf8(env, "cordon.run", NAPI_AUTO_LENGTH, &name));
  CDN_CALL(env, napi_async_init(env, NULL, name, &cenv->async));
  CDN_CALL(env, napi_define_properties(
                    env, exports, sizeof(props) / sizeof(props[0]), props));
  if (iso_init_exports(env, exports) == NULL) return NULL;
  if (ctx_init_exports(env, exports) == NULL) return NULL;
  if (fn_init_exports(env, exports) == NULL) return NULL;
  if (prm_init_exports(env, exports) == NULL) return NULL;
  if (mod_init_exports(env, exports) == NULL) return NULL;
  if (cache_init_exports(env, exports) == NULL) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, cdn__init)
