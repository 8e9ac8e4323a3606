// isolate.cc: sandbox isolates, their lock, and their foreground tasks.
//
// Foreground tasks. V8 posts foreground tasks (GC finalisation, memory
// reducer, FinalizationRegistry cleanup, many delayed) for every isolate,
// from any thread. For a sandbox isolate they must run under its v8::Locker,
// whichever thread runs them. So the isolate is registered with Node's
// platform through an IsolatePlatformDelegate
// (MultiIsolatePlatform::RegisterIsolate between Isolate::Allocate and
// Isolate::Initialize) whose task runner is our TaskQueue: posting only
// queues under a mutex and calls the host's wake hook; the thread that holds
// the lock drains the queue, after each run and from the host's wake-up when
// the isolate is idle. Delayed tasks wait in the queue until they are due.
// Node's own per-isolate runner would run them unlocked on a libuv loop,
// which is only safe while no other thread ever holds the isolate.
#include <algorithm>
#include <new>
#include <cstdlib>

#include "internal.h"

using v8::HandleScope;
using v8::Isolate;
using v8::Local;

namespace cordon {

Record::Record(cdn_engine_isolate_t* iso) : iso_(iso) {
  iso->Link(this);
}

Record::~Record() {
  iso_->Unlink(this);
}

void TaskQueue::Wake() {
  if (!closed_ && hooks_.wake != nullptr) hooks_.wake(hooks_.data);
}

void TaskQueue::Post(std::unique_ptr<v8::Task> task) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return;  // dropped: the isolate is going away
  ready_.push_back(std::move(task));
  pending_.fetch_add(1, std::memory_order_release);
  Wake();
}

void TaskQueue::PostDelayed(std::unique_ptr<v8::Task> task, double delay) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return;
  uint64_t due = NowNs() + static_cast<uint64_t>(std::max(delay, 0.0) * 1e9);
  delayed_.push_back(Delayed{due, std::move(task)});
  if (due < next_due_ns_.load(std::memory_order_relaxed))
    next_due_ns_.store(due, std::memory_order_release);
  Wake();
}

void TaskQueue::PostRelease(Record* record) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return;  // the isolate's dispose frees every record
  releases_.push_back(record);
  pending_.fetch_add(1, std::memory_order_release);
  Wake();
}

bool TaskQueue::HasWork() const {
  if (pending_.load(std::memory_order_acquire) != 0) return true;
  uint64_t due = next_due_ns_.load(std::memory_order_acquire);
  return due != UINT64_MAX && due <= NowNs();
}

void TaskQueue::TakeDue(std::vector<std::unique_ptr<v8::Task>>* tasks,
                        std::vector<Record*>* releases, int64_t* next_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t now = NowNs();
  uint64_t next = UINT64_MAX;
  for (auto& t : ready_) tasks->push_back(std::move(t));
  ready_.clear();
  for (size_t i = 0; i < delayed_.size();) {
    if (delayed_[i].due_ns <= now) {
      tasks->push_back(std::move(delayed_[i].task));
      delayed_[i] = std::move(delayed_.back());
      delayed_.pop_back();
    } else {
      next = std::min(next, delayed_[i].due_ns);
      i++;
    }
  }
  releases->insert(releases->end(), releases_.begin(), releases_.end());
  releases_.clear();
  pending_.store(0, std::memory_order_release);
  next_due_ns_.store(next, std::memory_order_release);
  *next_ms = next == UINT64_MAX
                 ? -1
                 : static_cast<int64_t>((next - now + 999999) / 1000000);
}

void TaskQueue::Close(std::vector<Record*>* releases) {
  std::deque<std::unique_ptr<v8::Task>> ready;
  std::vector<Delayed> delayed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    ready.swap(ready_);
    delayed.swap(delayed_);
    releases->insert(releases->end(), releases_.begin(), releases_.end());
    releases_.clear();
    pending_.store(0);
    next_due_ns_.store(UINT64_MAX);
  }
  // The tasks are destroyed here, outside the mutex, while the isolate is
  // still alive: a cancelable task's destructor talks to its isolate.
}

// V8 calls this, on the thread running the isolate, when the heap nears its
// limit, or when one allocation would not fit under it. Rather than let V8
// abort the process, stop the run and give the heap room to finish: past
// what it really uses (which can already exceed the limit), room for V8's
// largest object. The run reports CDN_ENOMEM.
//
// The run is not stopped at once: the collection V8 made before calling
// may have left what a thorough one frees (disposed contexts, weak caches;
// Node 24's V8 keeps more of them), so the check waits for the next stack
// check (CheckLimit), or the end of the call (SettleLimit). A second call
// before that (a builtin that does not check) stops the run.
static void CheckLimit(Isolate* isolate, void* data);

