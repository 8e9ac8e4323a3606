// promise.cc: promises across the boundary, with the isolate lock held.
//
// Out of the sandbox, a promise travels as a reference (host object 14)
// to a PromiseRecord. Reactions attached to the sandbox promise record its
// settlement, converted to a host value at once, and queue the record; the
// host takes the queue (cdn_engine_take_settled) on its loop and settles
// its own promise. A sandbox promise collected while pending is reported
// as abandoned, so no host promise waits forever on a dead one.
//
// Into the sandbox, a host promise becomes the promise of a resolver the
// host adopts (hooks->adopt) and settles later through
// cdn_engine_resolver_settle, running the sandbox's microtasks then.
#include <cstring>

#include "internal.h"

using v8::Context;
using v8::External;
using v8::FunctionCallbackInfo;
using v8::HandleScope;
using v8::Isolate;
using v8::Local;
using v8::TryCatch;
using v8::Value;

namespace cordon {

PromiseRecord::~PromiseRecord() {
  if (cell != nullptr) cell->rec = nullptr;
  std::unique_lock<std::mutex> lock(iso()->settled_mu);
  if (queued) {
    std::vector<PromiseRecord*>& list = iso()->settled;
    for (size_t i = 0; i < list.size(); i++) {
      if (list[i] == this) {
        list.erase(list.begin() + static_cast<long>(i));
        break;
      }
    }
  }
  void* t = token;
  token = nullptr;
  lock.unlock();
  cdn_value_free(&value);
  if (t != nullptr) iso()->hooks.release(iso()->hooks.data, t);
  iso()->promises--;
}

void PromiseRecord::Drop() {
  DropValue(&value);
}

ResolverRecord::~ResolverRecord() {
  resolver.Reset();
  iso()->resolvers--;
}

namespace {

void Queue(PromiseRecord* rec) {
  cdn_engine_isolate_t* iso = rec->iso();
  {
    std::lock_guard<std::mutex> lock(iso->settled_mu);
    rec->queued = true;
    iso->settled.push_back(rec);
    iso->settled_pending.fetch_add(1, std::memory_order_release);
  }
  iso->hooks.wake(iso->hooks.data);
}

void Settle(PromiseRecord* rec, cdn_promise_state state, Local<Value> v) {
  if (rec == nullptr || rec->state != CDN_PROMISE_PENDING) return;
  Isolate* isolate = rec->iso()->isolate;
  Local<Context> context = isolate->GetCurrentContext();
  rec->state = state;
  int err;
  if (state == CDN_PROMISE_FULFILLED) {
    err = ToHost(isolate, context, v, rec->link, &rec->value);
  } else {
    err = ThrownToHost(isolate, context, v, &rec->value);
  }
  if (err == CDN_ECLONE) {
    rec->state = CDN_PROMISE_REJECTED;  // the reason is in value
  } else if (err != CDN_OK) {
    rec->state = CDN_PROMISE_REJECTED;
    SetError(&rec->value, "Error",
             "The sandbox stopped while its promise was settling");
  }
  Queue(rec);
}

void OnFulfilled(const FunctionCallbackInfo<Value>& info) {
  auto* cell =
      static_cast<PromiseCell*>(ExternalValue(info.Data(), kTagPromiseCell));
  Settle(cell->rec, CDN_PROMISE_FULFILLED, info[0]);
}

void OnRejected(const FunctionCallbackInfo<Value>& info) {
  auto* cell =
      static_cast<PromiseCell*>(ExternalValue(info.Data(), kTagPromiseCell));
  Settle(cell->rec, CDN_PROMISE_REJECTED, info[0]);
}

// The reactions were collected: free the cell; a promise still pending
// then was abandoned. A first-pass weak callback: bookkeeping only.
void OnReactionsCollected(const v8::WeakCallbackInfo<PromiseCell>& info) {
  PromiseCell* cell = info.GetParameter();
  PromiseRecord* rec = cell->rec;
  cell->reaction.Reset();
  cell->iso->cells.erase(cell);
  delete cell;
  if (rec == nullptr) return;
  rec->cell = nullptr;
  if (rec->state != CDN_PROMISE_PENDING) return;
  rec->state = CDN_PROMISE_ABANDONED;
  SetError(&rec->value, "Error",
           "The sandbox promise was collected without ever settling");
  Queue(rec);
}

void ForgetRejection(cdn_engine_isolate_t* iso, Local<v8::Promise> promise) {
  auto& list = iso->unhandled;
  for (size_t i = 0; i < list.size(); i++) {
    if (list[i].first == promise) {
      list.erase(list.begin() + static_cast<long>(i));
      return;
    }
  }
}

}  // namespace

void RejectContextPromises(cdn_engine_isolate_t* iso, const ContextLink* link) {
  if (iso->disposing) return;  // the host rejects them all (PRM_DISPOSED)
  for (PromiseCell* cell : iso->cells) {
    PromiseRecord* rec = cell->rec;
    if (rec == nullptr || rec->link.get() != link ||
        rec->state != CDN_PROMISE_PENDING)
      continue;
    rec->state = CDN_PROMISE_REJECTED;
    SetError(&rec->value, "DisposedError", "The context has been disposed");
    rec->value.code = strdup("ERR_ISOLATE_DISPOSED");
    Queue(rec);
  }
}

PromiseRecord* WatchPromise(Isolate* isolate, Local<Context> context,
                            Local<v8::Promise> promise,
                            const std::shared_ptr<ContextLink>& link) {
  auto* rec = new PromiseRecord(link->rec->iso());
  rec->link = link;
  switch (promise->State()) {
    case v8::Promise::kFulfilled:
      Settle(rec, CDN_PROMISE_FULFILLED, promise->Result());
      return rec;
    case v8::Promise::kRejected:
      // The host observes it now (and reports it if host code does not):
      // MarkAsHandled tells V8 but not our list of unhandled ones.
      promise->MarkAsHandled();
      ForgetRejection(rec->iso(), promise);
      Settle(rec, CDN_PROMISE_REJECTED, promise->Result());
      return rec;
    case v8::Promise::kPending:
      break;
  }
  auto* cell = new PromiseCell{rec, rec->iso(), {}};
  Local<External> data = NewExternal(isolate, cell, kTagPromiseCell);
  Local<v8::Function> fulfilled, rejected;
  if (!v8::Function::New(context, OnFulfilled, data, 1).ToLocal(&fulfilled) ||
      !v8::Function::New(context, OnRejected, data, 1).ToLocal(&rejected) ||
      promise->Then(context, fulfilled, rejected).IsEmpty()) {
    delete cell;
    Settle(rec, CDN_PROMISE_REJECTED,
           v8::Exception::Error(v8::String::NewFromUtf8Literal(
               isolate, "could not watch the sandbox promise")));
    return rec;
  }
  rec->cell = cell;
  rec->iso()->cells.insert(cell);
  cell->reaction.Reset(isolate, fulfilled);
  cell->reaction.SetWeak(cell, OnReactionsCollected,
                         v8::WeakCallbackType::kParameter);
  return rec;
}

v8::MaybeLocal<v8::Promise> AdoptHostPromise(
    Local<Context> context, void* token,
    const std::shared_ptr<ContextLink>& link) {
  cdn_engine_isolate_t* iso = link->rec->iso();
  Isolate* isolate = iso->isolate;
  Local<v8::Promise::Resolver> resolver;
  if (!v8::Promise::Resolver::New(context).ToLocal(&resolver)) {
    iso->hooks.release(iso->hooks.data, token);
    return v8::MaybeLocal<v8::Promise>();
  }
  auto* rec = new ResolverRecord(iso, link);
  rec->resolver.Reset(isolate, resolver);
  {
    HostScope host(iso);
    iso->hooks.adopt(iso->hooks.data, token,
                     reinterpret_cast<cdn_engine_resolver_t*>(rec));
  }
  return resolver->GetPromise();
}

void OnPromiseReject(v8::PromiseRejectMessage message) {
  Local<v8::Promise> promise = message.GetPromise();
  Isolate* isolate = Isolate::GetCurrent();  // the promise's
  auto* iso = static_cast<cdn_engine_isolate_t*>(isolate->GetData(0));
  auto& list = iso->unhandled;
  switch (message.GetEvent()) {
    case v8::kPromiseRejectWithNoHandler:
      list.emplace_back(v8::Global<v8::Promise>(isolate, promise),
                        v8::Global<Value>(isolate, message.GetValue()));
      break;
    case v8::kPromiseHandlerAddedAfterReject:
      ForgetRejection(iso, promise);
      break;
    default:
      break;
  }
}

void ReportRejections(cdn_engine_isolate_t* iso) {
  if (iso->unhandled.empty() || iso->lock_depth != 1) return;
  Isolate* isolate = iso->isolate;
  HandleScope handle_scope(isolate);
  auto list = std::move(iso->unhandled);
  iso->unhandled.clear();
  for (auto& entry : list) {
    if (isolate->IsExecutionTerminating()) break;
    Local<v8::Promise> promise = entry.first.Get(isolate);
    Local<Context> context;
    if (!promise->GetCreationContext().ToLocal(&context)) continue;
    auto* crec = static_cast<ContextRecord*>(
        GetContextPointer(context, kContextRecordSlot, kTagContextRecord));
    if (crec == nullptr || crec->host == nullptr) continue;
    Context::Scope context_scope(context);
    TryCatch try_catch(isolate);
    cdn_rejection_t r{crec->host, {}};
    if (ThrownToHost(isolate, context, entry.second.Get(isolate), &r.reason) !=
        CDN_OK) {
      cdn_value_free(&r.reason);
      continue;
    }
    std::lock_guard<std::mutex> lock(iso->reports_mu);
    iso->reports.push_back(r);
    iso->reports_pending.fetch_add(1, std::memory_order_release);
  }
  if (iso->reports_pending.load() != 0) iso->hooks.wake(iso->hooks.data);
}

}  // namespace cordon

