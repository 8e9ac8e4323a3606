/* cordon.h: the addon's private shared header (C11 over Node-API).
 *
 * Modules and prefixes:
 *   addon.c     cdn_  module init, per-environment state, exports
 *   isolate.c   iso_  host records of isolates; locked, deadline-bounded
 *                     calls; the foreground-task wake-up
 *   context.c   ctx_  contexts, scripts and runs
 *   value.c     val_  napi values <-> cdn_value_t
 *   watchdog.c  wd_   the deadline thread
 *
 * Validation of user arguments happens once, in lib/; this layer trusts its
 * caller and only asserts.
 */
#ifndef CORDON_CORDON_H_
#define CORDON_CORDON_H_

#define NAPI_VERSION 8
#include <node_api.h>
#include <stdint.h>
#include <uv.h>

#include "engine/engine.h"
#include "watchdog.h"

/* Check a napi_status; on failure throw (unless an exception is already
 * pending) and return NULL from the enclosing napi callback. */
#define CDN_CALL(env, call)                   \
  do {                                        \
    napi_status cdn__s = (call);              \
    if (cdn__s != napi_ok) {                  \
      cdn_throw_status((env), cdn__s, #call); \
      return NULL;                            \
    }                                         \
  } while (0)

/* The same for helpers that return a napi_status. */
#define CDN_CHECK(call)                   \
  do {                                    \
    napi_status cdn__s = (call);          \
    if (cdn__s != napi_ok) return cdn__s; \
  } while (0)

#define CDN_ASSERT(expr)                               \
  do {                                                 \
    if (!(expr)) cdn_abort(__FILE__, __LINE__, #expr); \
  } while (0)

#define container_of(ptr, type, member) \
  ((type*)((char*)(ptr)-offsetof(type, member)))

typedef struct cdn_env_s cdn_env_t;
typedef struct iso_s iso_t;

/* A host reference the engine holds (refs of values going in, and the
 * tokens of watched promises), released through the isolate's hooks. */
enum {
  ISO_TOKEN_CALLBACK = 1, /* a host function the sandbox calls */
  ISO_TOKEN_HOST_PROMISE, /* a host promise the sandbox awaits */
  ISO_TOKEN_WATCH,        /* lib's deferred for a sandbox promise */
  ISO_TOKEN_IMPORT,       /* an import callback (strong) */
  ISO_TOKEN_WEAK          /* a referrer's host handle (weak) */
};
typedef struct iso_token_s iso_token_t;
struct iso_token_s {
  int kind;
  cdn_env_t* cenv;
  napi_ref ref;
  iso_token_t* next; /* in cenv->orphans */
};

/* A host-side isolate: what an Isolate handle in lib/ points at. */
struct iso_s {
  cdn_env_t* env;
  cdn_engine_isolate_t* engine; /* NULL once disposed */
  int refs;                     /* host handle + contexts + scripts */
  int depth;                    /* runs on the stack */
  int dispose_pending;          /* dispose() was called during a run */
  struct iso_wake_s* wake;      /* the loop handles that run its tasks */
  wd_entry_t* top;              /* the innermost armed deadline */
  napi_async_context async;     /* for delivering promise settlements */
  iso_t* prev;
  iso_t* next;
};

/* Per-environment state (napi_set_instance_data). Refcounted: the instance
 * data holds one reference and every isolate record one, so that whichever
 * of them Node finalises last frees it. */
struct cdn_env_s {
  napi_env env;
  uv_loop_t* loop;
  int refs;
  int closing;
  wd_t wd;
  iso_t* isolates;
  napi_ref make_error;     /* lib's (kind, name, message, stack, value, code) */
  napi_ref make_deferred;  /* lib's () -> { promise, settle(...) } */
  napi_ref adopt;          /* lib's (hostPromise, resolverHandle) */
  napi_ref import_hook;    /* lib's import(): see module.c */
  napi_ref rejection_hook; /* lib's unhandled-rejection report */
  iso_token_t* orphans;    /* watched promises a dispose dropped */
  /* live host records, for tests */
  int64_t n_isolates;
  int64_t n_contexts;
  int64_t n_scripts;
  int64_t n_callbacks;
  int64_t n_functions;
};

void cdn_throw_status(napi_env env, napi_status status, const char* call);
void cdn_abort(const char* file, int line, const char* expr);
void cdn_env_unref(cdn_env_t* cenv);
/* Throw the error lib/ builds for a failed call. `kind` is a status
 * (cdn_status) or one of the CDN_K* below; `v` may hold the error. */
enum { CDN_KDISPOSED = -100, CDN_KTIMEOUT = -101, CDN_KDEPTH = -102 };

/* How deep host callbacks may re-enter one isolate. */
#define CDN_MAX_DEPTH 32
napi_value cdn_throw(napi_env env, cdn_env_t* cenv, int kind, cdn_value_t* v);
cdn_env_t* cdn_env_get(napi_env env);

/* isolate.c */
napi_status iso_new(cdn_env_t* cenv, size_t memory_limit_mb, iso_t** out);
/* Nonzero while the isolate can take new work. */
#define iso_alive(iso) ((iso)->engine != NULL && !(iso)->dispose_pending)
/* Dispose now, or when the run on the stack unwinds. Idempotent. */
void iso_dispose(iso_t* iso);
void iso_unref(iso_t* iso);
/* Keep the host loop alive until the next wake-up (a settlement waits). */
void iso_keep_alive(iso_t* iso);
/* The body of a locked call: runs with the isolate lock held. */
typedef int (*iso_body_fn)(void* arg, cdn_value_t* out);
/* Lock the isolate, arm `timeout_ms` (0: none), run `body`, disarm, cancel
 * a termination of its own, run due tasks, unlock. Returns a cdn_status or
 * CDN_KTIMEOUT / CDN_KDISPOSED. Host thread only (for now). */
int iso_call(iso_t* iso, double timeout_ms, iso_body_fn body, void* arg,
             cdn_value_t* out);
napi_value iso_init_exports(napi_env env, napi_value exports);
/* A host function handed to the engine (which releases it), or freed by
 * iso_callback_free if it never got there. */
napi_status iso_callback_new(cdn_env_t* cenv, napi_value fn, void** out);
void iso_callback_free(void* cb);
/* The record behind an Isolate handle. */
iso_t* iso_from_handle(napi_env env, napi_value v);

/* context.c */
/* Code up to this many UTF-16 units is copied to the stack, not the heap. */
#define CTX_STACK_CODE 512
#define CTX_STACK_FILE 128

/* The host record of a context (the engine's host pointer for it). */
typedef struct {
  iso_t* iso;
  cdn_engine_context_t* engine; /* NULL once disposed */
  napi_ref self;                /* lib's Context, weakly */
} ctx_t;

/* A source text pulled out of JS arguments. */
typedef struct {
  cdn_source_t src;
  uint16_t code_buf[CTX_STACK_CODE];
  uint16_t file_buf[CTX_STACK_FILE];
  int code_heap;
  int file_heap;
  int taken; /* the engine took the import tokens */
} ctx_source_t;

/* argv: code, filename, lineOffset, columnOffset; `cached` (or NULL) a
 * Uint8Array of code cache or undefined; `import` (or NULL) the import
 * callback and argv[5] of it the referrer's handle, to be held weakly.
 * Free with ctx_source_free(), whatever this returned. */
napi_status ctx_source(napi_env env, cdn_env_t* cenv, napi_value* argv,
                       napi_value cached, napi_value* import, ctx_source_t* s);
void ctx_source_free(ctx_source_t* s);
/* The engine context behind a context handle; NULL after throwing
 * ERR_ISOLATE_DISPOSED if it or its isolate is gone. */
cdn_engine_context_t* ctx_live(napi_env env, napi_value v, iso_t** iso);
napi_value ctx_init_exports(napi_env env, napi_value exports);
/* A Script handle for lib/ around an engine script record. */
napi_status ctx_script_handle(napi_env env, iso_t* iso,
                              cdn_engine_script_t* engine, napi_value* out);

/* module.c */
/* hooks->import */
void mod_import(iso_t* iso, cdn_import_t* req);
napi_value mod_init_exports(napi_env env, napi_value exports);

/* value.c */
/* A JS string as UTF-16. Uses `stack_buf` (of `stack_len` units) when it
 * fits; otherwise *out is malloc'd and *heap set. */
napi_status val_get_utf16(napi_env env, napi_value v, uint16_t* stack_buf,
                          size_t stack_len, uint16_t** out, size_t* len,
                          int* heap);
napi_status val_to_napi(napi_env env, const cdn_value_t* v, napi_value* out);
/* A primitive, or an object encoded by lib/ as [bytes, hostFunctions].
 * Borrows the bytes; makes a callback of each host function (refs). */
napi_status val_from_napi(napi_env env, cdn_env_t* cenv, napi_value v,
                          cdn_value_t* out);
/* cdn_value_free, releasing first the callbacks the engine did not take. */
void val_release(cdn_value_t* v);

/* cache.c */
/* A hash of what a code cache is for. */
uint64_t cache_hash(const cdn_source_t* src, const cdn_param_t* params,
                    size_t nparams);
/* Check the header of src->cached_data: 1 and src points at V8's part;
 * -1 (rejected) and the cache is dropped; 0 when there is no cache. */
int cache_accept(cdn_source_t* src, uint64_t hash);
/* A Buffer of header and V8 cache, or undefined when data is NULL. */
napi_status cache_to_napi(napi_env env, uint64_t hash, const uint8_t* data,
                          size_t len, napi_value* out);

/* promise.c */
enum { PRM_FULFILLED = 1, PRM_REJECTED = 2, PRM_DISPOSED = 3 };
napi_status prm_token_new(cdn_env_t* cenv, int kind, napi_value v, void** out);
void prm_token_release(iso_token_t* t);
/* After a dispose: reject the host promises of the sandbox promises it
 * dropped (ERR_ISOLATE_DISPOSED). */
void prm_settle_orphans(cdn_env_t* cenv);
/* Make the host promise for a sandbox promise record (the record's token
 * is now lib's deferred). */
napi_status prm_watch(napi_env env, iso_t* iso, cdn_engine_promise_t* p,
                      napi_value* out);
/* A handle for lib/ that owns a resolver record. */
napi_status prm_resolver_handle(napi_env env, iso_t* iso,
                                cdn_engine_resolver_t* engine, napi_value* out);
cdn_engine_resolver_t* prm_resolver_engine(napi_env env, napi_value v,
                                           iso_t** iso);
/* hooks->adopt: lib settles `engine` when the host promise settles. */
void prm_adopt(iso_t* iso, iso_token_t* t, cdn_engine_resolver_t* engine);
/* Deliver settlements taken from the engine (and free the list). */
void prm_deliver(iso_t* iso, cdn_settlement_t* list, size_t n);
/* Report unhandled rejections taken from the engine (and free the list). */
void prm_report(iso_t* iso, cdn_rejection_t* list, size_t n);
napi_value prm_init_exports(napi_env env, napi_value exports);

/* function.c */
/* A value for lib/: a primitive, a Buffer, or, when it carries functions
 * or promises, [bytes, handles, names, lengths] (the handles take the
 * references; a promise's handle is the host promise, its length -1). */
napi_status fn_value_to_napi(napi_env env, iso_t* iso, cdn_value_t* v,
                             napi_value* out);
napi_value fn_init_exports(napi_env env, napi_value exports);

#endif /* CORDON_CORDON_H_ */
