/* cordon.h: the addon's private shared header (C11 over Node-API).
 *
 * Modules and prefixes:
 *   addon.c     cdn_  module init, per-environment state, exports
 *   isolate.c   iso_  host records of isolates; locked, deadline-bounded
 *                     calls; the foreground-task wake-up
 *   context.c   ctx_  contexts, scripts and runs
 *   runner.c    run_  runner threads for async calls, who holds each
 *                     isolate, and the host thread's mailbox
 *   value.c     val_  napi values <-> cdn_value_t
 *   watchdog.c  wd_   the deadline thread
 *
 * Validation of user arguments happens once, in lib/; this layer trusts its
 * caller and only asserts.
 */
#ifndef CORDON_CORDON_H_
#define CORDON_CORDON_H_

/* Built against Node-API's experimental version for one thing: basic
 * finalizers, which the host's collector runs synchronously, so that a
 * synchronous loop that drops handles frees their sandbox records (with
 * deferred finalizers nothing is freed until the loop yields). A finalizer
 * that needs more than basic calls defers itself (CDN_DEFERRED_FINALIZER).
 * The binaries are per Node line anyway (the engine uses V8's C++ API). */
#define NAPI_EXPERIMENTAL
#define NODE_API_EXPERIMENTAL_NO_WARNING /* chosen, for the above */
#undef NAPI_VERSION /* node_version.h's, the runtime's own, if included */
#define NAPI_VERSION 2147483647 /* NAPI_VERSION_EXPERIMENTAL */
#include <node_api.h>
#include <stdint.h>
#include <uv.h>

#include "engine/engine.h"
#include "watchdog.h"

/* A basic finalizer `name` that runs `impl` (a full napi_finalize) later,
 * outside the collector. */
#define CDN_DEFERRED_FINALIZER(name, impl)                                  \
  static void name(node_api_basic_env env, void* data, void* hint) {        \
    if (node_api_post_finalizer(env, impl, data, hint) != napi_ok) abort(); \
  }

/* Check a napi_status; on failure make it the call's error (unless a JS
 * exception is already pending) and return from the enclosing napi
 * callback (see cdn_throw). */
