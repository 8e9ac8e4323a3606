// context.cc: contexts, compiled scripts and functions, host callbacks, and
// runs. Everything here runs with the isolate lock held.
#include <cstdlib>
#include <cstring>

#include "internal.h"

using v8::Context;
using v8::External;
using v8::FunctionCallbackInfo;
using v8::HandleScope;
using v8::Isolate;
using v8::Local;
using v8::Object;
using v8::ScriptCompiler;
using v8::String;
using v8::TryCatch;
using v8::Value;

namespace cordon {

// Arguments up to this many are converted without a heap allocation.
constexpr size_t kStackArgs = 8;

ContextRecord::~ContextRecord() {
  if (!context.IsEmpty()) {
    // Code of this context may still run later (a task, a stale reaction):
    // it must not find the freed record.
    v8::HandleScope scope(iso()->isolate);
    SetContextPointer(context.Get(iso()->isolate), kContextRecordSlot, nullptr,
                      kTagContextRecord);
  }
  context.Reset();
  link->rec = nullptr;
  // Its code may be kept by the sandbox, but no host call reaches it now:
  // the import callbacks go, and with them any cycle through the host
  // heap (a callback that keeps its referrer).
  RejectContextPromises(iso(), link.get());
  for (CallbackRecord* c : callbacks) {
    iso()->hooks.release(iso()->hooks.data, c->cb);
    c->cb = nullptr;
  }
  callbacks.clear();
  for (ImportHost* h : imports) {
    h->ReleaseHost();
    h->owner = nullptr;
  }
  imports.clear();
  iso()->contexts--;
}

ScriptRecord::~ScriptRecord() {
  script.Reset();
  iso()->scripts--;
}

FunctionRecord::~FunctionRecord() {
  fn.Reset();
  iso()->functions--;
}

CallbackRecord::CallbackRecord(cdn_engine_isolate_t* iso, void* host_cb,
                               std::shared_ptr<ContextLink> l)
    : Record(iso), cb(host_cb), link(std::move(l)) {
  iso->callbacks++;
  AdjustExternal(iso->isolate, kHostCost);
}

CallbackRecord::~CallbackRecord() {
  AdjustExternal(iso()->isolate, -kHostCost);
  fn.Reset();
  if (cb != nullptr) iso()->hooks.release(iso()->hooks.data, cb);
  if (link->rec != nullptr) link->rec->callbacks.erase(this);
  iso()->callbacks--;
}

namespace {

// The sandbox collected a host callback's function: release the record
// (and so the host reference) from the queue, on the lock holder's thread.
void OnCallbackCollected(const v8::WeakCallbackInfo<CallbackRecord>& info) {
  CallbackRecord* rec = info.GetParameter();
  rec->fn.Reset();
  rec->iso()->tasks->PostRelease(rec);
}

// A call from sandbox code to a host function. Runs on the thread holding
// the isolate lock: the host's own thread for a sync run, a runner thread
// (whose hook waits for the host thread to run it) for an async one.
void CallHost(const FunctionCallbackInfo<Value>& info) {
  Isolate* isolate = info.GetIsolate();
  auto* rec =
      static_cast<CallbackRecord*>(ExternalValue(info.Data(), kTagCallback));
  cdn_engine_isolate_t* iso = rec->iso();
  Local<Context> context = isolate->GetCurrentContext();
  if (rec->link->rec == nullptr) return;  // its context is gone

  // Made whole, not by Set: an index setter on Array.prototype would run.
  std::vector<Local<Value>> elements(static_cast<size_t>(info.Length()));
  for (int i = 0; i < info.Length(); i++) elements[i] = info[i];
  Local<v8::Array> array =
      v8::Array::New(isolate, elements.data(), elements.size());
  cdn_value_t args;
  int err = ToHost(isolate, context, array, rec->link, &args);
  if (err == CDN_ECLONE) {
    ThrowInSandbox(isolate, &args);
    cdn_value_free(&args);
    return;
  }
  if (err != CDN_OK) return;  // terminating

  cdn_value_t result{};
  {
    HostScope host(iso);
    iso->hooks.call(iso->hooks.data, rec->cb, &rec->link->rec->host, &args,
                    &result);
  }
  cdn_value_free(&args);
  if (isolate->IsExecutionTerminating() || rec->link->rec == nullptr) {
    // The deadline passed (or the isolate is being disposed) while the host
    // ran: unwind without touching the result.
    ReleaseRefs(iso, &result);
    cdn_value_free(&result);
    return;
  }
  Local<Value> value;
  if (FromHost(isolate, context, &result, rec->link, &value)) {
    info.GetReturnValue().Set(value);
  }
  cdn_value_free(&result);
}

Local<String> MakeString(Isolate* isolate, const uint16_t* s, size_t n) {
  // The host is V8 too: its strings never exceed V8's maximum length.
  return String::NewFromTwoByte(isolate, s, v8::NewStringType::kNormal,
                                static_cast<int>(n))
      .ToLocalChecked();
}

// The code, origin and code cache of a source text, ready for a
// ScriptCompiler::Source.
class SourceText {
 public:
  SourceText(Isolate* isolate, const cdn_source_t* src,
             Local<v8::PrimitiveArray> host_options)
      : code_(MakeString(isolate, src->code, src->code_len)),
        origin_(MakeOrigin(
            isolate, MakeString(isolate, src->filename, src->filename_len),
            src->line_offset, src->column_offset, false, host_options)),
        source_(code_, origin_, Cache(src)) {}

