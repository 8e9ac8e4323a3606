/* engine.h: the C face of cordon's V8 adapter.
 *
 * Only src/engine/ includes v8.h; everything else sees the opaque handles and
 * plain C types declared here. The engine never sees a napi_* type: what it
 * must hold of the host (a host callback) it holds as an opaque pointer
 * together with the host's hooks to call and release it.
 *
 * Calls return a cdn_status (0 or a negative code) and fill out-parameters,
 * libuv style. CDN_ETERMINATED is distinct from CDN_EEXCEPTION so that a
 * timeout never looks like an ordinary exception.
 *
 * Threads: an isolate may be used from any thread, but only between
 * cdn_engine_lock() and cdn_engine_unlock() on that thread (a v8::Locker
 * underneath). Functions that need the lock say so; the others are
 * thread-safe.
 */
#ifndef CORDON_ENGINE_H_
#define CORDON_ENGINE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  CDN_OK = 0,
  CDN_EEXCEPTION = -1,  /* sandbox code threw; the value holds the error */
  CDN_ETERMINATED = -2, /* execution was terminated (deadline or dispose) */
  CDN_ECLONE = -3,      /* a value could not be copied across; see value */
  CDN_ENOMEM = -4,      /* the sandbox ran out of its memory limit */
  CDN_EINTERNAL = -5,   /* the engine could not complete the call */
  CDN_EDISPOSED = -6,   /* the context of a function is disposed */
  CDN_EUNSAFE = -7      /* the host's V8 flags would give sandbox code
                           powers (natives syntax); isolate not made */
} cdn_status;

typedef struct cdn_engine_isolate_s cdn_engine_isolate_t;
typedef struct cdn_engine_context_s cdn_engine_context_t;
typedef struct cdn_engine_script_s cdn_engine_script_t;
typedef struct cdn_engine_function_s cdn_engine_function_t;
typedef struct cdn_engine_promise_s cdn_engine_promise_t;
typedef struct cdn_engine_resolver_s cdn_engine_resolver_t;
typedef struct cdn_engine_module_s cdn_engine_module_t;

/* What code that calls import() was compiled as. */
typedef enum {
  CDN_REFERRER_NONE = 0,
  CDN_REFERRER_SCRIPT,
  CDN_REFERRER_FUNCTION,
  CDN_REFERRER_MODULE
} cdn_referrer_kind;

/* What a reference in a value is. Out of the sandbox: a function or a
 * promise record. Into it (host objects 13 and 14): a host callback or a
 * host promise token. */
typedef enum { CDN_REF_FUNCTION = 1, CDN_REF_PROMISE = 2 } cdn_ref_kind;

typedef enum {
  CDN_PROMISE_PENDING = 0,
  CDN_PROMISE_FULFILLED,
  CDN_PROMISE_REJECTED,
  CDN_PROMISE_ABANDONED /* collected by the sandbox without settling */
} cdn_promise_state;

/* A value crossing the boundary. Owned buffers are malloc'd and freed by
 * cdn_value_free(). Objects travel in V8's serialisation format, with
 * ArrayBufferViews written as Node's v8.Serializer writes them, so the host
 * reads them with v8.deserialize(). */
typedef enum {
  CDN_VAL_UNDEFINED = 0,
  CDN_VAL_NULL,
  CDN_VAL_BOOL,
  CDN_VAL_NUMBER,
  CDN_VAL_LATIN1, /* str8, len */
  CDN_VAL_UTF16,  /* str16, len (in code units) */
  CDN_VAL_BYTES,  /* bytes, len: a serialised value */
  CDN_VAL_ERROR,  /* an Error: name, message, stack, code (UTF-8), and in
                     bytes, len its other own data properties: a
                     serialised object, or NULL */
  CDN_VAL_REF     /* out of the sandbox: a function or promise, refs[0] */
} cdn_value_kind;