#define CDN_CALL(env, call)                                               \
  do {                                                                    \
    napi_status cdn__s = (call);                                          \
    if (cdn__s != napi_ok) return cdn_throw_status((env), cdn__s, #call); \
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
typedef struct iso_job_s iso_job_t;
typedef struct run_msg_s run_msg_t;
/* The body of a locked call: runs with the isolate lock held, on whichever
 * thread holds it; it may not call Node-API. */
typedef int (*iso_body_fn)(void* arg, cdn_value_t* out);

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
  iso_token_t* next; /* in cenv->orphans, or the runner's release list */
};

/* Who holds an isolate (iso->owner; changed under run.mu). The holder
 * alone may take its lock: a sync call or the task pump on the host
 * thread, or an async job on a runner thread. */
enum { ISO_FREE = 0, ISO_HOST, ISO_RUNNER };

/* A host-side isolate: what an Isolate handle in lib/ points at. */
struct iso_s {
  cdn_env_t* env;
  cdn_engine_isolate_t* engine; /* NULL once disposed (host thread) */
  int refs;                     /* host handle + contexts + scripts + jobs */
  int depth;                    /* runs on the holder's stack */
  int dispose_pending;          /* dispose() waits for a run (atomic) */
  struct iso_wake_s* wake;      /* the loop handles that run its tasks */
  wd_entry_t* top;              /* the innermost armed deadline */
  napi_async_context async;     /* for delivering promise settlements */
  iso_t* prev;
  iso_t* next;
  /* Async calls (under run.mu, but `serving`: host thread only). */
  int owner;       /* ISO_FREE / ISO_HOST / ISO_RUNNER */
  iso_job_t* jobs; /* queued async jobs, oldest first */
  iso_job_t* jobs_tail;
  int scheduled;        /* in run.ready */
  int host_waiting;     /* host threads waiting to take it */
  int serving;          /* host callbacks of its runner on the host stack */
  iso_t* ready_next;    /* in run.ready */
  int64_t next_task_ms; /* a runner's drain: when the next task is due */
  /* Time spent running, nanoseconds (atomic: the holder adds, the host
   * reads). cb_* are the host callbacks' share of sync runs. */
  uint64_t wall_ns;
  uint64_t cpu_ns;
  uint64_t cb_wall_ns;
  uint64_t cb_cpu_ns;
  uint64_t cb_cpu_mark; /* thread CPU clock when the host callback in
                           progress began (0: none), for the watchdog */
  int measure_cpu;      /* the outermost run reads the thread's CPU clock */
  iso_job_t* job;       /* the async job its runner runs (holder only) */
  uint64_t abort_id;    /* the last job run_abort found running (atomic) */
  uv_thread_t runner;   /* the runner thread that holds it, if one does */
  wd_poll_t poll;       /* in the watchdog's poll list, when it asks */
};

/* An async call: `body` runs on a runner thread with the isolate held;
 * the host thread then settles lib's promise through `done` and frees the
 * job with `free`. */
struct iso_job_s {
  iso_t* iso;
  double timeout_ms;
  double cpu_ms;
  iso_body_fn body;
  void (*free)(iso_job_t* job); /* host thread; the job's own data */
  napi_ref done;                /* lib's done(status, ...), or NULL */
  napi_ref keep;                /* a handle the job uses, or NULL */
  uint64_t start_ns;            /* uv_hrtime() when its runner began it */
  uint64_t deadline_ns;         /* nonzero: its bound ends then, however long it
                                   waited in the queue (a settlement's) */
  uint64_t id;                  /* unique in the process, from iso_start */
  int err;
  cdn_value_t out;
  iso_job_t* next;
};

/* A blocking request from a runner thread: the host thread calls fn(arg)
 * and sets `answered`. At environment teardown, when no JS may run, it
 * calls cancel(arg) instead, which must answer without Node-API calls
 * that make handles or run JS. */
struct run_msg_s {
  void (*fn)(void* arg);
  void (*cancel)(void* arg);
  void* arg;
  iso_t* iso;
  int answered;
  run_msg_t* next;
};

/* Runner threads and the host thread's mailbox, per environment. */
typedef struct {
  uv_mutex_t mu;
  uv_cond_t host_cv;  /* the host waits: an isolate let go, a request came */
  uv_cond_t pool_cv;  /* idle runners wait for an isolate with jobs */
  uv_cond_t reply_cv; /* runners wait for the host's answers */
  uv_async_t* mail;   /* wakes the host loop (freed by its close callback) */
  uv_thread_t host;
  uv_thread_t* threads;
  int nthreads;
  int max_threads;
  int idle;   /* runners waiting for work */
  int waking; /* of those, signalled and not yet awake */
  int stopping;
  int initialized;
  int inflight; /* jobs submitted and not yet finished */
  iso_t* ready; /* isolates with jobs, free to run */
  iso_t* ready_tail;
  run_msg_t* requests;   /* blocking requests, for the host */
  iso_token_t* releases; /* host references a runner dropped */
  iso_job_t* done;       /* finished jobs, for the host */
  iso_job_t* done_tail;
} run_t;

/* Per-environment state (napi_set_instance_data). Refcounted: the instance
 * data holds one reference and every isolate record one, so that whichever
 * of them Node finalises last frees it. */
struct cdn_env_s {
  napi_env env;
  uv_loop_t* loop;
  int refs;
  int closing;
  /* libuv handles of this environment not yet through their close
   * callback: each holds a reference (refs), and the async cleanup hook
   * finishes when the last one has closed (see addon.c). */
  int handles;
  napi_async_cleanup_hook_handle cleanup;
  wd_t wd;
  run_t run;
  iso_t* isolates;
  napi_ref make_error;     /* lib's (kind, name, message, stack, value, code) */
  napi_ref make_deferred;  /* lib's () -> { promise, settle(...) } */
  napi_ref adopt;          /* lib's (hostPromise, resolverHandle) */
  napi_ref import_hook;    /* lib's import(): see module.c */
  napi_ref rejection_hook; /* lib's unhandled-rejection report */
  napi_ref job_scope;      /* lib's jobScope(done) / jobScope() */
  napi_ref pending;        /* the error cdn_throw built, for takePending() */
  napi_ref marker;         /* lib's PENDING: "the call failed, take it" */
  napi_async_context async; /* for the mailbox's callback scope */
  iso_token_t* orphans;     /* watched promises a dispose dropped */
  /* live host records, for tests */
  int64_t n_isolates;
  int64_t n_contexts;
  int64_t n_scripts;
  int64_t n_callbacks;
  int64_t n_functions;
};

/* An internal error for a failed napi call: see cdn_throw. Returns what
 * the napi callback returns. */
napi_value cdn_throw_status(napi_env env, napi_status status, const char* call);
/* What a napi callback returns when the error of the call was already made
 * (cdn_throw, cdn_throw_status): the marker, or NULL. */
napi_value cdn_pending(napi_env env);
void cdn_abort(const char* file, int line, const char* expr);
void cdn_env_unref(cdn_env_t* cenv);
/* A libuv handle of the environment was initialised / went through its
 * close callback. Loop thread. */
void cdn_handle_opened(cdn_env_t* cenv);
void cdn_handle_closed(cdn_env_t* cenv);
/* Make the error lib/ builds for a failed call the call's outcome: it is
 * left for lib/binding.js, and the returned marker is what the napi
 * callback must return (see addon.c for why not napi_throw). `kind` is a status
 * (cdn_status) or one of the CDN_K* below; `v` may hold the error. */
enum {
  CDN_KDISPOSED = -100,
  CDN_KTIMEOUT = -101,
  CDN_KDEPTH = -102,
  CDN_KCPUTIMEOUT = -103, /* the CPU-time bound fired */
  CDN_KBUSY = -104,       /* a sync call would wait for its own caller */
  CDN_KSHUTDOWN = -105,   /* the environment no longer runs async jobs */
  CDN_KABORTED = -106     /* the job was aborted (run_abort) */
};

/* How deep host callbacks may re-enter one isolate. */
#define CDN_MAX_DEPTH 32
napi_value cdn_throw(napi_env env, cdn_env_t* cenv, int kind, cdn_value_t* v);
/* The arguments of lib's makeError for `kind` and `v` (freed). */
void cdn_error_argv(napi_env env, int kind, cdn_value_t* v, napi_value* argv);
cdn_env_t* cdn_env_get(napi_env env);

/* isolate.c */
/* CDN_OK, CDN_EUNSAFE (refused: the host's V8 flags) or CDN_EINTERNAL. */
int iso_new(cdn_env_t* cenv, const cdn_isolate_options_t* opts, iso_t** out);
/* Nonzero while the isolate can take new work. Host thread. */
#define iso_alive(iso)      \
  ((iso)->engine != NULL && \
   !__atomic_load_n(&(iso)->dispose_pending, __ATOMIC_ACQUIRE))
/* Dispose now, or when the run on the stack unwinds. Idempotent. */
void iso_dispose(iso_t* iso);
void iso_unref(iso_t* iso);
/* Keep the host loop alive until the next wake-up (a settlement waits). */
void iso_keep_alive(iso_t* iso);
/* Host thread: take the isolate (waiting for an async job that holds it,
 * and answering its host callbacks meanwhile), lock it, arm `timeout_ms`
 * and `cpu_ms` (0: none), run `body`, disarm, cancel a termination of its
 * own, run due tasks, unlock. Returns a cdn_status or one of the CDN_K*. */
int iso_call_ex(iso_t* iso, double timeout_ms, double cpu_ms, iso_body_fn body,
                void* arg, cdn_value_t* out);
#define iso_call(iso, timeout_ms, body, arg, out) \
  iso_call_ex((iso), (timeout_ms), 0, (body), (arg), (out))
/* Runner thread, holding the isolate: run the job as iso_call would. */
void iso_run_job(iso_job_t* job);
/* Host thread: submit a job whose iso, timeouts, body and free are set;
 * `done` is lib's callback. On failure the job is freed and an error
 * thrown. Returns NULL (undefined) either way. */
napi_value iso_start(napi_env env, iso_job_t* job, napi_value done);
/* Host thread: queue an async job (it takes a reference on its isolate).
 * Returns 0, or CDN_KDISPOSED / CDN_KSHUTDOWN (nothing was queued). */
int iso_submit(iso_job_t* job);
/* Host thread: settle a finished job's promise and free it. */
void iso_finish_job(iso_job_t* job);
/* Host thread: the holder let go; run its tasks and deliveries. */
void iso_after_runner(iso_t* iso);
napi_value iso_init_exports(napi_env env, napi_value exports);
/* A host function handed to the engine (which releases it), or freed by
 * iso_callback_free if it never got there. */
napi_status iso_callback_new(cdn_env_t* cenv, napi_value fn, void** out);
void iso_callback_free(void* cb);
/* The record behind an Isolate handle. */
iso_t* iso_from_handle(napi_env env, napi_value v);

/* runner.c */
int run_init(cdn_env_t* cenv);
/* Stop every async job (terminating what runs), join the runner threads.
 * Later submissions fail with CDN_KSHUTDOWN. Host thread; idempotent. */
void run_stop(cdn_env_t* cenv);
/* run_stop, then free what is left. At environment teardown. */
void run_close(cdn_env_t* cenv);
/* Host thread: take an isolate for the host (ISO_HOST); 0 or CDN_KBUSY. */
int run_acquire(iso_t* iso);
/* Host thread: nonzero while a runner holds it or jobs wait for it. */
int run_busy(iso_t* iso);
/* Host thread: take it only if it is free; nonzero on success. */
int run_try_acquire(iso_t* iso);
/* Host thread: let go of it (and schedule its queued jobs). */
void run_release_owner(iso_t* iso);
/* Host thread: dispose() — mark it, stop its runner's job and wait for it
 * to let go; *jobs gets the queued jobs that never started. 0, or
 * CDN_KBUSY when the host stack is inside a callback of that job (the
 * dispose then completes when the job finishes). */
int run_stop_isolate(iso_t* iso, iso_job_t** jobs);
/* Host thread, before the engine of `iso` is disposed: its finished jobs
 * not yet settled drop their results (which point into the engine) and
 * will reject with ERR_ISOLATE_DISPOSED. */
void run_forget_results(iso_t* iso);
/* Host thread: queue a job (under run.mu) and make sure a runner comes. */
int run_queue(iso_job_t* job);
/* Host thread: abort job `id` of `iso`. A queued job is taken off the
 * queue and finished with CDN_KABORTED; a running one is terminated, and
 * its run ends with CDN_KABORTED once it unwinds (a host callback it waits
 * for returns first). A finished job is left as it is. */
void run_abort(iso_t* iso, uint64_t id);
/* Host thread: a job was settled (or freed). */
void run_finished(cdn_env_t* cenv);
/* Runner thread: have the host thread call fn(arg) (or cancel(arg) when
 * the environment is closing); wait for it. */
void run_ask(iso_t* iso, void (*fn)(void*), void (*cancel)(void*), void* arg);
/* Runner thread: hand a host reference to the host thread to release. */
void run_release_later(cdn_env_t* cenv, iso_token_t* t);
/* Host thread: answer the runners' blocking requests now; returns how
 * many were answered. */
int run_serve(cdn_env_t* cenv);
/* Nonzero on the environment's own thread. */
int run_on_host(cdn_env_t* cenv);

/* context.c */
/* Code up to this many UTF-16 units is copied to the stack, not the heap. */
#define CTX_STACK_CODE 512
#define CTX_STACK_FILE 128

/* The host record of a context (the engine's host pointer for it). */
typedef struct {
  iso_t* iso;
  cdn_engine_context_t* engine; /* NULL once disposed */
  napi_ref self;                /* lib's Context, weakly */
  int64_t cost;                 /* reported with val_adjust_external */
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
/* The context record behind a context handle; NULL after throwing
 * ERR_ISOLATE_DISPOSED if it or its isolate is gone. */
ctx_t* ctx_live(napi_env env, napi_value v, iso_t** iso);
/* The engine context of a live record, or NULL once disposed. Bodies of
 * locked calls read it only when they run: a sync call may wait for the
 * isolate, and host code it runs meanwhile may dispose the context. */
#define ctx_engine(ctx) __atomic_load_n(&(ctx)->engine, __ATOMIC_ACQUIRE)
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
/* Report a handle's sandbox memory to the host's collector (see value.c). */
void val_adjust_external(node_api_basic_env env, int64_t bytes);
/* Make a value own the bytes it borrows (for a job that outlives the
 * call that made it). */
napi_status val_own(cdn_value_t* v);
/* A CDN_VAL_ERROR from lib/'s description: elements first.. of `desc` are
 * name, message, code (strings or undefined) and a Buffer of the error's
 * other own properties (serialised; copied) or undefined. */
napi_status val_error_from_napi(napi_env env, napi_value desc, uint32_t first,
                                cdn_value_t* out);
/* A CDN_VAL_ERROR for lib/: argv[0..4] = its other own properties (a
 * Buffer or undefined), name, message, stack, code. */
napi_status val_error_to_napi(napi_env env, const cdn_value_t* v,
                              napi_value* argv);

/* cache.c */
/* Key the tags of code caches with `secret` (any thread; every
 * environment of the process). */
void cache_set_key(const void* secret, size_t len);
/* A keyed hash of what a code cache is for. */
uint64_t cache_hash(const cdn_source_t* src, const cdn_param_t* params,
                    size_t nparams);
/* Check the header of src->cached_data: 1 and src points at V8's part;
 * -1 (rejected) and the cache is dropped; 0 when there is no cache. */
int cache_accept(cdn_source_t* src, uint64_t hash);
/* A Buffer of header and V8 cache, or undefined when data is NULL. */
napi_status cache_to_napi(napi_env env, uint64_t hash, const uint8_t* data,
                          size_t len, napi_value* out);
napi_value cache_init_exports(napi_env env, napi_value exports);

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
