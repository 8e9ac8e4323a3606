/* runner.c: runner threads for async calls, who holds each isolate, and
 * the host thread's mailbox.
 *
 * An async call (context.run, script.run, applyAsync) becomes a job queued
 * on its isolate. Each environment has a pool of runner threads (up to the
 * machine's parallelism, started on demand): a runner takes an isolate
 * that has jobs and nobody holding it, holds it (ISO_RUNNER) and runs its
 * jobs one after the other under the isolate lock, then lets go. So the
 * jobs of one isolate run in order and never at once, different isolates
 * run in parallel, and the host thread's event loop keeps turning.
 *
 * A sync call on the host thread first takes the isolate for the host
 * (ISO_HOST). If a runner holds it, the host waits, and while it waits it
 * answers the runners' requests, so that a job that calls a host function
 * can finish and let go. The one wait that could never end — a host
 * callback of a job calling into that job's own isolate synchronously —
 * is refused with CDN_KBUSY instead.
 *
 * Host code only ever runs on the host thread: a runner's host callback,
 * import() and adoption of a host promise are requests the runner queues
 * in the mailbox and waits for (run_ask); host references the engine drops
 * on a runner are queued for release; finished jobs are queued for the
 * host to settle their promises. One uv_async wakes the host loop for all
 * of them, and keeps it alive while jobs are in flight.
 *
 * Everything below is under run.mu, except what says otherwise.
 */
#include <stdlib.h>
#include <string.h>

#include "cordon.h"

/* Jobs a runner runs on one isolate, in a row, while others wait. */
#define RUN_BATCH 32

static void run__set_owner(iso_t* iso, int owner) {
  __atomic_store_n(&iso->owner, owner, __ATOMIC_RELEASE);
}

static int run__disposing(iso_t* iso) {
  return __atomic_load_n(&iso->dispose_pending, __ATOMIC_ACQUIRE);
}

int run_on_host(cdn_env_t* cenv) {
  uv_thread_t self = uv_thread_self();
  return uv_thread_equal(&self, &cenv->run.host);
}

/* ---- runner threads ----------------------------------------------------- */

static void run__thread(void* arg);

/* With mu held: start one more runner thread, if the pool has room. */
static int run__spawn(cdn_env_t* cenv) {
  run_t* r = &cenv->run;
  if (r->nthreads >= r->max_threads ||
      uv_thread_create(&r->threads[r->nthreads], run__thread, cenv) != 0)
    return 0;
  r->nthreads++;
  return 1;
}

/* With mu held: put `iso` on the ready list and get a runner to it. */
static void run__schedule(cdn_env_t* cenv, iso_t* iso) {
  run_t* r = &cenv->run;
  if (iso->scheduled || r->stopping) return;
  iso->scheduled = 1;
  iso->ready_next = NULL;
  if (r->ready_tail != NULL)
    r->ready_tail->ready_next = iso;
  else
    r->ready = iso;
  r->ready_tail = iso;
  if (r->idle > r->waking) {
    /* (idle counts a runner until it has woken: without `waking`, two
     * isolates scheduled at once would both go to one sleeping runner) */
    r->waking++;
    uv_cond_signal(&r->pool_cv);
  } else {
    (void)run__spawn(cenv);
  }
}

/* With mu held: take the first isolate off the ready list. */
static iso_t* run__next(run_t* r) {
  iso_t* iso = r->ready;
  if (iso == NULL) return NULL;
  r->ready = iso->ready_next;
  if (r->ready == NULL) r->ready_tail = NULL;
  iso->ready_next = NULL;
  iso->scheduled = 0;
  return iso;
}

/* With mu held: take `iso` off the ready list, wherever it is. */
static void run__unschedule(run_t* r, iso_t* iso) {
  iso_t** p;
  iso_t* prev = NULL;
  if (!iso->scheduled) return;
  for (p = &r->ready; *p != NULL; prev = *p, p = &(*p)->ready_next) {
    if (*p != iso) continue;
    *p = iso->ready_next;
    if (r->ready_tail == iso) r->ready_tail = prev;
    break;
  }
  iso->ready_next = NULL;
  iso->scheduled = 0;
}

