/* isolate.c: host records of sandbox isolates, locked and deadline-bounded
 * calls into them, and the wake-up that runs their foreground tasks on the
 * host's event loop while they are idle.
 *
 * Everything here runs on the thread of the environment that created the
 * isolate, except iso__wake(), which V8 may call from any thread.
 */
#include <stdlib.h>
#include <string.h>

#include "cordon.h"

/* Deadline for one drain of an isolate's foreground tasks: a
 * FinalizationRegistry callback is sandbox code and may loop. */
#define ISO_TASK_TIMEOUT_MS 1000

/* The loop handles of one isolate. Freed when both have closed, which may
 * be after the isolate record itself is gone. */
struct iso_wake_s {
  uv_async_t async;
  uv_timer_t timer;
  iso_t* iso; /* NULL once the isolate is disposed */
  cdn_env_t* cenv;
  int closing;
};

static void iso__run_tasks_locked(iso_t* iso, int runner);
static void iso__timer_cb(uv_timer_t* timer);
static void iso__job_scope(cdn_env_t* cenv, iso_job_t* job);

#define iso__load(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define iso__add(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)

/* Nonzero when `e` fired (WD_FIRED_*): cancels that termination. (An
 * enclosing run's deadline that fired too is terminated again once this
 * run has returned: the cancel cleared its request as well.) */
static int iso__disarm(iso_t* iso, wd_entry_t* e) {
  int fired = wd_disarm(&iso->env->wd, e);
  iso->top = e->outer;
  if (fired) cdn_engine_cancel_terminate(iso->engine);
  return fired;
}

/* The run itself, on the thread that holds the isolate (`runner`: a runner
 * thread). Time accounting: the outermost run adds its wall time, and its
 * CPU time from the thread's CPU clock when it reads it (async runs, and
 * runs with a CPU bound: the clock costs a system call, as much as a whole
 * short call), else its wall time; host callbacks' share is left out. */
static int iso__run(iso_t* iso, int runner, double timeout_ms, double cpu_ms,
                    iso_body_fn body, void* arg, cdn_value_t* out) {
  cdn_engine_isolate_t* eng = iso->engine;
  cdn_lock_t lock;
  wd_entry_t entry;
  int armed = 0, outermost, measured = 0, fired, err;
  uint64_t wall0 = 0, cpu0 = 0, cbw0 = 0, cbc0 = 0, mark;
  memset(out, 0, sizeof(*out));
  cdn_engine_lock(eng, &lock);
  /* A run nested in a host callback is sandbox time again. */
  mark = __atomic_exchange_n(&iso->cb_cpu_mark, 0, __ATOMIC_RELAXED);
  outermost = ++iso->depth == 1;
  if (cpu_ms > 0 || (outermost && runner)) iso->measure_cpu++;
  if (outermost) {
    measured = iso->measure_cpu > 0;
    wall0 = uv_hrtime();
    cbw0 = iso__load(&iso->cb_wall_ns);
    cbc0 = iso__load(&iso->cb_cpu_ns);
    if (measured) cpu0 = wd_thread_cpu_ns();
  }
  /* An async job's run is always armed, so that run_abort can stop it. */
  entry.tag = runner && outermost && iso->job != NULL ? iso->job->id : 0;
  if (timeout_ms > 0 || cpu_ms > 0 || entry.tag != 0) {
    entry.outer = iso->top;
    if (wd_arm(&iso->env->wd, &entry, eng, (uint64_t)(timeout_ms * 1e6),
               (uint64_t)(cpu_ms * 1e6), &iso->cb_cpu_ns,
               &iso->cb_cpu_mark) != 0) {
      if (cpu_ms > 0 || (outermost && runner)) iso->measure_cpu--;
      iso->depth--;
      __atomic_store_n(&iso->cb_cpu_mark, mark, __ATOMIC_RELAXED);
      cdn_engine_unlock(eng, &lock);
      return CDN_EINTERNAL;
    }
    armed = 1;
    iso->top = &entry;
    if (entry.tag != 0 &&
        __atomic_load_n(&iso->abort_id, __ATOMIC_SEQ_CST) == entry.tag)
      (void)wd_fire(&iso->env->wd, entry.tag, WD_FIRED_ABORT);
  }
  /* A termination requested while no thread held the isolate is lost when
   * a thread takes the lock (V8 restores that thread's archived stack
   * guard): so dispose() and shutdown are also flags, read under the lock,
   * after which their termination reaches this thread. */
  if (iso__load(&iso->dispose_pending))
    err = CDN_KDISPOSED;
  else if (runner && iso__load(&iso->env->run.stopping))
    err = CDN_KSHUTDOWN;
  else
    err = body(arg, out);
  if (iso->depth == 1) cdn_engine_report_rejections(eng); /* still bounded */
  if (armed && (fired = iso__disarm(iso, &entry)) != 0) {
    cdn_value_free(out);
    err = fired == WD_FIRED_CPU     ? CDN_KCPUTIMEOUT
          : fired == WD_FIRED_ABORT ? CDN_KABORTED
                                    : CDN_KTIMEOUT;
  }
  iso->depth--;
  if (iso__load(&iso->dispose_pending)) {
    cdn_value_free(out);
    err = CDN_KDISPOSED;
    /* Cancels above (ours, or the engine's after a memory stop) cleared
     * the isolate's termination: the enclosing runs must still unwind. */
    if (iso->depth > 0) cdn_engine_terminate(eng);
  } else if (runner && err == CDN_ETERMINATED &&
             iso__load(&iso->env->run.stopping)) {
    err = CDN_KSHUTDOWN;
  } else if (iso->depth > 0) {
    if (iso->top != NULL) wd_refire(&iso->env->wd, iso->top);
  } else if (cdn_engine_has_work(eng)) {
    /* Raised while tasks run: a host callback they call may dispose the
     * isolate, which must wait until they have unwound. */
    iso->depth++;
    iso__run_tasks_locked(iso, runner);
    iso->depth--;
    if (!runner &&
        (cdn_engine_has_settled(eng) || cdn_engine_has_rejections(eng)))
      iso_keep_alive(iso);
  }
  /* Sandbox work in V8's background (async WebAssembly compilation) will
   * settle a promise: the loop waits for it, as Node's does. */
  if (!runner && outermost && iso->engine != NULL && cdn_engine_has_async(eng))
    iso_keep_alive(iso);
  if (cpu_ms > 0 || (outermost && runner)) iso->measure_cpu--;
  if (outermost) {
    uint64_t wall = uv_hrtime() - wall0;
    uint64_t cbw = iso__load(&iso->cb_wall_ns) - cbw0;
    uint64_t cpu = measured ? wd_thread_cpu_ns() - cpu0 : wall;
    uint64_t cb = measured ? iso__load(&iso->cb_cpu_ns) - cbc0 : cbw;
    iso__add(&iso->wall_ns, wall);
    iso__add(&iso->cpu_ns, cpu > cb ? cpu - cb : 0);
  }
  __atomic_store_n(&iso->cb_cpu_mark, mark, __ATOMIC_RELAXED);
  cdn_engine_unlock(eng, &lock);
  return err;
}