using cordon::PromiseRecord;

extern "C" int cdn_engine_has_rejections(cdn_engine_isolate_t* iso) {
  return iso->reports_pending.load(std::memory_order_acquire) != 0;
}

extern "C" void cdn_engine_report_rejections(cdn_engine_isolate_t* iso) {
  cordon::ReportRejections(iso);
}

extern "C" size_t cdn_engine_take_rejections(cdn_engine_isolate_t* iso,
                                             cdn_rejection_t** out) {
  std::lock_guard<std::mutex> lock(iso->reports_mu);
  *out = nullptr;
  size_t n = iso->reports.size();
  iso->reports_pending.store(0, std::memory_order_release);
  if (n == 0) return 0;
  *out = static_cast<cdn_rejection_t*>(malloc(n * sizeof(cdn_rejection_t)));
  if (*out == nullptr) abort();
  for (size_t i = 0; i < n; i++) (*out)[i] = iso->reports[i];
  iso->reports.clear();
  return n;
}
using cordon::ResolverRecord;

extern "C" cdn_ref_kind cdn_engine_ref_kind(void* ref) {
  return static_cast<cordon::OutRef*>(static_cast<cordon::Record*>(ref))->kind;
}

extern "C" size_t cdn_engine_ref_cost(void* ref) {
  return static_cast<cordon::Record*>(ref)->cost;
}

