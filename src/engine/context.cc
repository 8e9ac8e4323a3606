// context.cc: contexts, host callbacks, compiled scripts and runs.
#include <cstdlib>

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

ContextRecord::~ContextRecord() {
  context.Reset();
  cdn_engine_isolate_t* i = iso();
  for (auto& cb : callbacks) {
    i->hooks.release(i->hooks.data, cb->cb);
    i->callbacks--;
  }
  i->contexts--;
}

ScriptRecord::~ScriptRecord() {
  script.Reset();
  iso()->scripts--;
}

namespace {

// A call from sandbox code to a host function. Runs on the thread holding
// the isolate lock, which for a sync run is the host's own thread.
void CallHost(const FunctionCallbackInfo<Value>& info) {
  Isolate* isolate = info.GetIsolate();
  auto* cb = static_cast<Callback*>(info.Data().As<External>()->Value());
  cdn_engine_isolate_t* iso = cb->iso;
  Local<Context> context = isolate->GetCurrentContext();

  Local<v8::Array> array = v8::Array::New(isolate, info.Length());
  for (int i = 0; i < info.Length(); i++) {
    if (array->Set(context, i, info[i]).IsNothing()) return;
  }
  cdn_value_t args;
  int err = ToHost(isolate, context, array, &args);
  if (err == CDN_ECLONE) {
    ThrowInSandbox(isolate, &args);
    cdn_value_free(&args);
    return;
  }
  if (err != CDN_OK) return;  // terminating

  cdn_value_t result{};
  iso->host_isolate->Enter();
  iso->hooks.call(iso->hooks.data, cb->cb, &args, &result);
  iso->host_isolate->Exit();
  cdn_value_free(&args);
  if (isolate->IsExecutionTerminating()) {
    // The deadline passed (or the isolate is being disposed) while the host
    // ran: unwind without touching the result.
    cdn_value_free(&result);
    return;
  }

  Local<Value> value;
  if (FromHost(isolate, context, &result, &value)) {
    info.GetReturnValue().Set(value);
  }
  cdn_value_free(&result);
}

Local<String> MakeString(Isolate* isolate, const uint16_t* s, size_t n) {
  return String::NewFromTwoByte(isolate, s, v8::NewStringType::kNormal,
                                static_cast<int>(n))
      .ToLocalChecked();
}

// The code and origin of a source text, ready for ScriptCompiler::Source.
struct SourceText {
  SourceText(Isolate* isolate, const cdn_source_t* src)
      : code(MakeString(isolate, src->code, src->code_len)),
        origin(isolate, MakeString(isolate, src->filename, src->filename_len),
               src->line_offset, src->column_offset) {}
  Local<String> code;
  v8::ScriptOrigin origin;
};

// Run a script bound to `context`, then the microtasks it queued (inside
// the same deadline), and copy the completion value out.
int RunBound(Isolate* isolate, Local<Context> context, TryCatch* try_catch,
             Local<v8::Script> script, cdn_value_t* out) {
  Local<Value> result;
  if (!script->Run(context).ToLocal(&result))
    return ExceptionToHost(isolate, context, try_catch, false, out);
  isolate->PerformMicrotaskCheckpoint();
  if (try_catch->HasTerminated() || isolate->IsExecutionTerminating())
    return CDN_ETERMINATED;
  return ToHost(isolate, context, result, out);
}

// The statuses of a run in which V8 may have set out_of_memory.
int Status(cdn_engine_isolate_t* iso, int err) {
  if (err != CDN_ETERMINATED || !iso->out_of_memory.exchange(false)) return err;
  // The termination was the heap limit's, so it is cancelled here; the
  // limit raised to let the run unwind goes back to what it was.
  iso->isolate->CancelTerminateExecution();
  RestoreHeapLimit(iso);
  return CDN_ENOMEM;
}

}  // namespace
}  // namespace cordon

using cordon::Callback;
using cordon::ContextRecord;
using cordon::ScriptRecord;