typedef struct {
  cdn_value_kind kind;
  int boolean;
  double number;
  size_t len;
  union {
    uint8_t* str8;
    uint16_t* str16;
    uint8_t* bytes;
  } u;
  /* CDN_VAL_ERROR, and the reason of a CDN_ECLONE. */
  char* name;
  char* message;
  char* stack;
  char* code; /* an Error's string `code`, if any */
  /* Set when u points at memory the value does not own. */
  int borrowed;
  /* Functions inside a CDN_VAL_BYTES value travel as references: host
   * object type 13 with an index into refs (see value.cc). Out of the
   * sandbox (refs_out set), refs[i] is a cdn_engine_function_t* that the
   * receiver takes (sets to NULL) or cdn_value_free releases. Into the
   * sandbox, refs[i] is a host callback pointer; the engine takes every one
   * of them (hooks->release frees it once its sandbox function is gone). */
  void** refs;
  size_t nrefs;
  int refs_out;
} cdn_value_t;

/* Frees what the value owns, releasing untaken function references. */
void cdn_value_free(cdn_value_t* v);

/* A dynamic import() for the host to serve. The host answers by settling
 * `resolver`: cdn_engine_import_resolve with a module, or
 * cdn_engine_resolver_settle to reject. */
typedef struct {
  void* callback; /* borrowed host token: the compilation's import callback,
                     NULL when it has none */
  void* handle;   /* borrowed weak host token: the referrer's host handle */
  cdn_referrer_kind kind;
  void* referrer;         /* the referrer's record: a new function or script
                             record (the host's to take or release), or the
                             module's own record (borrowed) */
  void* context_host;     /* the host pointer of the importing context */
  cdn_value_t specifier;  /* a string */
  cdn_value_t attributes; /* an object */
  cdn_engine_resolver_t* resolver; /* the host's */
} cdn_import_t;

/* Hooks through which the engine reaches the host. Given once per isolate. */
typedef struct {
  void* data;
  /* The isolate has foreground tasks (or releases) to run. Any thread may
   * call it, including V8's background threads; it must only signal. */
  void (*wake)(void* data);
  /* Call the host callback `cb` with `args` (CDN_VAL_BYTES: a serialised
   * array). Called on the thread that holds the isolate lock: the host's
   * thread for a sync run (with the host isolate entered), or a runner
   * thread for an async one (the host isolate is not entered; the hook
   * must get the host's thread to do the work and wait for it).
   * `*context_host` is the host pointer of the callback's context (NULL
   * once it has none): read it on the host thread, where it is cleared
   * (the record stays while the call waits). Fills
   * `result` with a value, or a CDN_VAL_ERROR to throw in the sandbox. */
  void (*call)(void* data, void* cb, void* const* context_host,
               const cdn_value_t* args, cdn_value_t* result);
  /* Release a host reference (a callback, a host promise token, or a
   * promise watch token). Called on the thread that holds the lock (or
   * disposes the isolate); the hook queues it for the host's thread when
   * that is another thread. */
  void (*release)(void* data, void* cb);
  /* The sandbox now awaits host promise `token` through `resolver`; the
   * host settles it with cdn_engine_resolver_settle and owns the resolver
   * (cdn_engine_resolver_release). Called like `call`. */
  void (*adopt)(void* data, void* token, cdn_engine_resolver_t* resolver);
  /* Sandbox code called import(). Called like `call`; the host must not
   * run sandbox code before returning (it answers later). */
  void (*import)(void* data, cdn_import_t* request);
  /* The isolate asks to have cdn_engine_poll called about every
   * CDN_POLL_INTERVAL_MS from now on, until that returns 0. Called on the
   * thread that holds the lock; must only take a short lock. */
  void (*poll)(void* data);
} cdn_host_hooks_t;

#define CDN_POLL_INTERVAL_MS 10

/* Any thread, while the isolate lives (the host's watchdog): ask it to
 * check at its next interrupt what grows unseen (WebAssembly memories
 * grown from WebAssembly code). Returns 0 when it no longer needs asking:
 * nothing to check, or the last ask is still unanswered (it is idle); it
 * asks again (hooks.poll) when it next needs to. */