int iso_call_ex(iso_t* iso, double timeout_ms, double cpu_ms, iso_body_fn body,
                void* arg, cdn_value_t* out) {
  int took = 0, err;
  CDN_ASSERT(iso->engine != NULL);
  memset(out, 0, sizeof(*out));
  if (iso__load(&iso->owner) != ISO_HOST) {
    /* Outermost on this thread: take the isolate from whoever holds it. */
    err = run_acquire(iso);
    if (err != 0) return err;
    took = 1;
  }
  if (iso__load(&iso->dispose_pending)) {
    err = CDN_KDISPOSED; /* disposed while this call waited */
  } else if (iso->depth >= CDN_MAX_DEPTH) {
    err = CDN_KDEPTH;
  } else {
    err = iso__run(iso, 0, timeout_ms, cpu_ms, body, arg, out);
  }
  if (took) {
    run_release_owner(iso);
    if (iso__load(&iso->dispose_pending)) iso_dispose(iso);
  }
  return err;
}

void iso_run_job(iso_job_t* job) {
  iso_t* iso = job->iso;
  uint64_t now = uv_hrtime();
  if (job->deadline_ns != 0) {
    if (now >= job->deadline_ns) {
      job->err = CDN_KTIMEOUT; /* its time ran out in the queue */
      return;
    }
    job->timeout_ms = (double)(job->deadline_ns - now) / 1e6;
  }
  iso->job = job;
  __atomic_store_n(&job->start_ns, now, __ATOMIC_RELEASE);
  job->err =
      iso__run(iso, 1, job->timeout_ms, job->cpu_ms, job->body, job, &job->out);
  iso->job = NULL;
}

/* Host thread: make `job`'s context and bounds lib's active ones (NULL:
 * restore the previous). A job of the native layer's own (no `done`)
 * enters without changing them. lib is told how long ago the job's runner
 * began it (its bound counts from then). */
static void iso__job_scope(cdn_env_t* cenv, iso_job_t* job) {
  napi_env env = cenv->env;
  napi_value fn, global, arg, result, exc, argv[2];
  uint64_t start =
      job != NULL ? __atomic_load_n(&job->start_ns, __ATOMIC_ACQUIRE) : 0;
  size_t argc = 1;
  napi_status st = napi_get_reference_value(env, cenv->job_scope, &fn);
  if (st == napi_ok) st = napi_get_global(env, &global);
  if (st == napi_ok && job != NULL && job->done != NULL)
    st = napi_get_reference_value(env, job->done, &arg);
  else if (st == napi_ok && job != NULL)
    st = napi_get_null(env, &arg); /* enter, changing nothing */
  else if (st == napi_ok)
    st = napi_get_undefined(env, &arg);
  argv[0] = arg;
  if (st == napi_ok && start != 0) {
    st = napi_create_double(env, (double)(uv_hrtime() - start) / 1e6, &argv[1]);
    argc = 2;
  }
  if (st == napi_ok)
    st = napi_call_function(env, global, fn, argc, argv, &result);
  if (st != napi_ok) napi_get_and_clear_last_exception(env, &exc);
}