extern "C" int cdn_engine_context_new(cdn_engine_isolate_t* iso,
                                      const cdn_value_t* globals,
                                      const cdn_callback_t* callbacks,
                                      size_t ncallbacks,
                                      cdn_engine_context_t** out,
                                      cdn_value_t* err) {
  Isolate* isolate = iso->isolate;
  HandleScope handle_scope(isolate);
  auto* rec = new ContextRecord(iso);
  for (size_t i = 0; i < ncallbacks; i++) {
    rec->callbacks.push_back(
        std::make_unique<Callback>(Callback{iso, callbacks[i].cb}));
    iso->callbacks++;
  }
  *err = cdn_value_t{};
  Local<Context> context = Context::New(isolate);
  if (context.IsEmpty()) {
    delete rec;
    cordon::SetError(err, "Error", "could not create a context");
    return CDN_EINTERNAL;
  }
  Context::Scope context_scope(context);
  TryCatch try_catch(isolate);
  Local<Object> global = context->Global();

  if (globals->kind == CDN_VAL_BYTES) {
    Local<Value> v;
    Local<v8::Array> keys;
    bool ok = cordon::FromHost(isolate, context, globals, &v) &&
              v->IsObject() &&
              v.As<Object>()->GetOwnPropertyNames(context).ToLocal(&keys);
    for (uint32_t i = 0; ok && i < keys->Length(); i++) {
      Local<Value> key, val;
      ok = keys->Get(context, i).ToLocal(&key) &&
           v.As<Object>()->Get(context, key).ToLocal(&val) &&
           global->Set(context, key, val).FromMaybe(false);
    }
    if (!ok) {
      int e = cordon::ExceptionToHost(isolate, context, &try_catch, false, err);
      delete rec;
      return e == CDN_EEXCEPTION ? CDN_ECLONE : e;
    }
  }
  for (size_t i = 0; i < ncallbacks; i++) {
    Local<v8::Function> fn;
    Local<String> name =
        cordon::MakeString(isolate, callbacks[i].name, callbacks[i].name_len);
    if (!v8::Function::New(context, cordon::CallHost,
                           External::New(isolate, rec->callbacks[i].get()), 0,
                           v8::ConstructorBehavior::kThrow)
             .ToLocal(&fn)) {
      delete rec;
      cordon::SetError(err, "Error", "could not create a host function");
      return CDN_EINTERNAL;
    }
    fn->SetName(name);
    if (global->Set(context, name, fn).IsNothing()) {
      delete rec;
      cordon::SetError(err, "Error", "could not define a host function");
      return CDN_EINTERNAL;
    }
  }
  rec->context.Reset(isolate, context);
  *out = reinterpret_cast<cdn_engine_context_t*>(rec);
  return CDN_OK;
}

extern "C" void cdn_engine_context_release(cdn_engine_context_t* ctx) {
  auto* rec = reinterpret_cast<ContextRecord*>(ctx);
  rec->iso()->tasks->PostRelease(rec);
}

extern "C" cdn_engine_isolate_t* cdn_engine_context_isolate(
    cdn_engine_context_t* ctx) {
  return reinterpret_cast<ContextRecord*>(ctx)->iso();
}

extern "C" int cdn_engine_run(cdn_engine_context_t* ctx,
                              const cdn_source_t* src, cdn_value_t* out) {
  auto* rec = reinterpret_cast<ContextRecord*>(ctx);
  cdn_engine_isolate_t* iso = rec->iso();
  Isolate* isolate = iso->isolate;
  HandleScope handle_scope(isolate);
  Local<Context> context = rec->context.Get(isolate);
  Context::Scope context_scope(context);
  TryCatch try_catch(isolate);
  *out = cdn_value_t{};

  cordon::SourceText text(isolate, src);
  ScriptCompiler::Source source(text.code, text.origin);
  Local<v8::Script> script;
  if (!ScriptCompiler::Compile(context, &source).ToLocal(&script)) {
    return cordon::Status(
        iso, cordon::ExceptionToHost(isolate, context, &try_catch, true, out));
  }
  return cordon::Status(
      iso, cordon::RunBound(isolate, context, &try_catch, script, out));
}

extern "C" int cdn_engine_script_new(cdn_engine_isolate_t* iso,
                                     const cdn_source_t* src,
                                     cdn_engine_script_t** out,
                                     cdn_value_t* err) {
  Isolate* isolate = iso->isolate;
  HandleScope handle_scope(isolate);
  Local<Context> context = iso->internal_context.Get(isolate);
  Context::Scope context_scope(context);
  TryCatch try_catch(isolate);
  *err = cdn_value_t{};
  cordon::SourceText text(isolate, src);
  ScriptCompiler::Source source(text.code, text.origin);
  Local<v8::UnboundScript> script;
  if (!ScriptCompiler::CompileUnboundScript(isolate, &source)
           .ToLocal(&script)) {
    return cordon::Status(
        iso, cordon::ExceptionToHost(isolate, context, &try_catch, true, err));
  }
  auto* rec = new ScriptRecord(iso);
  rec->script.Reset(isolate, script);
  *out = reinterpret_cast<cdn_engine_script_t*>(rec);
  return CDN_OK;
}

extern "C" void cdn_engine_script_release(cdn_engine_script_t* script) {
  auto* rec = reinterpret_cast<ScriptRecord*>(script);
  rec->iso()->tasks->PostRelease(rec);
}

extern "C" cdn_engine_isolate_t* cdn_engine_script_isolate(
    cdn_engine_script_t* script) {
  return reinterpret_cast<ScriptRecord*>(script)->iso();
}

extern "C" int cdn_engine_script_run(cdn_engine_script_t* script,
                                     cdn_engine_context_t* ctx,
                                     cdn_value_t* out) {
  auto* srec = reinterpret_cast<ScriptRecord*>(script);
  auto* crec = reinterpret_cast<ContextRecord*>(ctx);
  cdn_engine_isolate_t* iso = crec->iso();
  Isolate* isolate = iso->isolate;
  HandleScope handle_scope(isolate);
  Local<Context> context = crec->context.Get(isolate);
  Context::Scope context_scope(context);
  TryCatch try_catch(isolate);
  *out = cdn_value_t{};
  Local<v8::Script> bound = srec->script.Get(isolate)->BindToCurrentContext();
  return cordon::Status(
      iso, cordon::RunBound(isolate, context, &try_catch, bound, out));
}