  ScriptCompiler::Source* source() {
    return &source_;
  }
  ScriptCompiler::CompileOptions options() const {
    return has_cache_ ? ScriptCompiler::kConsumeCodeCache
                      : ScriptCompiler::kNoCompileOptions;
  }
  // After compiling: what became of the cache that was given.
  void Report(cdn_cache_result_t* out) {
    out->cache_rejected =
        has_cache_ ? (source_.GetCachedData()->rejected ? 1 : 0) : -1;
  }

 private:
  ScriptCompiler::CachedData* Cache(const cdn_source_t* src) {
    has_cache_ = src->cached_data != nullptr;
    if (!has_cache_) return nullptr;
    // BufferNotOwned: the host's buffer outlives the compilation.
    return new ScriptCompiler::CachedData(
        src->cached_data, static_cast<int>(src->cached_len),
        ScriptCompiler::CachedData::BufferNotOwned);
  }

  Local<String> code_;
  v8::ScriptOrigin origin_;
  bool has_cache_ = false;
  ScriptCompiler::Source source_;
};

// A code cache as malloc'd bytes (V8 allocates it with new[]).
void TakeCache(ScriptCompiler::CachedData* data, uint8_t** out, size_t* len) {
  *out = nullptr;
  *len = 0;
  if (data == nullptr) return;
  if (data->length > 0) {
    *out = static_cast<uint8_t*>(malloc(data->length));
    if (*out == nullptr) abort();
    memcpy(*out, data->data, data->length);
    *len = static_cast<size_t>(data->length);
  }
  delete data;
}

// Run a script bound to `context`, then the microtasks it queued (inside
// the same deadline), and copy the completion value out.
int RunBound(Isolate* isolate, Local<Context> context, TryCatch* try_catch,
             Local<v8::Script> script, const std::shared_ptr<ContextLink>& link,
             cdn_value_t* out) {
  Local<Value> result;
  if (!script->Run(context).ToLocal(&result))
    return ExceptionToHost(isolate, context, try_catch, false, out);
  isolate->PerformMicrotaskCheckpoint();
  if (try_catch->HasTerminated() || isolate->IsExecutionTerminating())
    return CDN_ETERMINATED;
  return ToHost(isolate, context, result, link, out);
}

// The status of a run during which a memory limit may have been hit. The
// run may have ended terminated, with the RangeError of a refused
// ArrayBuffer before V8 looked at the termination, or even normally (the
// limit was passed in a builtin that never checks for termination, or by
// memory only a collection measures): each way it reports the memory
// limit, and `out` (when the run made a value) is dropped.
int Status(cdn_engine_isolate_t* iso, int err, cdn_value_t* out = nullptr) {
  RefreshWasmMemories(iso);  // (grown in WebAssembly code since the poll)
  SettleLimit(iso);
  if (iso->over_limit) {  // (a stop in a task drain left it so)
    iso->out_of_memory.store(false);
    iso->buffer_refused.store(false);
    CancelTermination(iso);
    cdn_value_free(out);
    return CDN_ENOMEM;
  }
  bool refused = iso->buffer_refused.exchange(false);
  bool oom = iso->out_of_memory.exchange(false);
  // A run may leave more than the limit without V8 noticing: one large
  // young object (V8 limits only the old generation), or WebAssembly
  // memory. Cheap to ask; a collection only when it looks over.
  if (!oom && OverLimit(iso)) {
    iso->recovering = true;
    iso->isolate->LowMemoryNotification();
    iso->recovering = false;
    oom = OverLimit(iso);
    if (oom) iso->isolate->TerminateExecution();  // CancelTermination's
  }
  if (!oom) {
    // An uncaught RangeError of a refused ArrayBuffer is the memory limit.
    if (!refused || err != CDN_EEXCEPTION) return err;
    // Collect what the run left, backing stores included (their sweeping
    // otherwise finishes later), so that the next run starts clean.
    iso->isolate->LowMemoryNotification();
    cdn_value_free(out);
    return CDN_ENOMEM;
  }
  // The termination was the memory limit's, so it is cancelled here; then
  // the heap limit raised to let the run unwind goes back down (see
  // RecoverFromLimit) unless the sandbox still holds more than its limit.
  CancelTermination(iso);
  RecoverFromLimit(iso);
  if (err == CDN_OK || err == CDN_ETERMINATED || err == CDN_EEXCEPTION) {
    cdn_value_free(out);
    return CDN_ENOMEM;
  }
  return err;
}

}  // namespace

v8::MaybeLocal<v8::Function> NewCallbackFunction(
    Local<Context> context, void* host_cb,
    const std::shared_ptr<ContextLink>& link, const std::string& name,
    int length) {
  Isolate* isolate = Isolate::GetCurrent();  // the context's
  auto* rec = new CallbackRecord(link->rec->iso(), host_cb, link);
  Local<v8::Function> fn;
  if (!v8::Function::New(context, CallHost,
                         NewExternal(isolate, rec, kTagCallback), length,
                         v8::ConstructorBehavior::kThrow)
           .ToLocal(&fn)) {
    delete rec;
    return v8::MaybeLocal<v8::Function>();
  }
  Local<String> n;
  if (String::NewFromUtf8(isolate, name.data(), v8::NewStringType::kNormal,
                          static_cast<int>(name.size()))
          .ToLocal(&n))
    fn->SetName(n);
  rec->fn.Reset(isolate, fn);
  rec->fn.SetWeak(rec, OnCallbackCollected, v8::WeakCallbackType::kParameter);
  link->rec->callbacks.insert(rec);
  return fn;
}

}  // namespace cordon