napi_value iso_start(napi_env env, iso_job_t* job, napi_value done) {
  static uint64_t next_id = 0; /* (host threads of every environment) */
  iso_t* iso = job->iso;
  napi_value id = NULL;
  napi_status st;
  int err;
  job->id = __atomic_add_fetch(&next_id, 1, __ATOMIC_RELAXED);
  st = napi_create_reference(env, done, 1, &job->done);
  if (st == napi_ok) st = napi_create_double(env, (double)job->id, &id);
  err = st == napi_ok ? iso_submit(job) : CDN_EINTERNAL;
  if (err == 0) return id; /* for abort(isolate, id) */
  if (job->done != NULL) napi_delete_reference(env, job->done);
  job->free(job);
  return cdn_throw(env, iso->env, err, NULL);
}

int iso_submit(iso_job_t* job) {
  iso_t* iso = job->iso;
  int err;
  if (!iso_alive(iso)) return CDN_KDISPOSED;
  iso->refs++;
  err = run_queue(job);
  if (err != 0) iso->refs--; /* the caller's handle holds another */
  return err;
}

static void iso__pump(struct iso_wake_s* wake);

void iso_after_runner(iso_t* iso) {
  int64_t ms;
  if (iso->engine == NULL || iso->wake == NULL) return;
  if (iso__load(&iso->owner) != ISO_FREE) return; /* its holder does it */
  /* A runner's task drain cannot touch the loop's timer: it leaves the
   * delay of the next delayed task here. */
  ms = __atomic_exchange_n(&iso->next_task_ms, -1, __ATOMIC_ACQ_REL);
  if (ms >= 0)
    uv_timer_start(&iso->wake->timer, iso__timer_cb, (uint64_t)ms, 0);
  if (cdn_engine_has_async(iso->engine)) iso_keep_alive(iso);
  if (cdn_engine_has_work(iso->engine)) {
    if (cdn_engine_has_settled(iso->engine) ||
        cdn_engine_has_rejections(iso->engine))
      iso_keep_alive(iso);
    iso__pump(iso->wake);
  }
}

void iso_finish_job(iso_job_t* job) {
  iso_t* iso = job->iso;
  cdn_env_t* cenv = iso->env;
  napi_env env = cenv->env;
  if (!cenv->closing && job->done != NULL) {
    napi_handle_scope scope;
    napi_value fn, global, result, exc, argv[7];
    size_t argc;
    napi_status st = napi_open_handle_scope(env, &scope);
    if (st != napi_ok) goto freed;
    iso__job_scope(cenv, job);
    st = napi_create_int32(env, job->err, &argv[0]);
    if (st == napi_ok && job->err == CDN_OK) {
      st = fn_value_to_napi(env, iso, &job->out, &argv[1]);
      argc = 2;
    } else if (st == napi_ok) {
      cdn_error_argv(env, job->err, &job->out, argv + 1);
      argc = 7;
    }
    if (st == napi_ok) st = napi_get_reference_value(env, job->done, &fn);
    if (st == napi_ok) st = napi_get_global(env, &global);
    if (st == napi_ok)
      st = napi_call_function(env, global, fn, argc, argv, &result);
    if (st != napi_ok) napi_get_and_clear_last_exception(env, &exc);
    iso__job_scope(cenv, NULL);
    napi_close_handle_scope(env, scope);
  }
freed:
  /* Host code run by `done` may have disposed the isolate: what the
   * result still points at is gone with it. */
  if (iso->engine == NULL) job->out.nrefs = 0;
  cdn_value_free(&job->out);
  if (job->done != NULL) napi_delete_reference(env, job->done);
  if (job->keep != NULL) napi_delete_reference(env, job->keep);
  job->free(job);
  run_finished(cenv);
  if (iso__load(&iso->dispose_pending) && iso->engine != NULL &&
      iso__load(&iso->owner) == ISO_FREE && iso->serving == 0) {
    iso_dispose(iso); /* it waited for this job to unwind */
  } else {
    iso_after_runner(iso);
  }
  iso_unref(iso);
}

/* A settled promise keeps the loop alive until the wake-up delivers it; a
 * merely pending one does not, as in Node. */
void iso_keep_alive(iso_t* iso) {
  if (iso->wake != NULL) uv_ref((uv_handle_t*)&iso->wake->async);
}

/* With the lock held, at the top level: run due tasks under a deadline and
 * arm the loop timer for the next delayed one (a runner leaves that to the
 * host thread: the timer is the host loop's). */
