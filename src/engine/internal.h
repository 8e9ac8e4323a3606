// internal.h: the engine's private C++ types. Included only by src/engine/.
#ifndef CORDON_ENGINE_INTERNAL_H_
#define CORDON_ENGINE_INTERNAL_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <node.h>
#include <v8.h>

#include "compat.h"
#include "engine.h"

namespace cordon {

class PromiseRecord;
class ModuleRecord;
struct PromiseCell;
struct WasmMemory;
struct ContextLink;

// The embedder-data slot of a context that points at its ContextRecord.
constexpr int kContextRecordSlot = 1;

// Monotonic nanoseconds, for due times of delayed tasks.
inline uint64_t NowNs() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(
          std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

// Something the isolate owns and frees under its lock: a context or a
// compiled script. Records form an intrusive list on their isolate so that
// disposing the isolate frees the ones the host never released.
class Record {
 public:
  explicit Record(cdn_engine_isolate_t* iso);
  virtual ~Record();
  // At isolate dispose, before any record is freed: let go of what points
  // at other records (which may be freed first), without releasing it.
  virtual void Drop() {}
  Record(const Record&) = delete;
  Record& operator=(const Record&) = delete;

  cdn_engine_isolate_t* iso() const {
    return iso_;
  }

  // Bytes of sandbox memory the host's handle keeps alive, as estimated
  // when the record is made (cdn_engine_ref_cost); fixed after that.
  size_t cost = 0;

 private:
  friend struct ::cdn_engine_isolate_s;
  cdn_engine_isolate_t* iso_;
  Record* prev_ = nullptr;
  Record* next_ = nullptr;
};

// The isolate's foreground task queue. V8 posts to it from any thread; the
// engine drains it under the isolate's lock (see docs/design.md, "Foreground
// tasks"). Releases of records queue here too, so that any thread may drop a
// record and the thread that next holds the lock frees it.
class TaskQueue final : public v8::TaskRunner {
 public:
  explicit TaskQueue(const cdn_host_hooks_t& hooks) : hooks_(hooks) {}

  // v8::TaskRunner (the overrides each V8 line wants, forwarding to Post
  // and PostDelayed; see compat.h). Any thread. Non-nestable tasks need no
  // care: tasks only ever run at the top level of a lock, never nested in
  // JS. Idle tasks are dropped: IdleTasksEnabled() is false, so V8 does not
  // post them.
  CDN_TASK_RUNNER_OVERRIDES
  void Post(std::unique_ptr<v8::Task> task);
  void PostDelayed(std::unique_ptr<v8::Task> task, double delay);
  bool IdleTasksEnabled() override {
    return false;
  }
  bool NonNestableTasksEnabled() const override {
    return true;
  }
  bool NonNestableDelayedTasksEnabled() const override {
    return true;
  }

  // Any thread.
  void PostRelease(Record* record);
  bool HasWork() const;

  // Under the isolate lock: move out what is due. *next_ms is the delay
  // until the next delayed task, or -1.
  void TakeDue(std::vector<std::unique_ptr<v8::Task>>* tasks,
               std::vector<Record*>* releases, int64_t* next_ms);

  // Under the isolate lock, at dispose: drop every task, and any posted
  // later; stop calling the wake hook.
  void Close(std::vector<Record*>* releases);

 private:
  struct Delayed {
    uint64_t due_ns;
    std::unique_ptr<v8::Task> task;
  };
  void Wake();  // with mu_ held

  cdn_host_hooks_t hooks_;
  mutable std::mutex mu_;
  bool closed_ = false;
  std::deque<std::unique_ptr<v8::Task>> ready_;
  std::vector<Delayed> delayed_;
  std::vector<Record*> releases_;
  // ready_ + releases_ sizes, and the earliest due time, for a lock-free
  // HasWork() after every run.
  std::atomic<size_t> pending_{0};
  std::atomic<uint64_t> next_due_ns_{UINT64_MAX};
};

// ArrayBuffer backing stores live outside the V8 heap, so its limit does
// not bound them: this allocator counts them against the isolate's memory
// limit and refuses past it, stopping the run as the heap limit does
// (CDN_ENOMEM) instead of letting `new ArrayBuffer(2 ** 31)` in a loop take
// the machine. Any thread may allocate or free.
class LimitedAllocator final : public v8::ArrayBuffer::Allocator {
 public:
  LimitedAllocator(cdn_engine_isolate_t* iso, size_t limit)
      : base_(v8::ArrayBuffer::Allocator::NewDefaultAllocator()),
        iso_(iso),
        limit_(limit) {}

  void* Allocate(size_t length) override;
  void* AllocateUninitialized(size_t length) override;
  void Free(void* data, size_t length) override;
  size_t used() const {
    return used_.load(std::memory_order_relaxed);
  }

 private:
  bool Reserve(size_t length);

  std::unique_ptr<v8::ArrayBuffer::Allocator> base_;
  cdn_engine_isolate_t* iso_;
  const size_t limit_;
  std::atomic<size_t> used_{0};
  std::atomic<int> refusals_{0};  // consecutive
};

// Room V8 is given past the limit, once it is reached, to finish what it
// is doing: the largest object V8 allocates without a way to fail (a
// FixedArray or a string of 1 GiB) must fit, or V8 ends the process.
constexpr size_t kLimitHeadroom = size_t{1280} << 20;
// Backing stores up to this size are granted past the limit (and stop the
// run): V8 treats a refusal of some small ones, such as materialising an
// on-heap typed array's buffer, as a fatal error.
constexpr size_t kSmallBacking = 4096;
// Estimates for cdn_engine_ref_cost: a context's own heap (about 150 KB
// measured on Node 20; reported twice over, so that the host collects
// dropped contexts well before they fill a default limit: its finalisers
// run a loop turn after its collection), a function and its closure; a
// compiled function or script adds its source (two bytes a character,
// bytecode about as much again).
constexpr size_t kContextCost = size_t{320} << 10;
constexpr size_t kFunctionCost = 1024;

// Hands Node's platform our task queue for the sandbox isolate.
class PlatformDelegate final : public node::IsolatePlatformDelegate {
 public:
  explicit PlatformDelegate(std::shared_ptr<TaskQueue> queue)
      : queue_(std::move(queue)) {}
  std::shared_ptr<v8::TaskRunner> GetForegroundTaskRunner() override {
    return queue_;
  }
  bool IdleTasksEnabled() override {
    return false;
  }

 private:
  std::shared_ptr<TaskQueue> queue_;
};

}  // namespace cordon

struct cdn_engine_isolate_s {
  v8::Isolate* isolate = nullptr;
  // The host isolate of the thread that created this one: entered around
  // host callbacks, since Node's internals ask Isolate::GetCurrent().
  v8::Isolate* host_isolate = nullptr;
  // Host callbacks run with host_isolate entered only on this thread; on a
  // runner thread the hooks carry them over to it (src/runner.c).
  std::thread::id host_thread;
  node::MultiIsolatePlatform* platform = nullptr;
  cdn_host_hooks_t hooks{};
  std::unique_ptr<cordon::LimitedAllocator> allocator;
  std::shared_ptr<cordon::TaskQueue> tasks;
  std::unique_ptr<cordon::PlatformDelegate> delegate;

