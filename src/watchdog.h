/* watchdog.h: one thread per Node environment that enforces every deadline.
 *
 * A run arms an entry (cheap: a mutex and a list insert,
 * and a condition signal only when the new deadline is earlier than the one
 * the thread sleeps towards) and disarms it when it returns. When a deadline
 * passes, the watchdog terminates the entry's isolate and marks the entry
 * fired, under the same mutex under which the runner disarms: so runner and
 * watchdog agree on whether this run was terminated, and a deadline that
 * passes after its run disarmed does nothing (DESIGN.md rule 4).
 *
 * An entry may also bound CPU time: the CPU clock of the thread that armed
 * it, less what that thread spent in host callbacks (a counter the runner
 * keeps). CPU time never runs ahead of wall time, so the thread sleeps for
 * the budget that is left and looks again; at least WD_CPU_POLL_NS apart,
 * so that a run blocked in a host callback costs the watchdog nothing.
 *
 * It also polls the isolates that ask for it (wd_poll_t): every
 * CDN_POLL_INTERVAL_MS it calls cdn_engine_poll() on each, and drops those
 * for which that returns 0 until they ask again.
 */
#ifndef CORDON_WATCHDOG_H_
#define CORDON_WATCHDOG_H_

#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "engine/engine.h"

typedef struct wd_entry_s wd_entry_t;

/* How an entry fired (wd_disarm's result). */
enum { WD_FIRED_WALL = 1, WD_FIRED_CPU = 2, WD_FIRED_ABORT = 3 };
#define WD_CPU_POLL_NS 1000000
/* A fired entry still armed is terminated again this often: V8 catches a
 * termination inside some builtins (from Node 22, the Error stack accessor
 * does) and sandbox code then runs on with its deadline spent. */
#define WD_REFIRE_NS 10000000

struct wd_entry_s {
  uint64_t deadline; /* uv_hrtime() nanoseconds; UINT64_MAX: none */
  uint64_t tag;      /* the caller's, for wd_fire (0: none); set before arm */
  cdn_engine_isolate_t* iso;
  int fired;
  uint64_t refire_at; /* once fired: when to terminate again */
  /* CPU bound (cpu_budget 0: none). */
  uint64_t cpu_budget;
  clockid_t cpu_clock;
  uint64_t cpu_base;
  const uint64_t* excluded; /* nanoseconds to leave out, atomic */
  uint64_t excluded_base;
  const uint64_t* paused; /* nonzero: the CPU clock when a host callback
                             began; time after it is not counted yet */
  wd_entry_t* outer;      /* the entry of the run this one is nested in */
  wd_entry_t* prev;
  wd_entry_t* next;
};

/* An isolate's place in the poll list (under mu). */
typedef struct wd_poll_s wd_poll_t;
struct wd_poll_s {
  cdn_engine_isolate_t* iso;
  int listed;
  wd_poll_t* prev;
  wd_poll_t* next;
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
  wd_poll_t* polls;
  uint64_t next_poll; /* uv_hrtime() of the next round, while polls */
} wd_t;

int wd_init(wd_t* wd);
/* Stop and join the thread. Idempotent. No entry may be armed, and no
 * isolate polled. */
void wd_close(wd_t* wd);

/* Any thread. Starts the thread on first use. `timeout_ns` bounds wall
 * time, `cpu_ns` the calling thread's CPU time less *excluded's growth and
 * less the host callback in progress since *paused (0: no bound). Returns
 * 0 or a uv error. */
int wd_arm(wd_t* wd, wd_entry_t* e, cdn_engine_isolate_t* iso,
           uint64_t timeout_ns, uint64_t cpu_ns, const uint64_t* excluded,
           const uint64_t* paused);
/* The calling thread's CPU time, nanoseconds (a system call: ~0.6 us). */
uint64_t wd_thread_cpu_ns(void);
/* Any thread. Returns WD_FIRED_* if the entry fired (0 if not): its
 * isolate was asked to terminate, and the caller must cancel that once the
 * run has unwound. */
int wd_disarm(wd_t* wd, wd_entry_t* e);

/* Any thread: fire the armed entry tagged `tag` now, as its deadline would
 * (`how`: WD_FIRED_*, what wd_disarm then returns). Returns 1 if one was
 * armed and had not fired, else 0. */
int wd_fire(wd_t* wd, uint64_t tag, int how);

/* Any thread, after cancelling a fired entry's termination: terminate its
 * isolate again if `outer` or an entry around it has fired too. */
void wd_refire(wd_t* wd, wd_entry_t* outer);

/* Any thread: poll `iso` (see above) until cdn_engine_poll returns 0 or
 * wd_poll_stop. Idempotent while listed. Returns 0 or a uv error. */
int wd_poll_start(wd_t* wd, wd_poll_t* p, cdn_engine_isolate_t* iso);
/* Any thread: stop polling; once it returns, cdn_engine_poll is not called
 * for `p` again (the isolate may be disposed). Idempotent. */
void wd_poll_stop(wd_t* wd, wd_poll_t* p);

#endif /* CORDON_WATCHDOG_H_ */