static void iso__run_tasks_locked(iso_t* iso, int runner) {
  wd_entry_t entry;
  int64_t next_ms = -1;
  int armed;
  entry.outer = iso->top;
  armed = wd_arm(&iso->env->wd, &entry, iso->engine,
                 (uint64_t)ISO_TASK_TIMEOUT_MS * 1000000, 0, NULL, NULL) == 0;
  if (armed) iso->top = &entry;
  (void)cdn_engine_run_tasks(iso->engine, &next_ms);
  cdn_engine_report_rejections(iso->engine);
  if (armed) (void)iso__disarm(iso, &entry);
  if (runner) {
    __atomic_store_n(&iso->next_task_ms, next_ms, __ATOMIC_RELEASE);
  } else if (iso->wake != NULL) {
    if (next_ms >= 0)
      uv_timer_start(&iso->wake->timer, iso__timer_cb, (uint64_t)next_ms, 0);
    else
      uv_timer_stop(&iso->wake->timer);
  }
}

/* Host loop: run the idle isolate's due tasks, then deliver the promise
 * settlements they (or earlier runs) produced, with the lock released:
 * delivering runs host code. */
static void iso__pump(struct iso_wake_s* wake) {
  iso_t* iso = wake->iso;
  cdn_settlement_t* settled;
  cdn_rejection_t* rejections;
  cdn_lock_t lock;
  size_t n, nr;
  if (iso == NULL || iso->engine == NULL) return;
  /* Held by a runner: iso_after_runner() pumps once it lets go. */
  if (!run_try_acquire(iso)) return;
  iso->refs++; /* host code run by delivery may drop the last handle */
  cdn_engine_lock(iso->engine, &lock);
  iso->depth++;
  iso__run_tasks_locked(iso, 0);
  n = cdn_engine_take_settled(iso->engine, &settled);
  nr = cdn_engine_take_rejections(iso->engine, &rejections);
  cdn_engine_unlock(iso->engine, &lock);
  if (!cdn_engine_has_async(iso->engine)) uv_unref((uv_handle_t*)&wake->async);
  /* Still raised while delivering: host code that runs may dispose the
   * isolate, which must wait until the batch is delivered. */
  if (n > 0) prm_deliver(iso, settled, n);
  if (nr > 0) prm_report(iso, rejections, nr);
  iso->depth--;
  run_release_owner(iso);
  if (iso__load(&iso->dispose_pending)) {
    iso_dispose(iso);
  } else if (iso->engine != NULL && iso->wake != NULL &&
             cdn_engine_has_work(iso->engine)) {
    /* Host code run by the delivery settled more (an import() served from
     * a reaction): pump again, keeping the loop alive for settlements. */
    if (cdn_engine_has_settled(iso->engine) ||
        cdn_engine_has_rejections(iso->engine))
      iso_keep_alive(iso);
    uv_async_send(&iso->wake->async);
  }
  iso_unref(iso);
}

static void iso__async_cb(uv_async_t* async) {
  iso__pump(container_of(async, struct iso_wake_s, async));
}

static void iso__timer_cb(uv_timer_t* timer) {
  iso__pump(container_of(timer, struct iso_wake_s, timer));
}

static void iso__wake_close_cb(uv_handle_t* handle) {
  struct iso_wake_s* wake = handle->data;
  cdn_env_t* cenv = wake->cenv;
  if (--wake->closing == 0) free(wake);
  cdn_handle_closed(cenv);
}

/* Close both loop handles (each counted by the environment until its
 * close callback has run). */
static void iso__wake_close(struct iso_wake_s* wake) {
  wake->iso = NULL;
  wake->closing = 2;
  uv_close((uv_handle_t*)&wake->async, iso__wake_close_cb);
  uv_close((uv_handle_t*)&wake->timer, iso__wake_close_cb);
}

/* Any thread: V8 posted a task. The engine stops calling this before the
 * isolate is disposed, so the handle is alive. */
static void iso__wake(void* data) {
  iso_t* iso = data;
  uv_async_send(&iso->wake->async);
}

/* The answer of a host callback for a run that is being stopped. No
 * Node-API: also used at teardown, when no JS may run. */
static void iso__stopped(cdn_value_t* result) {
  memset(result, 0, sizeof(*result));
  result->kind = CDN_VAL_ERROR;
  result->name = strdup("Error");
  result->message = strdup("the sandbox is being stopped");
}

/* lib/'s answer from a host callback: a primitive, or [0, encoded] for a
 * result that is an object, or [1, name, message, code, props] for an
 * exception. */
static napi_status iso__answer(napi_env env, cdn_env_t* cenv, napi_value ret,
                               cdn_value_t* result) {
  napi_valuetype type;
  napi_value tag, a;
  int32_t t;
  CDN_CHECK(napi_typeof(env, ret, &type));
  if (type != napi_object) return val_from_napi(env, cenv, ret, result);
  CDN_CHECK(napi_get_element(env, ret, 0, &tag));
  CDN_CHECK(napi_get_value_int32(env, tag, &t));
  if (t != 0) return val_error_from_napi(env, ret, 1, result);
  CDN_CHECK(napi_get_element(env, ret, 1, &a));
  return val_from_napi(env, cenv, a, result);
}