  // Levels of cdn_engine_lock on the holding thread; only it touches this.
  int lock_depth = 0;

  // Promises rejected with no handler, until the run ends (under the
  // lock), then their reports, for the host (under reports_mu).
  std::vector<std::pair<v8::Global<v8::Promise>, v8::Global<v8::Value>>>
      unhandled;
  std::mutex reports_mu;
  std::vector<cdn_rejection_t> reports;
  std::atomic<size_t> reports_pending{0};

  // Records not yet freed, for dispose.
  cordon::Record* records = nullptr;
  size_t contexts = 0;
  size_t scripts = 0;
  size_t callbacks = 0;
  size_t functions = 0;
  size_t promises = 0;
  size_t resolvers = 0;
  size_t modules = 0;
  size_t import_hosts = 0;
  std::unordered_multimap<int, cordon::ModuleRecord*> module_index;
  // import(): Symbol -> record, with WeakMap.prototype.get/set of the
  // internal context, and the record objects' template.
  v8::Global<v8::Object> import_map;
  v8::Global<v8::Function> import_get;
  v8::Global<v8::Function> import_set;
  v8::Global<v8::Private> import_key;
  v8::Global<v8::ObjectTemplate> import_template;
  uint64_t tasks_run = 0;
  // Settled PromiseRecords waiting for the host loop. Under settled_mu
  // (with each record's token and queued flag), so that the host can watch
  // a record while a runner thread holds the lock; the count is read by
  // cdn_engine_has_work from any thread.
  std::mutex settled_mu;
  std::vector<cordon::PromiseRecord*> settled;
  std::atomic<size_t> settled_pending{0};
  // Cells of watched promises whose reactions are alive (under the lock):
  // V8 runs no weak callbacks at dispose, so dispose frees these.
  bool disposing = false;  // cdn_engine_isolate_dispose has begun
  std::unordered_set<cordon::PromiseCell*> cells;