/* With mu held: hand a finished job to the host. */
static void run__done(run_t* r, iso_job_t* job) {
  job->next = NULL;
  if (r->done_tail != NULL)
    r->done_tail->next = job;
  else
    r->done = job;
  r->done_tail = job;
  uv_async_send(r->mail);
}

static void run__thread(void* arg) {
  cdn_env_t* cenv = arg;
  run_t* r = &cenv->run;
  uv_mutex_lock(&r->mu);
  for (;;) {
    iso_t* iso;
    int n = 0;
    while (!r->stopping && r->ready == NULL) {
      r->idle++;
      uv_cond_wait(&r->pool_cv, &r->mu);
      r->idle--;
      if (r->waking > 0) r->waking--;
    }
    if (r->stopping) break;
    iso = run__next(r);
    /* The host took it meanwhile: it schedules it again when it lets go. */
    if (iso->owner != ISO_FREE || run__disposing(iso)) continue;
    run__set_owner(iso, ISO_RUNNER);
    iso->runner = uv_thread_self();
    /* Run its jobs in a row, unless the host waits for the isolate. */
    while (iso->jobs != NULL && !run__disposing(iso) && !r->stopping &&
           (n == 0 || (iso->host_waiting == 0 && n < RUN_BATCH))) {
      iso_job_t* job = iso->jobs;
      iso->jobs = job->next;
      if (iso->jobs == NULL) iso->jobs_tail = NULL;
      uv_mutex_unlock(&r->mu);
      iso_run_job(job);
      uv_mutex_lock(&r->mu);
      run__done(r, job);
      n++;
    }
    run__set_owner(iso, ISO_FREE);
    if (iso->jobs != NULL && !run__disposing(iso)) run__schedule(cenv, iso);
    uv_cond_broadcast(&r->host_cv);
  }
  uv_mutex_unlock(&r->mu);
}

/* ---- the host thread's side --------------------------------------------- */

int run_serve(cdn_env_t* cenv) {
  run_t* r = &cenv->run;
  int n = 0;
  /* One at a time, so that requests not yet answered stay in the list:
   * host code run by one of them (process.exit() and its 'exit' handlers,
   * a sync call that waits for another runner) can answer the others. */
  for (;;) {
    run_msg_t* m;
    iso_t* iso;
    uv_mutex_lock(&r->mu);
    m = r->requests;
    if (m != NULL) r->requests = m->next;
    uv_mutex_unlock(&r->mu);
    if (m == NULL) break;
    iso = m->iso;
    iso->serving++;
    if (cenv->closing)
      m->cancel(m->arg); /* teardown: no handle scope, no JS */
    else
      m->fn(m->arg);
    iso->serving--;
    uv_mutex_lock(&r->mu);
    m->answered = 1; /* the runner may free `m` from here on */
    uv_cond_broadcast(&r->reply_cv);
    uv_mutex_unlock(&r->mu);
    n++;
  }
  return n;
}

/* With mu held (released while serving): wait until `iso`'s runner lets
 * go, answering requests meanwhile. */
/* Waits, with r->mu held, for the runner to let go of `iso`, serving its
 * requests meanwhile. `stopping` (run_stop): terminate the job again every
 * 10 ms until it is out, as one TerminateExecution is not enough: a step
 * of the job under way when it came (a checkpoint, a host callback's
 * answer) can consume it and the job's next script start clean (seen on
 * Node 24: a worker's exit hung on `for (;;) {}`). */
static void run__wait_runner(cdn_env_t* cenv, iso_t* iso, int stopping) {
  run_t* r = &cenv->run;
  while (iso->owner == ISO_RUNNER) {
    if (r->requests != NULL) {
      uv_mutex_unlock(&r->mu);
      run_serve(cenv);
      uv_mutex_lock(&r->mu);
      continue;
    }
    iso->host_waiting++;
    if (stopping) {
      cdn_engine_terminate(iso->engine);
      (void)uv_cond_timedwait(&r->host_cv, &r->mu, 10 * 1000 * 1000);
    } else {
      uv_cond_wait(&r->host_cv, &r->mu);
    }
    iso->host_waiting--;
  }
}