/* Host thread: call a host function for the sandbox. The function is
 * lib/'s wrapper: it decodes the arguments, calls the user's function and
 * encodes what it returned or threw. */
static void iso__call_host(iso_t* iso, iso_token_t* cb,
                           void* const* context_host, const cdn_value_t* args,
                           cdn_value_t* result) {
  napi_env env = iso->env->env;
  napi_handle_scope scope;
  napi_value fn, argv[2], global, ret;
  ctx_t* ctx = context_host != NULL ? *context_host : NULL;
  napi_status st;

  memset(result, 0, sizeof(*result));
  if (iso->env->closing || iso__load(&iso->env->run.stopping) ||
      iso__load(&iso->dispose_pending)) {
    iso__stopped(result); /* it unwinds without the host's answer */
    return;
  }
  st = napi_open_handle_scope(env, &scope);
  if (st == napi_ok) st = napi_get_reference_value(env, cb->ref, &fn);
  if (st == napi_ok)
    st = fn_value_to_napi(env, iso, (cdn_value_t*)args, &argv[0]);
  /* Its context, as lib's Context (held weakly here, not by the wrapper:
   * a JS WeakRef would keep it alive until the host's job ends, so that
   * a synchronous loop making contexts would keep every one). */
  if (st == napi_ok) st = napi_get_undefined(env, &argv[1]);
  if (st == napi_ok && ctx != NULL && ctx->self != NULL)
    st = napi_get_reference_value(env, ctx->self, &argv[1]);
  if (st == napi_ok && argv[1] == NULL) st = napi_get_undefined(env, &argv[1]);
  if (st == napi_ok) st = napi_get_global(env, &global);
  if (st == napi_ok) st = napi_call_function(env, global, fn, 2, argv, &ret);
  if (st == napi_ok) st = iso__answer(env, iso->env, ret, result);
  if (st != napi_ok) {
    /* lib's wrapper catches everything, so this is the host itself
     * stopping: a worker being terminated (its isolate is terminating), or
     * an environment that can no longer run JS. Its exception stays
     * pending, so that the host's JS stops too once the run returns
     * (clearing it would let a terminated worker run on); the isolate
     * stops now rather than at its deadline, and goes (it could not call
     * the host again anyway). */
    val_release(result);
    iso__stopped(result);
    if (iso->engine != NULL) {
      __atomic_store_n(&iso->dispose_pending, 1, __ATOMIC_RELEASE);
      cdn_engine_terminate(iso->engine);
    }
  }
  napi_close_handle_scope(env, scope);
}

/* A hook's work carried from a runner thread to the host thread. */
typedef struct {
  iso_t* iso;
  void* token;
  const cdn_value_t* args;
  cdn_value_t* result;
  cdn_engine_resolver_t* resolver;
  cdn_import_t* request;
  void* const* context_host; /* a call's: where its context's ctx_t is */
} iso_hop_t;

/* Host thread: the hops below run with the job's context active (the
 * runner waits, so iso->job is stable). */
static void iso__call_hop(void* p) {
  iso_hop_t* h = p;
  iso__job_scope(h->iso->env, h->iso->job);
  iso__call_host(h->iso, h->token, h->context_host, h->args, h->result);
  iso__job_scope(h->iso->env, NULL);
}

/* Host thread at teardown: the hops' answers without Node-API. */
static void iso__call_cancel(void* p) {
  iso__stopped(((iso_hop_t*)p)->result);
}

static void iso__import_cancel(void* p) {
  cdn_import_t* req = ((iso_hop_t*)p)->request;
  cdn_engine_resolver_release(req->resolver);
  if (req->referrer != NULL && req->kind != CDN_REFERRER_MODULE)
    cdn_engine_ref_release(req->referrer);
  req->referrer = NULL;
}

static void iso__adopt_cancel(void* p) {
  iso_hop_t* h = p;
  cdn_engine_resolver_release(h->resolver);
  prm_token_release(h->token);
}

/* Hook, on the lock holder's thread, inside a run. On the host thread the
 * callback's time is counted apart, for cpuTime and cpuTimeout; a runner
 * thread only waits (no CPU of its own) while the host runs it. */
static void iso__call(void* data, void* cbp, void* const* context_host,
                      const cdn_value_t* args, cdn_value_t* result) {
  iso_t* iso = data;
  uint64_t t0, c0 = 0;
  if (iso__load(&iso->owner) == ISO_RUNNER) {
    iso_hop_t h = {iso, cbp, args, result, NULL, NULL, context_host};
    run_ask(iso, iso__call_hop, iso__call_cancel, &h);
    return;
  }
  t0 = uv_hrtime();
  if (iso->measure_cpu > 0) {
    c0 = wd_thread_cpu_ns();
    /* Until it returns, the watchdog counts CPU time only up to here. */
    __atomic_store_n(&iso->cb_cpu_mark, c0, __ATOMIC_RELAXED);
  }
  iso__call_host(iso, cbp, context_host, args, result);
  if (c0 != 0) {
    iso__add(&iso->cb_cpu_ns, wd_thread_cpu_ns() - c0);
    __atomic_store_n(&iso->cb_cpu_mark, 0, __ATOMIC_RELAXED);
  }
  iso__add(&iso->cb_wall_ns, uv_hrtime() - t0);
}