  // Set by the near-heap-limit callback, or the allocator's third refusal in
  // a row: the run was terminated for memory; reported as CDN_ENOMEM.
  std::atomic<bool> out_of_memory{false};
  // The allocator refused an ArrayBuffer during the run.
  std::atomic<bool> buffer_refused{false};
  size_t heap_limit = 0;    // V8's heap limit as configured
  size_t memory_limit = 0;  // the user's, in bytes (SIZE_MAX: none)
  bool recovering = false;  // our own collection: AfterFullGc stays quiet
  std::atomic<bool> limit_hit{false};  // NearHeapLimit ran, not yet checked
  // Still over the limit after recovering from a stop (RecoverFromLimit):
  // the isolate cannot run within its limit again.
  bool over_limit = false;

  // WebAssembly memories of limited contexts (wasm.cc, under the lock), how
  // many (read by the watchdog's poll), and the poll's state.
  std::unordered_set<cordon::WasmMemory*> wasm_memories;
  std::atomic<size_t> wasm_count{0};
  std::atomic<int> wasm_poll{0};
  // Async compilations not yet settled (wasm.cc, under the lock), with
  // their contexts; how many (read by the host thread unlocked).
  std::vector<
      std::pair<v8::Global<v8::Promise>, std::weak_ptr<cordon::ContextLink>>>
      wasm_pending;
  std::atomic<int> wasm_async{0};
  // Compiled modules (phantom handles) and what each is charged, which
  // ExternalMemory adds while they live (under the lock).
  std::vector<std::pair<v8::Global<v8::Object>, uint64_t>> wasm_modules;
  // Their sizes as wasm.cc reported them to V8 (lines whose V8 does not
  // count them itself); under the lock.
  int64_t wasm_bytes = 0;

  // A context user code never runs in: compiles unbound scripts.
  v8::Global<v8::Context> internal_context;
  // Placeholders for references in serialised values: API objects with one
  // internal field, which the serialiser hands to WriteHostObject.
  v8::Global<v8::ObjectTemplate> placeholder;

  void Link(cordon::Record* r);
  void Unlink(cordon::Record* r);
  // Dispose: Drop() every record, then free them all.
  void FreeRecords();
};

namespace cordon {

class ContextRecord;
class ImportHost;
class CallbackRecord;

// Points at a context record for as long as it lives. Records of functions
// share it, so that a call after the context was disposed fails cleanly.
struct ContextLink {
  ContextRecord* rec;
};

class ContextRecord final : public Record {
 public:
  explicit ContextRecord(cdn_engine_isolate_t* iso)
      : Record(iso), link(std::make_shared<ContextLink>(ContextLink{this})) {
    iso->contexts++;
  }
  ~ContextRecord() override;

  v8::Global<v8::Context> context;
  std::shared_ptr<ContextLink> link;
  void* host = nullptr;  // cdn_engine_context_set_host
  // Import hosts of code compiled for this context: disposing it releases
  // their host callbacks (see import.cc).
  std::unordered_set<ImportHost*> imports;
  // Host functions handed to it: disposing it releases their host
  // references (no call reaches them after), which would otherwise close a
  // cycle through both heaps (a host function that keeps its Context).
  std::unordered_set<CallbackRecord*> callbacks;
};

class ScriptRecord final : public Record {
 public:
  explicit ScriptRecord(cdn_engine_isolate_t* iso) : Record(iso) {
    iso->scripts++;
  }
  ~ScriptRecord() override;