int run_acquire(iso_t* iso) {
  run_t* r = &iso->env->run;
  int err = 0;
  uv_mutex_lock(&r->mu);
  if (iso->owner == ISO_RUNNER && iso->serving > 0) {
    /* This host stack is inside a callback of the job that holds the
     * isolate: waiting for that job would wait for ourselves. */
    err = CDN_KBUSY;
  } else {
    run__wait_runner(iso->env, iso, 0);
  }
  if (err == 0) run__set_owner(iso, ISO_HOST);
  uv_mutex_unlock(&r->mu);
  return err;
}

int run_busy(iso_t* iso) {
  run_t* r = &iso->env->run;
  int busy;
  uv_mutex_lock(&r->mu);
  busy = iso->owner == ISO_RUNNER || iso->jobs != NULL;
  uv_mutex_unlock(&r->mu);
  return busy;
}

int run_try_acquire(iso_t* iso) {
  run_t* r = &iso->env->run;
  int ok;
  uv_mutex_lock(&r->mu);
  ok = iso->owner == ISO_FREE;
  if (ok) run__set_owner(iso, ISO_HOST);
  uv_mutex_unlock(&r->mu);
  return ok;
}

void run_release_owner(iso_t* iso) {
  run_t* r = &iso->env->run;
  uv_mutex_lock(&r->mu);
  run__set_owner(iso, ISO_FREE);
  if (iso->jobs != NULL && !run__disposing(iso)) run__schedule(iso->env, iso);
  uv_mutex_unlock(&r->mu);
}

int run_queue(iso_job_t* job) {
  iso_t* iso = job->iso;
  run_t* r = &iso->env->run;
  uv_mutex_lock(&r->mu);
  if (r->stopping) {
    uv_mutex_unlock(&r->mu);
    return CDN_KSHUTDOWN;
  }
  job->next = NULL;
  if (iso->jobs_tail != NULL)
    iso->jobs_tail->next = job;
  else
    iso->jobs = job;
  iso->jobs_tail = job;
  if (r->inflight++ == 0) uv_ref((uv_handle_t*)r->mail);
  if (iso->owner == ISO_FREE) run__schedule(iso->env, iso);
  /* Held (a job queued from a host callback, or from host code run while
   * the host delivers its promises): scheduled when let go, but the pool
   * must have a runner by then. */
  if (r->nthreads == 0) (void)run__spawn(iso->env);
  uv_mutex_unlock(&r->mu);
  if (r->nthreads == 0) {
    /* Not even one runner could be started: nothing would ever run it. */
    uv_mutex_lock(&r->mu);
    if (r->nthreads == 0 && iso->jobs == job) {
      iso->jobs = iso->jobs_tail = NULL;
      run__unschedule(r, iso);
      if (--r->inflight == 0) uv_unref((uv_handle_t*)r->mail);
      uv_mutex_unlock(&r->mu);
      return CDN_EINTERNAL;
    }
    uv_mutex_unlock(&r->mu);
  }
  return 0;
}

void run_abort(iso_t* iso, uint64_t id) {
  run_t* r = &iso->env->run;
  iso_job_t* prev = NULL;
  iso_job_t* job;
  uv_mutex_lock(&r->mu);
  for (job = iso->jobs; job != NULL; prev = job, job = job->next) {
    if (job->id != id) continue;
    if (prev != NULL)
      prev->next = job->next;
    else
      iso->jobs = job->next;
    if (iso->jobs_tail == job) iso->jobs_tail = prev;
    job->err = CDN_KABORTED;
    run__done(r, job);
    uv_mutex_unlock(&r->mu);
    return;
  }
  uv_mutex_unlock(&r->mu);
  /* Running, or between the queue and its deadline's arming: the run
   * reads abort_id after it arms (iso__run), and wd_fire finds the entry
   * once it is armed, so one of the two sees it. */
  __atomic_store_n(&iso->abort_id, id, __ATOMIC_SEQ_CST);
  (void)wd_fire(&iso->env->wd, id, WD_FIRED_ABORT);
}