/* Hook: the engine is done with a host reference. On a runner thread it
 * is queued for the host thread (DESIGN.md rule 3). */
static void iso__release(void* data, void* p) {
  iso_t* iso = data;
  iso_token_t* t = p;
  if (iso != NULL && !run_on_host(iso->env)) {
    run_release_later(iso->env, t);
    return;
  }
  if (t->kind != ISO_TOKEN_CALLBACK) {
    prm_token_release(t);
    return;
  }
  napi_delete_reference(t->cenv->env, t->ref);
  t->cenv->n_callbacks--;
  free(t);
}

static void iso__import_hop(void* p) {
  iso_hop_t* h = p;
  iso__job_scope(h->iso->env, h->iso->job);
  mod_import(h->iso, h->request);
  iso__job_scope(h->iso->env, NULL);
}

/* Hook, inside a run: sandbox code called import(). */
static void iso__import(void* data, cdn_import_t* req) {
  iso_t* iso = data;
  if (iso__load(&iso->owner) == ISO_RUNNER) {
    iso_hop_t h = {iso, NULL, NULL, NULL, NULL, req, NULL};
    run_ask(iso, iso__import_hop, iso__import_cancel, &h);
    return;
  }
  mod_import(iso, req);
}

static void iso__adopt_hop(void* p) {
  iso_hop_t* h = p;
  iso__job_scope(h->iso->env, h->iso->job);
  prm_adopt(h->iso, h->token, h->resolver);
  iso__job_scope(h->iso->env, NULL);
}

/* Hook, inside a run: the sandbox awaits a host promise. */
static void iso__adopt(void* data, void* token,
                       cdn_engine_resolver_t* resolver) {
  iso_t* iso = data;
  if (iso__load(&iso->owner) == ISO_RUNNER) {
    iso_hop_t h = {iso, token, NULL, NULL, resolver, NULL, NULL};
    run_ask(iso, iso__adopt_hop, iso__adopt_cancel, &h);
    return;
  }
  prm_adopt(iso, token, resolver);
}

/* Lock holder's thread: the engine asks to be polled (hooks.poll). */
static void iso__poll(void* data) {
  iso_t* iso = data;
  (void)wd_poll_start(&iso->env->wd, &iso->poll, iso->engine);
}

int iso_new(cdn_env_t* cenv, const cdn_isolate_options_t* opts, iso_t** out) {
  cdn_host_hooks_t hooks;
  iso_t* iso = calloc(1, sizeof(*iso));
  struct iso_wake_s* wake = calloc(1, sizeof(*wake));
  int err;
  if (iso == NULL || wake == NULL) {
    free(iso);
    free(wake);
    return CDN_EINTERNAL;
  }
  iso->env = cenv;
  iso->refs = 1;
  iso->wake = wake;
  iso->next_task_ms = -1;
  wake->iso = iso;
  wake->cenv = cenv;
  wake->async.data = wake;
  wake->timer.data = wake;
  if (uv_async_init(cenv->loop, &wake->async, iso__async_cb) != 0) {
    free(iso);
    free(wake);
    return CDN_EINTERNAL;
  }
  uv_timer_init(cenv->loop, &wake->timer);
  cdn_handle_opened(cenv);
  cdn_handle_opened(cenv);
  /* Sandbox housekeeping never keeps the host process alive. */
  uv_unref((uv_handle_t*)&wake->async);
  uv_unref((uv_handle_t*)&wake->timer);

  {
    napi_value name;
    if (napi_create_string_utf8(cenv->env, "cordon.Isolate", NAPI_AUTO_LENGTH,
                                &name) != napi_ok ||
        napi_async_init(cenv->env, NULL, name, &iso->async) != napi_ok)
      iso->async = NULL;
  }
  hooks.data = iso;
  hooks.wake = iso__wake;
  hooks.call = iso__call;
  hooks.release = iso__release;
  hooks.adopt = iso__adopt;
  hooks.import = iso__import;
  hooks.poll = iso__poll;
  err = cdn_engine_isolate_new(opts, &hooks, &iso->engine);
  if (err != CDN_OK) {
    if (iso->async != NULL) napi_async_destroy(cenv->env, iso->async);
    iso->engine = NULL;
    iso__wake_close(wake);
    free(iso);
    return err == CDN_EUNSAFE ? err : CDN_EINTERNAL;
  }
  cenv->refs++;
  cenv->n_isolates++;
  iso->next = cenv->isolates;
  if (cenv->isolates != NULL) cenv->isolates->prev = iso;
  cenv->isolates = iso;
  *out = iso;
  return CDN_OK;
}