extern "C" void cdn_engine_ref_release(void* ref) {
  auto* rec = static_cast<cordon::Record*>(ref);
  rec->iso()->tasks->PostRelease(rec);
}

extern "C" void cdn_engine_promise_watch(cdn_engine_promise_t* p, void* token) {
  auto* rec = static_cast<PromiseRecord*>(
      static_cast<cordon::Record*>(static_cast<void*>(p)));
  cdn_engine_isolate_t* iso = rec->iso();
  bool queued;
  {
    std::lock_guard<std::mutex> lock(iso->settled_mu);
    rec->token = token;
    queued = rec->queued;
    // Settled before the host watched it: deliver on the next wake-up.
    if (queued) iso->settled_pending.fetch_add(1, std::memory_order_release);
  }
  if (queued) iso->hooks.wake(iso->hooks.data);
}

extern "C" int cdn_engine_has_settled(cdn_engine_isolate_t* iso) {
  return iso->settled_pending.load(std::memory_order_acquire) != 0;
}

extern "C" size_t cdn_engine_take_settled(cdn_engine_isolate_t* iso,
                                          cdn_settlement_t** out) {
  // Only watched records are the queue's to deliver and free; one not yet
  // watched still belongs to the host reference that carries it.
  std::vector<PromiseRecord*> list, keep, done;
  std::unique_lock<std::mutex> lock(iso->settled_mu);
  list.swap(iso->settled);
  iso->settled_pending.store(0, std::memory_order_release);
  *out = nullptr;
  if (list.empty()) return 0;
  auto* s = static_cast<cdn_settlement_t*>(
      calloc(list.size(), sizeof(cdn_settlement_t)));
  if (s == nullptr) abort();
  size_t n = 0;
  for (PromiseRecord* rec : list) {
    if (rec->token == nullptr) {
      keep.push_back(rec);
      continue;
    }
    s[n].token = rec->token;
    s[n].state = rec->state;
    s[n].value = rec->value;  // moved out
    rec->value = cdn_value_t{};
    rec->token = nullptr;
    rec->queued = false;
    n++;
    done.push_back(rec);
  }
  iso->settled.swap(keep);
  lock.unlock();
  for (PromiseRecord* rec : done) delete rec;
  if (n == 0) {
    free(s);
    return 0;
  }
  *out = s;
  return n;
}