using cordon::ContextRecord;
using cordon::FunctionRecord;
using cordon::ScriptRecord;
using cordon::SourceText;

// Globals V8's extensions install in every new context when the host runs
// with their flags (--expose-gc, --expose-externalize-string,
// --expose-statistics, --expose-trigger-failure, which aborts the process):
// the host asked for them, the sandbox did not, so each context loses them
// (undefined and read-only where they cannot be deleted).
static void RemoveExtensionGlobals(Isolate* isolate, Local<Context> context) {
  static const char* const kNames[] = {"gc",
                                       "externalizeString",
                                       "createExternalizableString",
                                       "isOneByteString",
                                       "getV8Statistics",
                                       "triggerCheckFalse",
                                       "triggerAssertFalse",
                                       "triggerSlowAssertFalse",
                                       "getIgnitionDispatchCounters"};
  Local<Object> global = context->Global();
  for (const char* name : kNames) {
    Local<String> key;
    if (!String::NewFromUtf8(isolate, name).ToLocal(&key)) continue;
    if (!global->HasOwnProperty(context, key).FromMaybe(false)) continue;
    // Declared by a script (`native function gc()`), so not deletable; a
    // non-configurable writable property may still become read-only (its
    // enumerability cannot change).
    if (!global->Delete(context, key).FromMaybe(false))
      (void)global
          ->DefineOwnProperty(
              context, key, v8::Undefined(isolate),
              static_cast<v8::PropertyAttribute>(v8::ReadOnly | v8::DontDelete))
          .FromMaybe(false);
  }
}