int cdn_engine_poll(cdn_engine_isolate_t* iso);

/* Thread-safe: nonzero while the sandbox waits for work V8 does in the
 * background (an async WebAssembly compilation), which will settle a
 * promise from a task: the host loop should stay alive for it. */
int cdn_engine_has_async(cdn_engine_isolate_t* iso);

/* A watched sandbox promise that settled (or was abandoned). `value` is its
 * result; for a rejection, a CDN_VAL_ERROR or any value. */
typedef struct {
  void* token; /* from cdn_engine_promise_watch; the host's */
  cdn_promise_state state;
  cdn_value_t value;
} cdn_settlement_t;

typedef struct {
  size_t memory_limit_mb; /* 0: V8's default heap size */
  int allow_unsafe_flags; /* make it even under --allow-natives-syntax */
} cdn_isolate_options_t;

/* Create an isolate registered with the embedder's platform, foreground
 * tasks routed to a queue of its own. Call on the host's JS thread (it asks
 * the current host context for the platform). CDN_EUNSAFE when V8's flags
 * (process-wide, set by the host) let sandbox code call V8's runtime
 * functions, unless opts->allow_unsafe_flags. */
int cdn_engine_isolate_new(const cdn_isolate_options_t* opts,
                           const cdn_host_hooks_t* hooks,
                           cdn_engine_isolate_t** out);

/* Free everything the isolate owns, unregister it from the platform and
 * dispose it. Nothing may hold its lock. Call on the host's thread. */
void cdn_engine_isolate_dispose(cdn_engine_isolate_t* iso);

/* Storage for one level of the isolate lock, on the caller's stack (the
 * v8::Locker lives in it: no allocation per call). */
typedef struct {
  uint64_t opaque[4];
  int owns;
} cdn_lock_t;

/* Take / release the isolate's lock and enter it. Recursive on one thread
 * (a host callback may run code in the same isolate again); each level
 * passes its own cdn_lock_t. */
void cdn_engine_lock(cdn_engine_isolate_t* iso, cdn_lock_t* lock);
void cdn_engine_unlock(cdn_engine_isolate_t* iso, cdn_lock_t* lock);

/* Thread-safe: stop the JS running in the isolate, if any. */
void cdn_engine_terminate(cdn_engine_isolate_t* iso);
/* With the lock held: cancel a termination requested by terminate(). The
 * microtasks the stopped run left are dropped first (V8 empties the queue
 * when a checkpoint is terminated): none may run later, outside any
 * deadline. */
void cdn_engine_cancel_terminate(cdn_engine_isolate_t* iso);

/* Thread-safe: nonzero if foreground tasks, releases or promise
 * settlements are due now. */
int cdn_engine_has_work(cdn_engine_isolate_t* iso);
/* With the lock held: run the due foreground tasks and pending releases.
 * Sets *next_ms to the delay until the next delayed task (-1: none).
 * Returns CDN_ETERMINATED if a task was terminated. */
int cdn_engine_run_tasks(cdn_engine_isolate_t* iso, int64_t* next_ms);

/* With the lock held: a full garbage collection of the sandbox heap. */
void cdn_engine_gc(cdn_engine_isolate_t* iso);

typedef struct {
  size_t total_heap_size;
  size_t used_heap_size;
  size_t heap_size_limit;
  size_t external_memory;
  size_t array_buffers; /* bytes of ArrayBuffer backing stores */
  size_t contexts;
  size_t scripts;
  size_t callbacks;
  size_t functions;
  size_t promises;
  size_t resolvers;
  size_t modules;
  size_t import_hosts;
  uint64_t tasks_run; /* foreground tasks run so far */
} cdn_heap_stats_t;

/* With the lock held. */
void cdn_engine_heap_stats(cdn_engine_isolate_t* iso, cdn_heap_stats_t* out);