void run_finished(cdn_env_t* cenv) {
  run_t* r = &cenv->run;
  int idle;
  uv_mutex_lock(&r->mu);
  idle = --r->inflight == 0;
  uv_mutex_unlock(&r->mu);
  if (idle && r->mail != NULL) uv_unref((uv_handle_t*)r->mail);
}

int run_stop_isolate(iso_t* iso, iso_job_t** jobs) {
  run_t* r = &iso->env->run;
  *jobs = NULL;
  uv_mutex_lock(&r->mu);
  __atomic_store_n(&iso->dispose_pending, 1, __ATOMIC_RELEASE);
  if (iso->owner == ISO_RUNNER) {
    cdn_engine_terminate(iso->engine);
    if (iso->serving > 0) {
      uv_mutex_unlock(&r->mu);
      return CDN_KBUSY;
    }
    run__wait_runner(iso->env, iso, 0);
  }
  *jobs = iso->jobs;
  iso->jobs = iso->jobs_tail = NULL;
  run__unschedule(r, iso);
  uv_mutex_unlock(&r->mu);
  return 0;
}

void run_forget_results(iso_t* iso) {
  run_t* r = &iso->env->run;
  iso_job_t* job;
  uv_mutex_lock(&r->mu);
  for (job = r->done; job != NULL; job = job->next) {
    if (job->iso != iso) continue;
    cdn_value_free(&job->out); /* releases its records: the engine lives */
    job->err = CDN_KDISPOSED;
  }
  uv_mutex_unlock(&r->mu);
}

void run_ask(iso_t* iso, void (*fn)(void*), void (*cancel)(void*), void* arg) {
  run_t* r = &iso->env->run;
  run_msg_t m;
  m.fn = fn;
  m.cancel = cancel;
  m.arg = arg;
  m.iso = iso;
  m.answered = 0;
  uv_mutex_lock(&r->mu);
  m.next = r->requests;
  r->requests = &m;
  uv_cond_broadcast(&r->host_cv); /* a host waiting for an isolate serves */
  uv_async_send(r->mail);
  while (!m.answered) uv_cond_wait(&r->reply_cv, &r->mu);
  uv_mutex_unlock(&r->mu);
}

void run_release_later(cdn_env_t* cenv, iso_token_t* t) {
  run_t* r = &cenv->run;
  uv_mutex_lock(&r->mu);
  t->next = r->releases;
  r->releases = t;
  uv_async_send(r->mail);
  uv_mutex_unlock(&r->mu);
}

/* Host thread: release the references runners dropped and settle the
 * jobs they finished (at teardown, `closing` makes both only free). */
static void run__drain(cdn_env_t* cenv) {
  run_t* r = &cenv->run;
  iso_job_t* done;
  iso_token_t* releases;
  uv_mutex_lock(&r->mu);
  done = r->done;
  r->done = r->done_tail = NULL;
  releases = r->releases;
  r->releases = NULL;
  uv_mutex_unlock(&r->mu);
  while (releases != NULL) {
    iso_token_t* t = releases;
    releases = t->next;
    iso_callback_free(t);
  }
  while (done != NULL) {
    iso_job_t* job = done;
    done = job->next;
    iso_finish_job(job);
  }
}

/* Host loop: answer requests, release references, settle finished jobs.
 * In a callback scope, so that the host's microtasks run afterwards. */
static void run__mail_cb(uv_async_t* async) {
  cdn_env_t* cenv = async->data;
  napi_env env = cenv->env;
  napi_handle_scope hs;
  napi_callback_scope cs = NULL;
  napi_value resource;
  if (napi_open_handle_scope(env, &hs) != napi_ok) return;
  if (napi_create_object(env, &resource) != napi_ok ||
      napi_open_callback_scope(env, resource, cenv->async, &cs) != napi_ok)
    cs = NULL;
  run_serve(cenv);
  run__drain(cenv);
  if (cs != NULL) napi_close_callback_scope(env, cs);
  napi_close_handle_scope(env, hs);
}

