/* watchdog.h: one thread per Node environment that enforces every deadline.
 *
 * A run arms an entry (cheap: a mutex and a list insert,
 * and a condition signal only when the new deadline is earlier than the one
 * the thread sleeps towards) and disarms it when it returns. When a deadline
 * passes, the watchdog terminates the entry's isolate and marks the entry
 * fired, under the same mutex under which the runner disarms: so runner and
 * watchdog agree on whether this run was terminated, and a deadline that
 * passes after its run disarmed does nothing (DESIGN.md rule 4).
 */
#ifndef CORDON_WATCHDOG_H_
#define CORDON_WATCHDOG_H_

#include <stdint.h>
#include <uv.h>

#include "engine/engine.h"

typedef struct wd_entry_s wd_entry_t;

struct wd_entry_s {
  uint64_t deadline; /* uv_hrtime() nanoseconds */
  cdn_engine_isolate_t* iso;
  int fired;
  wd_entry_t* outer; /* the entry of the run this one is nested in */
  wd_entry_t* prev;
  wd_entry_t* next;
};

typedef struct {
  uv_mutex_t mu;
  uv_cond_t cv;
  uv_thread_t thread;
  int started;
  int stopping;
  int initialized;
  uint64_t sleeping_until; /* the deadline the thread waits for */
  wd_entry_t* head;
} wd_t;

int wd_init(wd_t* wd);
/* Stop and join the thread. Idempotent. No entry may be armed. */
void wd_close(wd_t* wd);

/* Any thread. Starts the thread on first use. Returns 0 or a uv error. */
int wd_arm(wd_t* wd, wd_entry_t* e, cdn_engine_isolate_t* iso,
           uint64_t timeout_ns);
/* Any thread. Returns nonzero if the entry fired: its isolate was asked to
 * terminate, and the caller must cancel that once the run has unwound. */
int wd_disarm(wd_t* wd, wd_entry_t* e);

/* Any thread, after cancelling a fired entry's termination: terminate its
 * isolate again if `outer` or an entry around it has fired too. */
void wd_refire(wd_t* wd, wd_entry_t* outer);

#endif /* CORDON_WATCHDOG_H_ */