static void iso__forget(iso_t* iso);

void iso_dispose(iso_t* iso) {
  iso_job_t* jobs;
  if (iso->engine == NULL) return;
  if (iso__load(&iso->owner) == ISO_HOST) {
    /* Called from a host callback inside a run of this isolate on the
     * host's stack: stop the run; iso_call_ex() (or the pump) finishes
     * the dispose once it has unwound. */
    __atomic_store_n(&iso->dispose_pending, 1, __ATOMIC_RELEASE);
    cdn_engine_terminate(iso->engine);
    return;
  }
  /* Stop an async job that holds it and wait for it to let go; from inside
   * a host callback of that job, iso_finish_job() finishes instead. */
  if (run_stop_isolate(iso, &jobs) == CDN_KBUSY) return;
  if (iso->engine != NULL) { /* (host code run while waiting may have) */
    run_forget_results(iso);
    wd_poll_stop(&iso->env->wd, &iso->poll);
    cdn_engine_isolate_dispose(iso->engine);
    iso->engine = NULL;
    iso__forget(iso);
  }
  /* Jobs that never started: rejected with ERR_ISOLATE_DISPOSED. */
  while (jobs != NULL) {
    iso_job_t* job = jobs;
    jobs = job->next;
    job->err = CDN_KDISPOSED;
    iso_finish_job(job);
  }
}

/* After the engine is gone: close the loop handles, leave the env's list,
 * reject the host promises of sandbox promises it dropped. */
static void iso__forget(iso_t* iso) {
  struct iso_wake_s* wake = iso->wake;
  cdn_env_t* cenv = iso->env;
  prm_settle_orphans(cenv);
  iso->wake = NULL;
  iso__wake_close(wake);
  if (iso->prev != NULL)
    iso->prev->next = iso->next;
  else
    cenv->isolates = iso->next;
  if (iso->next != NULL) iso->next->prev = iso->prev;
  iso->prev = iso->next = NULL;
}

void iso_unref(iso_t* iso) {
  cdn_env_t* cenv = iso->env;
  if (--iso->refs > 0) return;
  iso_dispose(iso);
  CDN_ASSERT(iso->engine == NULL);
  if (iso->async != NULL && !cenv->closing)
    napi_async_destroy(cenv->env, iso->async);
  free(iso);
  cenv->n_isolates--;
  cdn_env_unref(cenv);
}

/* ---- exports ---------------------------------------------------------- */

static void iso__finalize(napi_env env, void* data, void* hint) {
  (void)env;
  (void)hint;
  iso_unref(data);
}

CDN_DEFERRED_FINALIZER(iso__finalize_gc, iso__finalize)

iso_t* iso_from_handle(napi_env env, napi_value v) {
  void* p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return p;
}

/* isolateNew(memoryLimitMB, allowUnsafeFlags) -> handle */
static napi_value iso__js_new(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], ext;
  double limit;
  bool unsafe;
  cdn_isolate_options_t opts;
  iso_t* iso;
  int err;
  cdn_env_t* cenv = cdn_env_get(env);
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CDN_CALL(env, napi_get_value_double(env, argv[0], &limit));
  CDN_CALL(env, napi_get_value_bool(env, argv[1], &unsafe));
  opts.memory_limit_mb = (size_t)limit;
  opts.allow_unsafe_flags = unsafe;
  err = iso_new(cenv, &opts, &iso);
  if (err != CDN_OK) return cdn_throw(env, cenv, err, NULL);
  if (napi_create_external(env, iso, iso__finalize_gc, NULL, &ext) != napi_ok) {
    iso_unref(iso);
    CDN_CALL(env, napi_generic_failure);
  }
  return ext;
}

static napi_value iso__js_dispose(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  iso_dispose(iso_from_handle(env, argv[0]));
  return NULL;
}

/* abort(isolate, id): see run_abort. */
static napi_value iso__js_abort(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  double id;
  iso_t* iso;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  iso = iso_from_handle(env, argv[0]);
  CDN_CALL(env, napi_get_value_double(env, argv[1], &id));
  if (iso->engine != NULL && id >= 1) run_abort(iso, (uint64_t)id);
  return NULL;
}

static int iso__gc_body(void* arg, cdn_value_t* out) {
  (void)out;
  cdn_engine_gc(arg);
  return CDN_OK;
}

static napi_value iso__js_gc(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  cdn_value_t out;
  iso_t* iso;
  int err;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  iso = iso_from_handle(env, argv[0]);
  if (!iso_alive(iso)) return cdn_throw(env, iso->env, CDN_KDISPOSED, NULL);
  err = iso_call(iso, 0, iso__gc_body, iso->engine, &out);
  if (err != CDN_OK) return cdn_throw(env, iso->env, err, &out);
  return NULL;
}