  v8::Global<v8::UnboundScript> script;
};

// Something a value carries out of the sandbox by reference.
class OutRef : public Record {
 public:
  OutRef(cdn_engine_isolate_t* iso, cdn_ref_kind k) : Record(iso), kind(k) {}
  const cdn_ref_kind kind;
};

// A sandbox function the host holds (a host proxy's target): strong, until
// the host drops its proxy.
class FunctionRecord final : public OutRef {
 public:
  FunctionRecord(cdn_engine_isolate_t* iso, std::shared_ptr<ContextLink> l)
      : OutRef(iso, CDN_REF_FUNCTION), link(std::move(l)) {
    iso->functions++;
    cost = kFunctionCost;
  }
  ~FunctionRecord() override;

  v8::Global<v8::Function> fn;
  std::shared_ptr<ContextLink> link;
  std::string name;
  int length = 0;
};

// A host function the sandbox holds, as a sandbox function that calls it.
// The sandbox function is held weakly: when the sandbox collects it, the
// record is released and the host reference with it.
class CallbackRecord final : public Record {
 public:
  CallbackRecord(cdn_engine_isolate_t* iso, void* host_cb,
                 std::shared_ptr<ContextLink> l);
  // The host function (and what it closes over) it keeps alive, as the
  // sandbox's collector is told: a fixed estimate.
  static constexpr int64_t kHostCost = 1024;
  ~CallbackRecord() override;

  void* cb;
  std::shared_ptr<ContextLink> link;
  v8::Global<v8::Function> fn;
};

struct PromiseCell;

// A sandbox promise the host awaits. The host's reference owns it until it
// watches it (cdn_engine_promise_watch gives the token); from then on the
// settle queue does, and delivery frees it. Reactions attached to the
// sandbox promise reach it through a PromiseCell, which outlives it.
class PromiseRecord final : public OutRef {
 public:
  explicit PromiseRecord(cdn_engine_isolate_t* iso)
      : OutRef(iso, CDN_REF_PROMISE) {
    iso->promises++;
  }
  ~PromiseRecord() override;
  void Drop() override;  // its value's references

  std::shared_ptr<ContextLink> link;
  cdn_promise_state state = CDN_PROMISE_PENDING;
  cdn_value_t value{};
  void* token = nullptr;  // the host's, from cdn_engine_promise_watch
  bool queued = false;    // in iso->settled
  PromiseCell* cell = nullptr;
};

// What the reactions of a watched sandbox promise hold: freed when the
// sandbox collects them (a weak handle on one of them), which, while the
// promise is pending, also means the promise was abandoned.
struct PromiseCell {
  PromiseRecord* rec;  // nullptr once the record is gone
  cdn_engine_isolate_t* iso;
  v8::Global<v8::Function> reaction;  // weak
};

// A host promise the sandbox awaits: a resolver the host settles later.
class ResolverRecord final : public Record {
 public:
  ResolverRecord(cdn_engine_isolate_t* iso, std::shared_ptr<ContextLink> l)
      : Record(iso), link(std::move(l)) {
    iso->resolvers++;
  }
  ~ResolverRecord() override;

  v8::Global<v8::Promise::Resolver> resolver;
  std::shared_ptr<ContextLink> link;
};

// An ES module. Indexed by identity hash on its isolate, for V8's resolve
// and import.meta callbacks, which hand back only the v8::Module.
class ModuleRecord final : public Record {
 public:
  ModuleRecord(cdn_engine_isolate_t* iso, std::shared_ptr<ContextLink> l);
  ~ModuleRecord() override;