/* With the lock held: a new context. `globals` (CDN_VAL_BYTES of a
 * serialised object, or CDN_VAL_UNDEFINED) has its own enumerable
 * properties copied onto the global object; functions among them (host
 * callbacks, as references) become sandbox functions that call the host. */
int cdn_engine_context_new(cdn_engine_isolate_t* iso,
                           const cdn_value_t* globals,
                           cdn_engine_context_t** out, cdn_value_t* err);

/* Thread-safe: free the context the next time the isolate's lock is held
 * (it wakes the isolate). After this the handle must not be used. */
void cdn_engine_context_release(cdn_engine_context_t* ctx);

typedef struct {
  const uint16_t* code;
  size_t code_len;
  const uint16_t* filename;
  size_t filename_len;
  int line_offset;
  int column_offset;
  /* V8 code cache to consume (NULL: none), and whether to produce one. */
  const uint8_t* cached_data;
  size_t cached_len;
  int produce_cached_data;
  /* Host tokens for import() in this code: the callback (strong) and the
   * referrer's host handle (weak); NULL for none. The engine takes both,
   * whatever happens, and releases them when the compiled code is gone. */
  void* import_callback;
  void* import_handle;
} cdn_source_t;

/* What compiling with a code cache reports. `cache` is malloc'd. */
typedef struct {
  int cache_rejected; /* -1: no cache was given */
  uint8_t* cache;
  size_t cache_len;
} cdn_cache_result_t;

void cdn_cache_result_free(cdn_cache_result_t* r);

/* With the lock held: compile and run `src` in `ctx`, run the microtasks it
 * queued, and copy the completion value into `out`. */
int cdn_engine_run(cdn_engine_context_t* ctx, const cdn_source_t* src,
                   cdn_value_t* out);

/* With the lock held: compile `src` once, unbound to any context. */
int cdn_engine_script_new(cdn_engine_isolate_t* iso, const cdn_source_t* src,
                          cdn_engine_script_t** out, cdn_value_t* err,
                          cdn_cache_result_t* cache);
/* With the lock held: a code cache for the script (malloc'd). */
int cdn_engine_script_cache(cdn_engine_script_t* script, uint8_t** data,
                            size_t* len);
/* Thread-safe, like cdn_engine_context_release. */
void cdn_engine_script_release(cdn_engine_script_t* script);
/* With the lock held: run a compiled script in a context of its isolate. */
int cdn_engine_script_run(cdn_engine_script_t* script,
                          cdn_engine_context_t* ctx, cdn_value_t* out);

/* A parameter name of a compiled function. */
typedef struct {
  const uint16_t* name;
  size_t len;
} cdn_param_t;

/* With the lock held: compile a function body in `ctx`
 * (ScriptCompiler::CompileFunction). `extensions` is CDN_VAL_UNDEFINED or a
 * serialised array of objects whose properties are in scope of the body.
 * On success `out` is a CDN_VAL_BYTES value holding one function
 * reference. */
int cdn_engine_compile_function(cdn_engine_context_t* ctx,
                                const cdn_source_t* src,
                                const cdn_param_t* params, size_t nparams,
                                const cdn_value_t* extensions, cdn_value_t* out,
                                cdn_cache_result_t* cache);

/* The host's pointer for a context, handed back in cdn_import_t. */
void cdn_engine_context_set_host(cdn_engine_context_t* ctx, void* host);

/* With the lock held: compile an ES module in `ctx`; its filename is
 * import.meta.url. */
int cdn_engine_module_new(cdn_engine_context_t* ctx, const cdn_source_t* src,
                          cdn_engine_module_t** out, cdn_value_t* err);
/* With the lock held: the module's static imports, as a value:
 * [[specifier, attributes], ...]. */
int cdn_engine_module_requests(cdn_engine_module_t* m, cdn_value_t* out);
/* With the lock held: request `index` of `m` resolves to `target`, which
 * must stay alive until `m` is instantiated. */