extern "C" int cdn_engine_context_new(cdn_engine_isolate_t* iso,
                                      const cdn_value_t* globals,
                                      cdn_engine_context_t** out,
                                      cdn_value_t* err) {
  Isolate* isolate = iso->isolate;
  HandleScope handle_scope(isolate);
  cdn_value_t in = *globals;  // FromHost takes its refs
  *err = cdn_value_t{};
  Local<Context> context = Context::New(isolate);
  if (context.IsEmpty()) {
    cordon::ReleaseRefs(iso, &in);
    // V8 fails a context only for want of heap (the near-heap-limit
    // callback terminated the creation).
    if (iso->out_of_memory.load() || cordon::OverLimit(iso))
      return cordon::Status(iso, CDN_ETERMINATED);
    cordon::SetError(err, "Error", "could not create a context");
    return CDN_EINTERNAL;
  }
  // eval and new Function ask the isolate's CodeFromStrings first.
  context->AllowCodeGenerationFromStrings(false);
  auto* rec = new ContextRecord(iso);
  rec->cost = cordon::kContextCost;
  cordon::SetContextPointer(context, cordon::kContextRecordSlot, rec,
                            cordon::kTagContextRecord);
  Context::Scope context_scope(context);
  TryCatch try_catch(isolate);
  RemoveExtensionGlobals(isolate, context);
  if (!cordon::InstallWasmLimits(iso, context)) {
    cordon::ReleaseRefs(iso, &in);
    delete rec;
    if (iso->out_of_memory.load() || cordon::OverLimit(iso))
      return cordon::Status(iso, CDN_ETERMINATED);
    cordon::SetError(err, "Error", "could not limit WebAssembly memories");
    return CDN_EINTERNAL;
  }
  if (in.kind == CDN_VAL_BYTES) {
    Local<Object> global = context->Global();
    Local<Value> v;
    Local<v8::Array> keys;
    bool ok = cordon::FromHost(isolate, context, &in, rec->link, &v) &&
              v->IsObject() &&
              v.As<Object>()->GetOwnPropertyNames(context).ToLocal(&keys);
    for (uint32_t i = 0; ok && i < keys->Length(); i++) {
      Local<Value> key, val;
      ok = keys->Get(context, i).ToLocal(&key) &&
           v.As<Object>()->Get(context, key).ToLocal(&val) &&
           // Own data properties: no setter of the global's prototypes
           // (such as __proto__) runs.
           global->CreateDataProperty(context, key.As<v8::Name>(), val)
               .FromMaybe(false);
    }
    if (!ok) {
      int e = cordon::ExceptionToHost(isolate, context, &try_catch, false, err);
      delete rec;
      e = cordon::Status(iso, e, err);
      return e == CDN_EEXCEPTION ? CDN_ECLONE : e;
    }
  }
  cordon::SettleLimit(iso);
  if (iso->out_of_memory.load() || iso->over_limit) {  // made, past the limit
    delete rec;
    return cordon::Status(iso, CDN_ETERMINATED);
  }
  rec->context.Reset(isolate, context);
  *out = reinterpret_cast<cdn_engine_context_t*>(rec);
  return CDN_OK;
}