extern "C" int cdn_engine_resolver_settle(cdn_engine_resolver_t* r,
                                          int rejected,
                                          const cdn_value_t* value) {
  auto* rec = reinterpret_cast<ResolverRecord*>(r);
  cdn_engine_isolate_t* iso = rec->iso();
  Isolate* isolate = iso->isolate;
  cdn_value_t in = *value;  // FromHost takes its refs
  if (rec->link->rec == nullptr) {
    cordon::ReleaseRefs(iso, &in);
    return CDN_EDISPOSED;
  }
  cordon::Entry entry(isolate, rec->link->rec->context);
  Local<Context> context = entry.context;
  TryCatch& try_catch = entry.try_catch;
  Local<v8::Promise::Resolver> resolver = rec->resolver.Get(isolate);
  Local<Value> v;
  if (in.kind == CDN_VAL_ERROR) {
    v = cordon::NewError(isolate, &in);  // keeps name and code
  } else if (!cordon::FromHost(isolate, context, &in, rec->link, &v)) {
    // The host's value could not be read: reject with why.
    if (try_catch.HasTerminated() || isolate->IsExecutionTerminating())
      return CDN_ETERMINATED;
    v = try_catch.Exception();
    try_catch.Reset();
    rejected = 1;
  }
  if ((rejected ? resolver->Reject(context, v) : resolver->Resolve(context, v))
          .IsNothing() &&
      (try_catch.HasTerminated() || isolate->IsExecutionTerminating()))
    return CDN_ETERMINATED;
  isolate->PerformMicrotaskCheckpoint();
  if (try_catch.HasTerminated() || isolate->IsExecutionTerminating())
    return CDN_ETERMINATED;
  return CDN_OK;
}

extern "C" void cdn_engine_resolver_release(cdn_engine_resolver_t* r) {
  cdn_engine_ref_release(r);
}