void cdn_engine_module_link(cdn_engine_module_t* m, size_t index,
                            cdn_engine_module_t* target);
/* With the lock held: instantiate (once every module of the graph is
 * linked), then evaluate; `out` is the evaluation promise. */
int cdn_engine_module_evaluate(cdn_engine_module_t* m, cdn_value_t* out);
/* With the lock held: a copy of an instantiated module's namespace (its
 * exports as they are now). */
int cdn_engine_module_namespace(cdn_engine_module_t* m, cdn_value_t* out);
/* With the lock held: resolve an import() with an evaluated module's
 * namespace (or reject it with the module's error). */
int cdn_engine_import_resolve(cdn_engine_resolver_t* r, cdn_engine_module_t* m);

/* With the lock held: call a sandbox function with `argc` values. The
 * engine takes the refs of this_arg and of every argument. */
int cdn_engine_call(cdn_engine_function_t* fn, const cdn_value_t* this_arg,
                    const cdn_value_t* argv, size_t argc, cdn_value_t* out);

/* Thread-safe, like cdn_engine_context_release. */
void cdn_engine_function_release(cdn_engine_function_t* fn);

/* Thread-safe: about how many bytes of sandbox memory a record (a
 * context, script or function) keeps alive while the host holds it; the
 * host reports this to its own collector, whose handles are small. */
size_t cdn_engine_ref_cost(void* ref);

/* Thread-safe: the kind of an out-reference. */
cdn_ref_kind cdn_engine_ref_kind(void* ref);
/* Thread-safe: release any engine record (a context, script, function,
 * promise or resolver); it is freed the next time the lock is held. */
void cdn_engine_ref_release(void* ref);
/* Thread-safe (no lock needed: the host may watch while a runner thread
 * runs the isolate): the host takes a promise record and gives the token
 * hooks->settle receives. */
void cdn_engine_promise_watch(cdn_engine_promise_t* p, void* token);
/* A sandbox promise rejected with no handler by the end of a run (or of a
 * task): its reason (a CDN_VAL_ERROR or a value) and the host pointer of
 * its context. Converted with the run's deadline still armed. */
typedef struct {
  void* context_host;
  cdn_value_t reason;
} cdn_rejection_t;

/* With the lock held, at the end of an outermost run or task drain, with
 * its deadline still armed: report promises left rejected unhandled. */
void cdn_engine_report_rejections(cdn_engine_isolate_t* iso);
/* Thread-safe: nonzero if reports of unhandled rejections wait. */
int cdn_engine_has_rejections(cdn_engine_isolate_t* iso);
/* Thread-safe: take the reports of unhandled rejections (a malloc'd
 * array; the caller frees each reason and the array). */
size_t cdn_engine_take_rejections(cdn_engine_isolate_t* iso,
                                  cdn_rejection_t** out);

/* Thread-safe: nonzero if settlements of watched promises wait. */
int cdn_engine_has_settled(cdn_engine_isolate_t* iso);
/* With the lock held: take the settlements of watched promises (a
 * malloc'd array, *out; the caller delivers them, with or without the
 * lock, frees each value and the array). Returns how many. */
size_t cdn_engine_take_settled(cdn_engine_isolate_t* iso,
                               cdn_settlement_t** out);

/* With the lock held: settle a sandbox promise the host adopted, and run
 * the microtasks that follows. Takes the value's refs. */
int cdn_engine_resolver_settle(cdn_engine_resolver_t* r, int rejected,
                               const cdn_value_t* value);
/* Thread-safe, like cdn_engine_context_release. */
void cdn_engine_resolver_release(cdn_engine_resolver_t* r);
/* Thread-safe: what the function was created with (UTF-8, *len bytes, may
 * hold NULs; immutable). */
const char* cdn_engine_function_name(cdn_engine_function_t* fn, size_t* len);
int cdn_engine_function_length(cdn_engine_function_t* fn);

#ifdef __cplusplus
}
#endif

#endif /* CORDON_ENGINE_H_ */