static size_t NearHeapLimit(void* data, size_t current, size_t initial) {
  auto* iso = static_cast<cdn_engine_isolate_t*>(data);
  (void)initial;
  if (!iso->limit_hit.exchange(true)) {
    iso->isolate->RequestInterrupt(CheckLimit, iso);
  } else {
    iso->out_of_memory.store(true);
    iso->isolate->TerminateExecution();
  }
  v8::HeapStatistics hs;
  iso->isolate->GetHeapStatistics(&hs);
  return std::max(current, hs.used_heap_size()) + kLimitHeadroom;
}

// After each full collection: memory V8's limit does not see (WebAssembly
// memories, large young objects) is checked too, as NearHeapLimit does.
static void AfterFullGc(Isolate* isolate, v8::GCType type,
                        v8::GCCallbackFlags flags, void* data) {
  auto* iso = static_cast<cdn_engine_isolate_t*>(data);
  (void)type;
  (void)flags;
  if (iso->recovering || !OverLimit(iso)) return;
  if (!iso->limit_hit.exchange(true)) {
    isolate->RequestInterrupt(CheckLimit, iso);
  } else {
    iso->out_of_memory.store(true);
    isolate->TerminateExecution();
  }
}

// eval and new Function in sandbox contexts (which are made with code
// generation from strings off, so that V8 asks here): a source longer than
// a 32nd of the memory limit is refused with V8's EvalError. Parsing costs
// memory outside the heap, many times the source's size, that no limit
// sees (a 100 MB eval took 1.6 GB).
static v8::ModifyCodeGenerationFromStringsResult CodeFromStrings(
    Local<v8::Context> context, Local<v8::Value> source, bool is_code_like) {
  (void)is_code_like;
  (void)context;  // (Context::GetIsolate is gone in Node 26's V8)
  auto* iso =
      static_cast<cdn_engine_isolate_t*>(Isolate::GetCurrent()->GetData(0));
  v8::ModifyCodeGenerationFromStringsResult result;
  result.codegen_allowed =
      !source->IsString() || iso->memory_limit == SIZE_MAX ||
      static_cast<size_t>(source.As<v8::String>()->Length()) <=
          iso->memory_limit / 32;
  return result;
}

static void CheckLimit(Isolate* isolate, void* data) {
  (void)isolate;
  SettleLimit(static_cast<cdn_engine_isolate_t*>(data));
}

void SettleLimit(cdn_engine_isolate_t* iso) {
  if (!iso->limit_hit.exchange(false)) return;
  iso->recovering = true;
  iso->isolate->LowMemoryNotification();
  iso->recovering = false;
  if (OverLimit(iso)) {
    iso->out_of_memory.store(true);
    iso->isolate->TerminateExecution();
    return;
  }
  // It fits again: V8's limit goes back down, and the run goes on.
  iso->isolate->RemoveNearHeapLimitCallback(NearHeapLimit, iso->heap_limit);
  iso->isolate->AddNearHeapLimitCallback(NearHeapLimit, iso);
}

bool OverLimit(cdn_engine_isolate_t* iso) {
  if (iso->memory_limit == SIZE_MAX) return false;
  v8::HeapStatistics hs;
  iso->isolate->GetHeapStatistics(&hs);
  return hs.used_heap_size() > iso->memory_limit ||
         ExternalMemory(iso, hs) > iso->memory_limit + kSmallBacking * 64;
}

void RecoverFromLimit(cdn_engine_isolate_t* iso) {
  iso->limit_hit.store(false);
  iso->recovering = true;
  iso->isolate->LowMemoryNotification();
  iso->recovering = false;
  if (OverLimit(iso)) {
    // Kept raised; every later call reports the limit (Status), and the
    // host closes the isolate when it sees one.
    iso->over_limit = true;
    return;
  }
  iso->isolate->RemoveNearHeapLimitCallback(NearHeapLimit, iso->heap_limit);
  iso->isolate->AddNearHeapLimitCallback(NearHeapLimit, iso);
}