extern "C" void cdn_engine_context_release(cdn_engine_context_t* ctx) {
  cdn_engine_ref_release(ctx);
}

extern "C" int cdn_engine_run(cdn_engine_context_t* ctx,
                              const cdn_source_t* src, cdn_value_t* out) {
  auto* rec = reinterpret_cast<ContextRecord*>(ctx);
  cdn_engine_isolate_t* iso = rec->iso();
  Isolate* isolate = iso->isolate;
  cordon::Entry entry(isolate, rec->context);
  Local<Context> context = entry.context;
  TryCatch& try_catch = entry.try_catch;
  *out = cdn_value_t{};
  Local<v8::Symbol> symbol;
  SourceText text(isolate, src,
                  cordon::NewImportOptions(isolate, src, &symbol));
  Local<v8::Script> script;
  if (!ScriptCompiler::Compile(context, text.source()).ToLocal(&script)) {
    cordon::ReleaseImportTokens(iso, src);
    return cordon::Status(
        iso, cordon::ExceptionToHost(isolate, context, &try_catch, true, out));
  }
  cordon::AttachImport(iso, symbol, src, CDN_REFERRER_SCRIPT, Local<Value>(),
                       script->GetUnboundScript(), Local<v8::Module>(), rec);
  return cordon::Status(
      iso,
      cordon::RunBound(isolate, context, &try_catch, script, rec->link, out),
      out);
}

extern "C" int cdn_engine_script_new(cdn_engine_isolate_t* iso,
                                     const cdn_source_t* src,
                                     cdn_engine_script_t** out,
                                     cdn_value_t* err,
                                     cdn_cache_result_t* cache) {
  Isolate* isolate = iso->isolate;
  cordon::Entry entry(isolate, iso->internal_context);
  Local<Context> context = entry.context;
  TryCatch& try_catch = entry.try_catch;
  *err = cdn_value_t{};
  *cache = cdn_cache_result_t{};
  ScriptRecord* rec;
  {
    // Its own scope: once it closes, the source and the compiled script
    // are held by the record alone, so that a collection can tell whether
    // the script fits under the limit.
    HandleScope inner(isolate);
    Local<v8::Symbol> symbol;
    SourceText text(isolate, src,
                    cordon::NewImportOptions(isolate, src, &symbol));
    Local<v8::UnboundScript> script;
    if (!ScriptCompiler::CompileUnboundScript(isolate, text.source(),
                                              text.options())
             .ToLocal(&script)) {
      cordon::ReleaseImportTokens(iso, src);
      return cordon::Status(iso, cordon::ExceptionToHost(
                                     isolate, context, &try_catch, true, err));
    }
    cordon::AttachImport(iso, symbol, src, CDN_REFERRER_SCRIPT, Local<Value>(),
                         script, Local<v8::Module>(), nullptr);
    text.Report(cache);
    if (src->produce_cached_data) {
      cordon::TakeCache(ScriptCompiler::CreateCodeCache(script), &cache->cache,
                        &cache->cache_len);
    }
    rec = new ScriptRecord(iso);
    rec->script.Reset(isolate, script);
    rec->cost = cordon::kFunctionCost + src->code_len * 4;
  }
  // A source or script past the limit: dropped, then the status of a
  // memory stop (the collection in Status frees it).
  cordon::SettleLimit(iso);
  if (iso->out_of_memory.load() || iso->over_limit || cordon::OverLimit(iso)) {
    delete rec;
    cdn_cache_result_free(cache);
    iso->out_of_memory.store(true);
    return cordon::Status(iso, CDN_ETERMINATED);
  }
  *out = reinterpret_cast<cdn_engine_script_t*>(rec);
  return CDN_OK;
}

