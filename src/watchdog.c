/* watchdog.c: see watchdog.h. */
#include "watchdog.h"

#include <pthread.h>
#include <stdlib.h>

static uint64_t wd__clock_ns(clockid_t clock) {
  struct timespec ts;
  if (clock_gettime(clock, &ts) != 0) return 0;
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t wd_thread_cpu_ns(void) {
  return wd__clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

/* With mu held: the CPU time entry `e` has used. */
static uint64_t wd__cpu_used(wd_entry_t* e) {
  uint64_t paused = __atomic_load_n(e->paused, __ATOMIC_RELAXED);
  uint64_t now = paused != 0 ? paused : wd__clock_ns(e->cpu_clock);
  uint64_t used = now > e->cpu_base ? now - e->cpu_base : 0;
  uint64_t excluded =
      __atomic_load_n(e->excluded, __ATOMIC_RELAXED) - e->excluded_base;
  return used > excluded ? used - excluded : 0;
}

static void wd__run(void* arg);

/* With mu held. */
static void wd__poll_unlink(wd_t* wd, wd_poll_t* p) {
  if (!p->listed) return;
  if (p->prev != NULL)
    p->prev->next = p->next;
  else
    wd->polls = p->next;
  if (p->next != NULL) p->next->prev = p->prev;
  p->prev = p->next = NULL;
  p->listed = 0;
}

/* With mu held: a round of polls when one is due; the time of the next. */
static uint64_t wd__poll(wd_t* wd, uint64_t now) {
  wd_poll_t* p;
  wd_poll_t* next;
  if (wd->polls == NULL) return UINT64_MAX;
  if (wd->next_poll <= now) {
    for (p = wd->polls; p != NULL; p = next) {
      next = p->next;
      if (!cdn_engine_poll(p->iso)) wd__poll_unlink(wd, p);
    }
    wd->next_poll = now + (uint64_t)CDN_POLL_INTERVAL_MS * 1000000;
  }
  return wd->polls != NULL ? wd->next_poll : UINT64_MAX;
}

/* With mu held: start the thread on first use. */
static int wd__start(wd_t* wd) {
  int err;
  if (wd->started) return 0;
  err = uv_thread_create(&wd->thread, wd__run, wd);
  if (err == 0) wd->started = 1;
  return err;
}

/* The watchdog thread. Sleeps until the earliest armed deadline, fires what
 * has passed, and repeats until wd_close(). */
static void wd__run(void* arg) {
  wd_t* wd = arg;
  uv_mutex_lock(&wd->mu);
  while (!wd->stopping) {
    uint64_t now = uv_hrtime();
    uint64_t next = UINT64_MAX;
    wd_entry_t* e;
    for (e = wd->head; e != NULL; e = e->next) {
      if (e->fired) {
        /* Until the run unwinds and disarms it (under mu: no terminate
         * after wd_disarm has returned). */
        if (e->refire_at <= now) {
          cdn_engine_terminate(e->iso);
          e->refire_at = now + WD_REFIRE_NS;
        }
        if (e->refire_at < next) next = e->refire_at;
        continue;
      }
      if (e->deadline <= now) {
        e->fired = WD_FIRED_WALL;
        cdn_engine_terminate(e->iso);
        e->refire_at = now + WD_REFIRE_NS;
        if (e->refire_at < next) next = e->refire_at;
        continue;
      }
      if (e->deadline < next) next = e->deadline;
      if (e->cpu_budget > 0) {
        uint64_t used = wd__cpu_used(e);
        uint64_t wait = e->cpu_budget - used;
        if (used >= e->cpu_budget) {
          e->fired = WD_FIRED_CPU;
          cdn_engine_terminate(e->iso);
          e->refire_at = now + WD_REFIRE_NS;
          if (e->refire_at < next) next = e->refire_at;
          continue;
        }
        if (wait < WD_CPU_POLL_NS) wait = WD_CPU_POLL_NS;
        if (now + wait < next) next = now + wait;
      }
    }
    {
      uint64_t poll = wd__poll(wd, now);
      if (poll < next) next = poll;
    }
    wd->sleeping_until = next;
    if (next == UINT64_MAX)
      uv_cond_wait(&wd->cv, &wd->mu);
    else
      (void)uv_cond_timedwait(&wd->cv, &wd->mu, next - now);
  }
  uv_mutex_unlock(&wd->mu);
}

int wd_init(wd_t* wd) {
  int err;
  wd->started = 0;
  wd->stopping = 0;
  wd->head = NULL;
  wd->polls = NULL;
  wd->next_poll = UINT64_MAX;
  wd->sleeping_until = UINT64_MAX;
  err = uv_mutex_init(&wd->mu);
  if (err) return err;
  err = uv_cond_init(&wd->cv);
  if (err) {
    uv_mutex_destroy(&wd->mu);
    return err;
  }
  wd->initialized = 1;
  return 0;
}

void wd_close(wd_t* wd) {
  int started;
  if (!wd->initialized) return;
  uv_mutex_lock(&wd->mu);
  wd->stopping = 1;
  started = wd->started;
  uv_cond_signal(&wd->cv);
  uv_mutex_unlock(&wd->mu);
  if (started) uv_thread_join(&wd->thread);
  uv_cond_destroy(&wd->cv);
  uv_mutex_destroy(&wd->mu);
  wd->initialized = 0;
}

int wd_arm(wd_t* wd, wd_entry_t* e, cdn_engine_isolate_t* iso,
           uint64_t timeout_ns, uint64_t cpu_ns, const uint64_t* excluded,
           const uint64_t* paused) {
  int err = 0;
  uint64_t now = uv_hrtime();
  uint64_t due;
  if (timeout_ns == 0)
    e->deadline = UINT64_MAX;
  else
    e->deadline =
        timeout_ns > UINT64_MAX - now ? UINT64_MAX - 1 : now + timeout_ns;
  due = e->deadline;
  e->iso = iso;
  e->fired = 0;
  e->prev = NULL;
  e->cpu_budget = 0;
  if (cpu_ns > 0 && pthread_getcpuclockid(pthread_self(), &e->cpu_clock) == 0) {
    e->cpu_budget = cpu_ns;
    e->cpu_base = wd__clock_ns(e->cpu_clock);
    e->excluded = excluded;
    e->excluded_base = __atomic_load_n(excluded, __ATOMIC_RELAXED);
    e->paused = paused;
    if (now + cpu_ns < due) due = now + cpu_ns;
  }
  uv_mutex_lock(&wd->mu);
  err = wd__start(wd);
  if (err) {
    uv_mutex_unlock(&wd->mu);
    return err;
  }
  e->next = wd->head;
  if (wd->head != NULL) wd->head->prev = e;
  wd->head = e;
  /* Only wake the thread when it would otherwise sleep past this deadline. */
  if (due < wd->sleeping_until) {
    wd->sleeping_until = due;
    uv_cond_signal(&wd->cv);
  }
  uv_mutex_unlock(&wd->mu);
  return 0;
}

int wd_disarm(wd_t* wd, wd_entry_t* e) {
  int fired;
  uv_mutex_lock(&wd->mu);
  if (e->prev != NULL)
    e->prev->next = e->next;
  else
    wd->head = e->next;
  if (e->next != NULL) e->next->prev = e->prev;
  fired = e->fired;
  uv_mutex_unlock(&wd->mu);
  return fired;
}

int wd_fire(wd_t* wd, uint64_t tag, int how) {
  wd_entry_t* e;
  int found = 0;
  if (tag == 0) return 0;
  uv_mutex_lock(&wd->mu);
  for (e = wd->head; e != NULL; e = e->next) {
    if (e->tag != tag || e->fired) continue;
    e->fired = how;
    cdn_engine_terminate(e->iso);
    e->refire_at = uv_hrtime() + WD_REFIRE_NS;
    found = 1;
    /* The thread's sleep may end later than this refire is due. */
    if (e->refire_at < wd->sleeping_until) {
      wd->sleeping_until = e->refire_at;
      uv_cond_signal(&wd->cv);
    }
    break;
  }
  uv_mutex_unlock(&wd->mu);
  return found;
}

void wd_refire(wd_t* wd, wd_entry_t* outer) {
  wd_entry_t* e;
  uv_mutex_lock(&wd->mu);
  for (e = outer; e != NULL; e = e->outer) {
    if (e->fired) {
      cdn_engine_terminate(e->iso);
      break;
    }
  }
  uv_mutex_unlock(&wd->mu);
}

int wd_poll_start(wd_t* wd, wd_poll_t* p, cdn_engine_isolate_t* iso) {
  int err;
  uv_mutex_lock(&wd->mu);
  err = wd__start(wd);
  if (err == 0 && !p->listed) {
    p->iso = iso;
    p->listed = 1;
    p->prev = NULL;
    p->next = wd->polls;
    if (wd->polls != NULL) {
      wd->polls->prev = p;
    } else {
      wd->next_poll = uv_hrtime() + (uint64_t)CDN_POLL_INTERVAL_MS * 1000000;
    }
    wd->polls = p;
    if (wd->next_poll < wd->sleeping_until) {
      wd->sleeping_until = wd->next_poll;
      uv_cond_signal(&wd->cv);
    }
  }
  uv_mutex_unlock(&wd->mu);
  return err;
}

void wd_poll_stop(wd_t* wd, wd_poll_t* p) {
  if (!wd->initialized) return;
  uv_mutex_lock(&wd->mu);
  wd__poll_unlink(wd, p);
  uv_mutex_unlock(&wd->mu);
}