bool LimitedAllocator::Reserve(size_t length) {
  size_t used = used_.load(std::memory_order_relaxed);
  do {
    if (length > limit_ - std::min(used, limit_) && length <= kSmallBacking) {
      // Granted past the limit (V8 cannot take a refusal of some small
      // ones), but the run stops: a loop of them cannot go far.
      iso_->out_of_memory.store(true);
      iso_->isolate->TerminateExecution();
    } else if (length > limit_ - std::min(used, limit_)) {
      // Over the limit: refuse. V8 collects garbage and asks again (three
      // tries in all) before it throws a RangeError; once refused that
      // often, stop the run (on its own thread, the one allocating) so that
      // a loop catching the RangeError cannot go on.
      iso_->buffer_refused.store(true);
      if (refusals_.fetch_add(1) + 1 >= 3) {
        iso_->out_of_memory.store(true);
        iso_->isolate->TerminateExecution();
      }
      return false;
    }
  } while (!used_.compare_exchange_weak(used, used + length,
                                        std::memory_order_relaxed));
  refusals_.store(0);
  return true;
}

void* LimitedAllocator::Allocate(size_t length) {
  if (!Reserve(length)) return nullptr;
  void* data = base_->Allocate(length);
  if (data == nullptr) used_.fetch_sub(length, std::memory_order_relaxed);
  return data;
}

void* LimitedAllocator::AllocateUninitialized(size_t length) {
  if (!Reserve(length)) return nullptr;
  void* data = base_->AllocateUninitialized(length);
  if (data == nullptr) used_.fetch_sub(length, std::memory_order_relaxed);
  return data;
}

void LimitedAllocator::Free(void* data, size_t length) {
  base_->Free(data, length);
  used_.fetch_sub(length, std::memory_order_relaxed);
}

void CancelTermination(cdn_engine_isolate_t* iso) {
  Isolate* isolate = iso->isolate;
  if (iso->lock_depth == 1) {
    // Outermost: nothing else of the sandbox is on the stack, so its queue
    // holds only what stopped runs left. (Nested, an enclosing run's
    // checkpoint runs them under that run's deadline.)
    isolate->TerminateExecution();  // the checkpoint stops at once
    isolate->PerformMicrotaskCheckpoint();
  }
  isolate->CancelTerminateExecution();
}

}  // namespace cordon

using cordon::Record;

void cdn_engine_isolate_s::Link(Record* r) {
  r->next_ = records;
  if (records != nullptr) records->prev_ = r;
  records = r;
}

void cdn_engine_isolate_s::Unlink(Record* r) {
  if (r->prev_ != nullptr) r->prev_->next_ = r->next_;
  if (r->next_ != nullptr) r->next_->prev_ = r->prev_;
  if (records == r) records = r->next_;
  r->prev_ = r->next_ = nullptr;
}

void cdn_engine_isolate_s::FreeRecords() {
  // Records point at each other (a settled promise's value at function
  // records): cut those edges first, then free in any order.
  for (Record* r = records; r != nullptr; r = r->next_) r->Drop();
  while (records != nullptr) delete records;
}

// Whether V8 parses %Runtime calls (--allow-natives-syntax, from the
// host's command line or v8.setFlagsFromString): sandbox code could then
// call %AbortJS and the like. Flags are process-wide, so ask V8 itself.
static bool NativesSyntaxEnabled(Isolate* isolate, Local<v8::Context> context) {
  v8::Context::Scope context_scope(context);
  v8::TryCatch try_catch(isolate);
  v8::ScriptCompiler::Source source(
      v8::String::NewFromUtf8Literal(isolate, "%IsSmi(1)"));
  return !v8::ScriptCompiler::Compile(context, &source).IsEmpty();
}