extern "C" int cdn_engine_script_cache(cdn_engine_script_t* script,
                                       uint8_t** data, size_t* len) {
  auto* rec = reinterpret_cast<ScriptRecord*>(script);
  Isolate* isolate = rec->iso()->isolate;
  HandleScope handle_scope(isolate);
  cordon::TakeCache(ScriptCompiler::CreateCodeCache(rec->script.Get(isolate)),
                    data, len);
  return *data != nullptr ? CDN_OK : CDN_EINTERNAL;
}

extern "C" void cdn_engine_script_release(cdn_engine_script_t* script) {
  cdn_engine_ref_release(script);
}

extern "C" int cdn_engine_script_run(cdn_engine_script_t* script,
                                     cdn_engine_context_t* ctx,
                                     cdn_value_t* out) {
  auto* srec = reinterpret_cast<ScriptRecord*>(script);
  auto* crec = reinterpret_cast<ContextRecord*>(ctx);
  cdn_engine_isolate_t* iso = crec->iso();
  Isolate* isolate = iso->isolate;
  cordon::Entry entry(isolate, crec->context);
  Local<Context> context = entry.context;
  TryCatch& try_catch = entry.try_catch;
  *out = cdn_value_t{};
  Local<v8::Script> bound = srec->script.Get(isolate)->BindToCurrentContext();
  return cordon::Status(
      iso,
      cordon::RunBound(isolate, context, &try_catch, bound, crec->link, out),
      out);
}

extern "C" int cdn_engine_compile_function(
    cdn_engine_context_t* ctx, const cdn_source_t* src,
    const cdn_param_t* params, size_t nparams, const cdn_value_t* extensions,
    cdn_value_t* out, cdn_cache_result_t* cache) {
  auto* rec = reinterpret_cast<ContextRecord*>(ctx);
  cdn_engine_isolate_t* iso = rec->iso();
  Isolate* isolate = iso->isolate;
  cordon::Entry entry(isolate, rec->context);
  Local<Context> context = entry.context;
  TryCatch& try_catch = entry.try_catch;
  *out = cdn_value_t{};
  *cache = cdn_cache_result_t{};

  std::vector<Local<String>> names;
  for (size_t i = 0; i < nparams; i++) {
    names.push_back(cordon::MakeString(isolate, params[i].name, params[i].len));
  }
  std::vector<Local<Object>> scopes;
  if (extensions->kind == CDN_VAL_BYTES) {
    cdn_value_t in = *extensions;
    Local<Value> v;
    if (!cordon::FromHost(isolate, context, &in, rec->link, &v)) {
      cordon::ReleaseImportTokens(iso, src);
      return cordon::Status(iso, cordon::ExceptionToHost(
                                     isolate, context, &try_catch, false, out));
    }
    Local<v8::Array> list = v.As<v8::Array>();
    for (uint32_t i = 0; i < list->Length(); i++) {
      Local<Value> e;
      if (!list->Get(context, i).ToLocal(&e) || !e->IsObject()) continue;
      scopes.push_back(e.As<Object>());
    }
  }
  Local<v8::Symbol> symbol;
  SourceText text(isolate, src,
                  cordon::NewImportOptions(isolate, src, &symbol));
  Local<v8::Function> fn;
  if (!ScriptCompiler::CompileFunction(context, text.source(), names.size(),
                                       names.data(), scopes.size(),
                                       scopes.data(), text.options())
           .ToLocal(&fn)) {
    cordon::ReleaseImportTokens(iso, src);
    return cordon::Status(
        iso, cordon::ExceptionToHost(isolate, context, &try_catch, true, out));
  }
  cordon::AttachImport(iso, symbol, src, CDN_REFERRER_FUNCTION, fn,
                       Local<v8::UnboundScript>(), Local<v8::Module>(), rec);
  text.Report(cache);
  if (src->produce_cached_data) {
    cordon::TakeCache(ScriptCompiler::CreateCodeCacheForFunction(fn),
                      &cache->cache, &cache->cache_len);
  }
  int err = cordon::ToHost(isolate, context, fn, rec->link, out);
  if (err == CDN_OK && out->nrefs == 1)
    static_cast<cordon::Record*>(out->refs[0])->cost += src->code_len * 4;
  return cordon::Status(iso, err, out);
}