int run_init(cdn_env_t* cenv) {
  run_t* r = &cenv->run;
  int n = (int)uv_available_parallelism();
  memset(r, 0, sizeof(*r));
  r->host = uv_thread_self();
  r->max_threads = n < 2 ? 2 : n;
  r->threads = calloc((size_t)r->max_threads, sizeof(uv_thread_t));
  r->mail = malloc(sizeof(*r->mail));
  if (r->threads == NULL || r->mail == NULL) goto fail;
  if (uv_mutex_init(&r->mu) != 0) goto fail;
  if (uv_cond_init(&r->host_cv) != 0) goto fail_mu;
  if (uv_cond_init(&r->pool_cv) != 0) goto fail_host;
  if (uv_cond_init(&r->reply_cv) != 0) goto fail_pool;
  if (uv_async_init(cenv->loop, r->mail, run__mail_cb) != 0) goto fail_reply;
  cdn_handle_opened(cenv);
  r->mail->data = cenv;
  uv_unref((uv_handle_t*)r->mail);
  r->initialized = 1;
  return 0;
fail_reply:
  uv_cond_destroy(&r->reply_cv);
fail_pool:
  uv_cond_destroy(&r->pool_cv);
fail_host:
  uv_cond_destroy(&r->host_cv);
fail_mu:
  uv_mutex_destroy(&r->mu);
fail:
  free(r->threads);
  free(r->mail);
  r->threads = NULL;
  r->mail = NULL;
  return -1;
}

void run_stop(cdn_env_t* cenv) {
  run_t* r = &cenv->run;
  uv_thread_t stuck[8];
  int i, k, n, nstuck = 0;
  iso_t* iso;
  if (!r->initialized) return;
  uv_mutex_lock(&r->mu);
  r->stopping = 1;
  uv_cond_broadcast(&r->pool_cv);
  for (iso = cenv->isolates; iso != NULL; iso = iso->next) {
    if (iso->owner == ISO_RUNNER) cdn_engine_terminate(iso->engine);
  }
  for (iso = cenv->isolates; iso != NULL; iso = iso->next) {
    if (iso->owner == ISO_RUNNER && iso->serving > 0) {
      /* process.exit() from a host callback of this job: its runner waits
       * for the callback that is exiting the process. It stays parked on
       * its condition variable (it runs nothing more); the others are
       * joined. */
      if (nstuck < (int)(sizeof(stuck) / sizeof(stuck[0])))
        stuck[nstuck++] = iso->runner;
      continue;
    }
    run__wait_runner(cenv, iso, 1);
  }
  n = r->nthreads;
  r->nthreads = 0;
  uv_mutex_unlock(&r->mu);
  for (i = 0; i < n; i++) {
    int parked = 0;
    for (k = 0; k < nstuck; k++)
      parked |= uv_thread_equal(&r->threads[i], &stuck[k]);
    if (!parked) uv_thread_join(&r->threads[i]);
  }
}

static void run__mail_close_cb(uv_handle_t* handle) {
  cdn_env_t* cenv = handle->data;
  free(handle);
  cdn_handle_closed(cenv);
}

void run_close(cdn_env_t* cenv) {
  run_t* r = &cenv->run;
  if (!r->initialized) return;
  run_stop(cenv);
  run__drain(cenv); /* the environment is closing: this only frees */
  uv_close((uv_handle_t*)r->mail, run__mail_close_cb);
  r->mail = NULL;
  uv_cond_destroy(&r->reply_cv);
  uv_cond_destroy(&r->pool_cv);
  uv_cond_destroy(&r->host_cv);
  uv_mutex_destroy(&r->mu);
  free(r->threads);
  r->threads = NULL;
  r->initialized = 0;
}