  v8::Global<v8::Module> module;
  std::shared_ptr<ContextLink> link;
  std::string filename;
  int hash = 0;
  // What each static import (by request index) resolves to, until
  // instantiation.
  std::vector<ModuleRecord*> resolved;
  std::vector<std::string> specifiers;
};

// The host side of import() for one compilation (DESIGN.md rules 1-3).
// Its sandbox half is a record object in the isolate's internal context,
// the value of Symbol -> record in the isolate's WeakMap, holding the
// referrer (a traced edge) and this native part; the Symbol is the
// compilation's host-defined option, which V8 keeps alive while any of its
// functions can run. When the sandbox collects the record object, this
// part is released, and the host tokens with it.
class ImportHost final : public Record {
 public:
  ImportHost(cdn_engine_isolate_t* iso, void* cb, void* h, cdn_referrer_kind k)
      : Record(iso), callback(cb), handle(h), kind(k) {
    iso->import_hosts++;
  }
  ~ImportHost() override;
  // Give the host references back now (the context is disposed).
  void ReleaseHost();

  void* callback;
  void* handle;
  cdn_referrer_kind kind;
  v8::Global<v8::Object> record;   // weak
  ContextRecord* owner = nullptr;  // for code of one context; NULL: a Script
};

// The prologue of an engine entry point: a handle scope, `context`
// entered, and a TryCatch — in this order, so they unwind in reverse, as
// the locals they replace did.
struct Entry {
  Entry(v8::Isolate* isolate, const v8::Global<v8::Context>& global)
      : handle_scope(isolate),
        context(global.Get(isolate)),
        context_scope(context),
        try_catch(isolate) {}
  v8::HandleScope handle_scope;
  v8::Local<v8::Context> context;
  v8::Context::Scope context_scope;
  v8::TryCatch try_catch;
};

// Enters the host isolate around a hook that runs host code, when the
// current thread is the host's (a runner thread's hooks hand the work to
// the host thread instead, and must not touch the host isolate).
class HostScope {
 public:
  explicit HostScope(cdn_engine_isolate_t* iso)
      : isolate_(std::this_thread::get_id() == iso->host_thread
                     ? iso->host_isolate
                     : nullptr) {
    if (isolate_ != nullptr) isolate_->Enter();
  }
  ~HostScope() {
    if (isolate_ != nullptr) isolate_->Exit();
  }
  HostScope(const HostScope&) = delete;
  HostScope& operator=(const HostScope&) = delete;