static napi_status iso__set_num(napi_env env, napi_value obj, const char* key,
                                double v) {
  napi_value n;
  CDN_CHECK(napi_create_double(env, v, &n));
  return napi_set_named_property(env, obj, key, n);
}

static int iso__stats_body(void* arg, cdn_value_t* out) {
  (void)out;
  cdn_engine_heap_stats(((void**)arg)[0], ((void**)arg)[1]);
  return CDN_OK;
}

static napi_value iso__js_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1, i;
  napi_value argv[1], obj;
  cdn_value_t out;
  cdn_heap_stats_t hs;
  void* args[2];
  iso_t* iso;
  int err;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  iso = iso_from_handle(env, argv[0]);
  if (!iso_alive(iso)) return cdn_throw(env, iso->env, CDN_KDISPOSED, NULL);
  args[0] = iso->engine;
  args[1] = &hs;
  err = iso_call(iso, 0, iso__stats_body, args, &out);
  if (err != CDN_OK) return cdn_throw(env, iso->env, err, &out);
  {
    const struct {
      const char* key;
      double value;
    } fields[] = {
        {"totalHeapSize", (double)hs.total_heap_size},
        {"usedHeapSize", (double)hs.used_heap_size},
        {"heapSizeLimit", (double)hs.heap_size_limit},
        {"externalMemory", (double)hs.external_memory},
        {"arrayBufferBytes", (double)hs.array_buffers},
        {"contexts", (double)hs.contexts},
        {"scripts", (double)hs.scripts},
        {"callbacks", (double)hs.callbacks},
        {"functions", (double)hs.functions},
        {"promises", (double)hs.promises},
        {"resolvers", (double)hs.resolvers},
        {"modules", (double)hs.modules},
        {"importHosts", (double)hs.import_hosts},
        {"tasksRun", (double)hs.tasks_run},
    };
    CDN_CALL(env, napi_create_object(env, &obj));
    for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
      CDN_CALL(env, iso__set_num(env, obj, fields[i].key, fields[i].value));
  }
  return obj;
}

/* isolateTimes(handle) -> [wallNs, cpuNs] as BigInts. Any time: the
 * holder adds to them atomically. */
static napi_value iso__js_times(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], arr, wall, cpu;
  iso_t* iso;
  CDN_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  iso = iso_from_handle(env, argv[0]);
  CDN_CALL(env,
           napi_create_bigint_uint64(env, iso__load(&iso->wall_ns), &wall));
  CDN_CALL(env, napi_create_bigint_uint64(env, iso__load(&iso->cpu_ns), &cpu));
  CDN_CALL(env, napi_create_array_with_length(env, 2, &arr));
  CDN_CALL(env, napi_set_element(env, arr, 0, wall));
  CDN_CALL(env, napi_set_element(env, arr, 1, cpu));
  return arr;
}

/* liveRecords() -> counts of host records alive in this environment. */
static napi_value iso__js_live(napi_env env, napi_callback_info info) {
  napi_value obj;
  cdn_env_t* cenv = cdn_env_get(env);
  (void)info;
  CDN_CALL(env, napi_create_object(env, &obj));
  CDN_CALL(env, iso__set_num(env, obj, "isolates", (double)cenv->n_isolates));
  CDN_CALL(env, iso__set_num(env, obj, "contexts", (double)cenv->n_contexts));
  CDN_CALL(env, iso__set_num(env, obj, "scripts", (double)cenv->n_scripts));
  CDN_CALL(env, iso__set_num(env, obj, "callbacks", (double)cenv->n_callbacks));
  CDN_CALL(env, iso__set_num(env, obj, "functions", (double)cenv->n_functions));
  return obj;
}

/* A host function for the engine: the reference is the engine's now. */
napi_status iso_callback_new(cdn_env_t* cenv, napi_value fn, void** out) {
  CDN_CHECK(prm_token_new(cenv, ISO_TOKEN_CALLBACK, fn, out));
  cenv->n_callbacks++;
  return napi_ok;
}

void iso_callback_free(void* cb) {
  iso__release(NULL, cb);
}

napi_value iso_init_exports(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"isolateNew", NULL, iso__js_new, NULL, NULL, NULL, napi_default, NULL},
      {"isolateAbort", NULL, iso__js_abort, NULL, NULL, NULL, napi_default,
       NULL},
      {"isolateDispose", NULL, iso__js_dispose, NULL, NULL, NULL, napi_default,
       NULL},
      {"isolateGc", NULL, iso__js_gc, NULL, NULL, NULL, napi_default, NULL},
      {"isolateStats", NULL, iso__js_stats, NULL, NULL, NULL, napi_default,
       NULL},
      {"liveRecords", NULL, iso__js_live, NULL, NULL, NULL, napi_default, NULL},
      {"isolateTimes", NULL, iso__js_times, NULL, NULL, NULL, napi_default,
       NULL},
  };
  CDN_CALL(env, napi_define_properties(
                    env, exports, sizeof(props) / sizeof(props[0]), props));
  return exports;
}