extern "C" int cdn_engine_isolate_new(const cdn_isolate_options_t* opts,
                                      const cdn_host_hooks_t* hooks,
                                      cdn_engine_isolate_t** out) {
  Isolate* host = Isolate::GetCurrent();
  if (host == nullptr || !host->InContext()) return CDN_EINTERNAL;
  node::Environment* env =
      node::GetCurrentEnvironment(host->GetCurrentContext());
  if (env == nullptr) return CDN_EINTERNAL;
  node::MultiIsolatePlatform* platform = node::GetMultiIsolatePlatform(env);
  if (platform == nullptr) return CDN_EINTERNAL;

  auto* iso = new cdn_engine_isolate_t();
  iso->host_isolate = host;
  iso->host_thread = std::this_thread::get_id();
  iso->platform = platform;
  iso->hooks = *hooks;
  size_t limit =
      opts->memory_limit_mb > 0 ? opts->memory_limit_mb << 20 : SIZE_MAX;
  iso->memory_limit = limit;
  iso->allocator = std::make_unique<cordon::LimitedAllocator>(iso, limit);
  iso->tasks = std::make_shared<cordon::TaskQueue>(*hooks);
  iso->delegate = std::make_unique<cordon::PlatformDelegate>(iso->tasks);
  bool unsafe;

  Isolate::CreateParams params;
  params.array_buffer_allocator = iso->allocator.get();
  if (opts->memory_limit_mb > 0) {
    params.constraints.ConfigureDefaultsFromHeapSize(
        0, opts->memory_limit_mb * (size_t{1} << 20));
  }
  iso->isolate = Isolate::Allocate();
  platform->RegisterIsolate(iso->isolate, iso->delegate.get());
  Isolate::Initialize(iso->isolate, params);

  {
    v8::Locker locker(iso->isolate);
    Isolate::Scope isolate_scope(iso->isolate);
    HandleScope handle_scope(iso->isolate);
    Isolate* isolate = iso->isolate;
    // cordon runs the microtask checkpoint itself, inside the armed deadline.
    isolate->SetMicrotasksPolicy(v8::MicrotasksPolicy::kExplicit);
    // Atomics.wait blocks the thread without using CPU, so a run bounded
    // only by cpuTimeout would never end: it throws instead (as on a
    // browser's main thread). Atomics.waitAsync still works.
    isolate->SetAllowAtomicsWait(false);
    isolate->AddNearHeapLimitCallback(cordon::NearHeapLimit, iso);
    isolate->AddGCEpilogueCallback(cordon::AfterFullGc, iso,
                                   v8::kGCTypeMarkSweepCompact);
    isolate->SetModifyCodeGenerationFromStringsCallback(
        cordon::CodeFromStrings);
    Local<v8::Context> internal = v8::Context::New(isolate);
    iso->internal_context.Reset(isolate, internal);
    cordon::InitImports(iso, internal);
    isolate->SetPromiseRejectCallback(cordon::OnPromiseReject);
    // Under the host's --abort-on-uncaught-exception, V8 aborts the
    // process on an exception no JS handler catches: every exception in a
    // sandbox is caught by cordon (a TryCatch) and handed to the host.
    isolate->SetAbortOnUncaughtExceptionCallback(
        [](Isolate*) { return false; });
    v8::HeapStatistics hs;
    isolate->GetHeapStatistics(&hs);
    iso->heap_limit = hs.heap_size_limit();
    unsafe =
        !opts->allow_unsafe_flags && NativesSyntaxEnabled(isolate, internal);
  }
  if (unsafe) {
    cdn_engine_isolate_dispose(iso);
    return CDN_EUNSAFE;
  }
  *out = iso;
  return CDN_OK;
}

extern "C" void cdn_engine_isolate_dispose(cdn_engine_isolate_t* iso) {
  Isolate* isolate = iso->isolate;
  {
    v8::Locker locker(isolate);
    Isolate::Scope isolate_scope(isolate);
    HandleScope handle_scope(isolate);
    iso->disposing = true;
    std::vector<Record*> releases;
    iso->tasks->Close(&releases);  // (released records are still linked)
    for (cdn_rejection_t& r : iso->reports) cordon::DropValue(&r.reason);
    iso->reports.clear();
    iso->FreeRecords();
    for (cordon::PromiseCell* cell : iso->cells) {
      cell->reaction.Reset();
      delete cell;
    }
    iso->cells.clear();
    cordon::FreeWasmMemories(iso);
    iso->internal_context.Reset();
    iso->placeholder.Reset();
    iso->import_map.Reset();
    iso->import_get.Reset();
    iso->import_set.Reset();
    iso->import_key.Reset();
    iso->import_template.Reset();
    iso->unhandled.clear();
  }
  cordon::DisposeIsolate(iso->platform, isolate);  // no lock held
  delete iso;
}

static_assert(sizeof(v8::Locker) <= sizeof(cdn_lock_t::opaque),
              "cdn_lock_t must hold a v8::Locker");
static_assert(alignof(v8::Locker) <= alignof(uint64_t),
              "cdn_lock_t must align a v8::Locker");

extern "C" void cdn_engine_lock(cdn_engine_isolate_t* iso, cdn_lock_t* lock) {
  // The outermost level on this thread takes the Locker; inner levels (a
  // host callback running code in the same isolate) only enter again.
  lock->owns = !v8::Locker::IsLocked(iso->isolate);
  if (lock->owns) new (lock->opaque) v8::Locker(iso->isolate);
  iso->isolate->Enter();
  iso->lock_depth++;
}