 private:
  v8::Isolate* isolate_;
};

// import.cc
void InitImports(cdn_engine_isolate_t* iso, v8::Local<v8::Context> internal);
// The host-defined options of a compilation with an import callback (a
// fresh Symbol in *symbol), or empty without one.
v8::Local<v8::PrimitiveArray> NewImportOptions(v8::Isolate* isolate,
                                               const cdn_source_t* src,
                                               v8::Local<v8::Symbol>* symbol);
// After compiling: file the record (referrer: a Function, or an
// UnboundScript / Module; owner: the context the code belongs to, NULL for
// a Script). Takes src's tokens.
void AttachImport(cdn_engine_isolate_t* iso, v8::Local<v8::Symbol> symbol,
                  const cdn_source_t* src, cdn_referrer_kind kind,
                  v8::Local<v8::Value> fn, v8::Local<v8::UnboundScript> script,
                  v8::Local<v8::Module> module, ContextRecord* owner);
// Release src's tokens when nothing was compiled.
void ReleaseImportTokens(cdn_engine_isolate_t* iso, const cdn_source_t* src);

// promise.cc: the context is being disposed: its sandbox promises the host
// awaits reject now with ERR_ISOLATE_DISPOSED (they may never settle, and
// their host side would keep the context alive through the host heap).
void RejectContextPromises(cdn_engine_isolate_t* iso, const ContextLink* link);
// promise.cc: unhandled rejections. Called by V8, and, with the run's
// deadline still armed, at the end of each outermost run and task drain.
void OnPromiseReject(v8::PromiseRejectMessage message);
void ReportRejections(cdn_engine_isolate_t* iso);

// promise.cc: a sandbox promise leaving by reference.
PromiseRecord* WatchPromise(v8::Isolate* isolate,
                            v8::Local<v8::Context> context,
                            v8::Local<v8::Promise> promise,
                            const std::shared_ptr<ContextLink>& link);
// A sandbox promise for host promise `token` (hooks->adopt is called).
v8::MaybeLocal<v8::Promise> AdoptHostPromise(
    v8::Local<v8::Context> context, void* token,
    const std::shared_ptr<ContextLink>& link);

// The sandbox function for a host callback.
v8::MaybeLocal<v8::Function> NewCallbackFunction(
    v8::Local<v8::Context> context, void* host_cb,
    const std::shared_ptr<ContextLink>& link, const std::string& name,
    int length);

// value.cc: values across the boundary. With the lock held and a context
// entered. They return CDN_OK, CDN_ECLONE (reason in `out`), or
// CDN_ETERMINATED.
// Functions in `value` become FunctionRecords of `link`'s context.
int ToHost(v8::Isolate* isolate, v8::Local<v8::Context> context,
           v8::Local<v8::Value> value, const std::shared_ptr<ContextLink>& link,
           cdn_value_t* out);
// Returns false with an exception scheduled in the sandbox on failure.
// Takes in->refs (host callbacks) in every case.
bool FromHost(v8::Isolate* isolate, v8::Local<v8::Context> context,
              cdn_value_t* in, const std::shared_ptr<ContextLink>& link,
              v8::Local<v8::Value>* out);
// Release host callbacks of a value that never reached FromHost.
void ReleaseRefs(cdn_engine_isolate_t* iso, cdn_value_t* v);
// The error a sandbox exception becomes on the host side.
int ExceptionToHost(v8::Isolate* isolate, v8::Local<v8::Context> context,
                    v8::TryCatch* try_catch, bool compiling, cdn_value_t* out);
// A thrown (or rejection) value for the host: an Error's name, message,
// stack, code and other own data properties, or a copy of the value (data
// only; one that cannot be copied becomes a described ERR_CANNOT_CLONE
// error). CDN_OK or CDN_ETERMINATED.
int ThrownToHost(v8::Isolate* isolate, v8::Local<v8::Context> context,
                 v8::Local<v8::Value> exc, cdn_value_t* out);
// A sandbox error from a host description (CDN_VAL_ERROR: name, message,
// code, and in u.bytes a serialised object of further own properties).
v8::Local<v8::Value> NewError(v8::Isolate* isolate, const cdn_value_t* error);
// Throw a host-described error (CDN_VAL_ERROR) in the sandbox.
void ThrowInSandbox(v8::Isolate* isolate, const cdn_value_t* error);
// isolate.cc, with the lock held: cancel a termination, dropping the
// microtasks of the stopped run; after an out-of-memory termination, put
// the heap limit back.
void CancelTermination(cdn_engine_isolate_t* iso);
// Whether the sandbox holds more than its limit: heap, or ArrayBuffer and
// WebAssembly memory (V8's external memory). On the isolate's thread.
bool OverLimit(cdn_engine_isolate_t* iso);
// If the heap reached V8's limit during the call and the check has not
// run yet (no stack check since): collect thoroughly, and mark the call
// out of memory if the sandbox is still over its limit.
void SettleLimit(cdn_engine_isolate_t* iso);
// After a memory stop: collect, then put V8's heap limit back to the
// isolate's own when what is left fits (no ratchet); otherwise leave it
// raised, so that no later collection aborts the process, and let the
// host close the isolate (it sees the heap over its limit).
void RecoverFromLimit(cdn_engine_isolate_t* iso);
// wasm.cc: in a new context of a limited isolate, hold WebAssembly memories
// to the limit (false: an exception or a stop); at dispose, forget them.
bool InstallWasmLimits(cdn_engine_isolate_t* iso,
                       v8::Local<v8::Context> context);
void FreeWasmMemories(cdn_engine_isolate_t* iso);
// Re-read the memories' sizes (grown unseen from WebAssembly code) into
// V8's external memory, where OverLimit sees them, and recount the async
// compilations still pending. Not inside a collection.
void RefreshWasmMemories(cdn_engine_isolate_t* iso);
// V8's external memory with the memories wasm.cc reported where V8's
// statistics leave them out (V8 14).
size_t ExternalMemory(cdn_engine_isolate_t* iso, v8::HeapStatistics& hs);
// Fill `out` with a CDN_VAL_ERROR.
void SetError(cdn_value_t* out, const char* name, const char* message);
// Free a value without releasing the records it refers to (isolate
// dispose frees those itself, possibly first).
void DropValue(cdn_value_t* v);

}  // namespace cordon

#endif  // CORDON_ENGINE_INTERNAL_H_