extern "C" int cdn_engine_call(cdn_engine_function_t* fnp,
                               const cdn_value_t* this_arg,
                               const cdn_value_t* args, size_t argc,
                               cdn_value_t* out) {
  auto* rec = reinterpret_cast<FunctionRecord*>(fnp);
  cdn_engine_isolate_t* iso = rec->iso();
  Isolate* isolate = iso->isolate;
  *out = cdn_value_t{};
  // FromHost takes the refs of each value, whatever happens. (Copies, on
  // the stack for the usual few arguments.)
  cdn_value_t in_stack[cordon::kStackArgs];
  std::unique_ptr<cdn_value_t[]> in_heap;
  cdn_value_t* in = in_stack;
  if (argc > cordon::kStackArgs) {
    in_heap.reset(new cdn_value_t[argc]);
    in = in_heap.get();
  }
  for (size_t i = 0; i < argc; i++) in[i] = args[i];
  cdn_value_t this_in = *this_arg;
  auto release_from = [&](size_t first) {
    for (size_t i = first; i < argc; i++) cordon::ReleaseRefs(iso, &in[i]);
  };
  if (rec->link->rec == nullptr) {
    cordon::ReleaseRefs(iso, &this_in);
    release_from(0);
    return CDN_EDISPOSED;
  }
  cordon::Entry entry(isolate, rec->link->rec->context);
  Local<Context> context = entry.context;
  TryCatch& try_catch = entry.try_catch;
  const std::shared_ptr<cordon::ContextLink>& link = rec->link;

  Local<Value> recv;
  Local<Value> argv_stack[cordon::kStackArgs];
  std::vector<Local<Value>> argv_heap;
  Local<Value>* argv = argv_stack;
  if (argc > cordon::kStackArgs) {
    argv_heap.resize(argc);
    argv = argv_heap.data();
  }
  bool ok = cordon::FromHost(isolate, context, &this_in, link, &recv);
  if (!ok) release_from(0);
  for (size_t i = 0; ok && i < argc; i++) {
    ok = cordon::FromHost(isolate, context, &in[i], link, &argv[i]);
    if (!ok) release_from(i + 1);
  }
  if (!ok) {
    return cordon::Status(
        iso, cordon::ExceptionToHost(isolate, context, &try_catch, false, out));
  }
  Local<Value> result;
  if (!rec->fn.Get(isolate)
           ->Call(context, recv, static_cast<int>(argc), argv)
           .ToLocal(&result)) {
    return cordon::Status(
        iso, cordon::ExceptionToHost(isolate, context, &try_catch, false, out));
  }
  isolate->PerformMicrotaskCheckpoint();
  if (try_catch.HasTerminated() || isolate->IsExecutionTerminating())
    return cordon::Status(iso, CDN_ETERMINATED);
  return cordon::Status(
      iso, cordon::ToHost(isolate, context, result, link, out), out);
}

extern "C" void cdn_engine_function_release(cdn_engine_function_t* fn) {
  cdn_engine_ref_release(fn);
}

extern "C" const char* cdn_engine_function_name(cdn_engine_function_t* fn,
                                                size_t* len) {
  const std::string& name = reinterpret_cast<FunctionRecord*>(fn)->name;
  *len = name.size();
  return name.data();
}

extern "C" int cdn_engine_function_length(cdn_engine_function_t* fn) {
  return reinterpret_cast<FunctionRecord*>(fn)->length;
}
