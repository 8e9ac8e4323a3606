/* watchdog.c: see watchdog.h. */
#include "watchdog.h"

#include <stdlib.h>

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
      if (e->fired) continue;
      if (e->deadline <= now) {
        e->fired = 1;
        cdn_engine_terminate(e->iso);
      } else if (e->deadline < next) {
        next = e->deadline;
      }
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
           uint64_t timeout_ns) {
  int err = 0;
  uint64_t now = uv_hrtime();
  e->deadline =
      timeout_ns > UINT64_MAX - now ? UINT64_MAX - 1 : now + timeout_ns;
  e->iso = iso;
  e->fired = 0;
  e->prev = NULL;
  uv_mutex_lock(&wd->mu);
  if (!wd->started) {
    err = uv_thread_create(&wd->thread, wd__run, wd);
    if (err) {
      uv_mutex_unlock(&wd->mu);
      return err;
    }
    wd->started = 1;
  }
  e->next = wd->head;
  if (wd->head != NULL) wd->head->prev = e;
  wd->head = e;
  /* Only wake the thread when it would otherwise sleep past this deadline. */
  if (e->deadline < wd->sleeping_until) {
    wd->sleeping_until = e->deadline;
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