extern "C" void cdn_engine_unlock(cdn_engine_isolate_t* iso, cdn_lock_t* lock) {
  iso->lock_depth--;
  iso->isolate->Exit();
  if (lock->owns) {
    void* slot = lock->opaque;
    std::launder(static_cast<v8::Locker*>(slot))->~Locker();
  }
  lock->owns = 0;
}

extern "C" void cdn_engine_terminate(cdn_engine_isolate_t* iso) {
  iso->isolate->TerminateExecution();
}

extern "C" void cdn_engine_cancel_terminate(cdn_engine_isolate_t* iso) {
  cordon::CancelTermination(iso);
}

extern "C" int cdn_engine_has_work(cdn_engine_isolate_t* iso) {
  return iso->tasks->HasWork() ||
         iso->settled_pending.load(std::memory_order_acquire) != 0 ||
         iso->reports_pending.load(std::memory_order_acquire) != 0;
}

extern "C" int cdn_engine_run_tasks(cdn_engine_isolate_t* iso,
                                    int64_t* next_ms) {
  Isolate* isolate = iso->isolate;
  std::vector<std::unique_ptr<v8::Task>> tasks;
  std::vector<Record*> releases;
  iso->tasks->TakeDue(&tasks, &releases, next_ms);
  HandleScope handle_scope(isolate);
  for (Record* r : releases) delete r;
  int err = CDN_OK;
  for (auto& task : tasks) {
    iso->tasks_run++;
    task->Run();
    // What the task settled (an async WebAssembly compilation resolves its
    // promise from a task) reacts now, as a run's checkpoint would: the
    // policy is explicit, and nothing else would run them.
    if (!isolate->IsExecutionTerminating())
      isolate->PerformMicrotaskCheckpoint();
    if (isolate->IsExecutionTerminating()) {
      err = CDN_ETERMINATED;
      // The tasks left are dropped: an async compilation one of them
      // would have finished never settles, and must not hold the loop.
      iso->wasm_pending.clear();
      break;
    }
  }
  // A task stopped for memory: cancel that termination and put the heap
  // limit back, as after a run.
  cordon::SettleLimit(iso);
  iso->buffer_refused.store(false);
  if (iso->out_of_memory.exchange(false)) {
    cordon::CancelTermination(iso);
    cordon::RecoverFromLimit(iso);
    err = CDN_ENOMEM;
  }
  // (What the tasks settled: the async compilations still pending.)
  cordon::RefreshWasmMemories(iso);
  return err;
}

extern "C" void cdn_engine_gc(cdn_engine_isolate_t* iso) {
  iso->isolate->LowMemoryNotification();
}

extern "C" void cdn_engine_heap_stats(cdn_engine_isolate_t* iso,
                                      cdn_heap_stats_t* out) {
  v8::HeapStatistics hs;
  iso->isolate->GetHeapStatistics(&hs);
  out->total_heap_size = hs.total_heap_size();
  out->used_heap_size = hs.used_heap_size();
  out->heap_size_limit = hs.heap_size_limit();
  out->external_memory = cordon::ExternalMemory(iso, hs);
  out->array_buffers = iso->allocator->used();
  out->contexts = iso->contexts;
  out->scripts = iso->scripts;
  out->callbacks = iso->callbacks;
  out->functions = iso->functions;
  out->promises = iso->promises;
  out->resolvers = iso->resolvers;
  out->modules = iso->modules;
  out->import_hosts = iso->import_hosts;
  out->tasks_run = iso->tasks_run;
}

extern "C" void cdn_cache_result_free(cdn_cache_result_t* r) {
  free(r->cache);
  r->cache = nullptr;
  r->cache_len = 0;
}

namespace cordon {
void DropValue(cdn_value_t* v) {
  v->nrefs = 0;  // free(refs) below, but release none of them
  cdn_value_free(v);
}
}  // namespace cordon

extern "C" void cdn_value_free(cdn_value_t* v) {
  if (v == nullptr) return;
  if (v->u.bytes == nullptr && v->name == nullptr && v->refs == nullptr &&
      v->message == nullptr && v->stack == nullptr && v->code == nullptr) {
    v->kind = CDN_VAL_UNDEFINED;  // nothing owned: the common primitive case
    return;
  }
  if (v->refs_out) {
    for (size_t i = 0; i < v->nrefs; i++) {
      if (v->refs[i] != nullptr) cdn_engine_ref_release(v->refs[i]);
    }
  }
  free(v->refs);
  if (!v->borrowed) free(v->u.bytes);
  free(v->name);
  free(v->message);
  free(v->stack);
  free(v->code);
  *v = cdn_value_t{};
}
