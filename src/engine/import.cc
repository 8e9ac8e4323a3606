// import.cc: dynamic import() and ES modules, with the isolate lock held.
//
// Each compilation with an import callback gets a fresh Symbol as its
// host-defined option. The isolate keeps one WeakMap Symbol -> record,
// made in its internal context (user code never runs there, so nobody can
// patch WeakMap.prototype for it). The record, an object of that context,
// holds the referrer (the compiled function, script or module) in an
// internal field and the native ImportHost in another. V8 keeps the Symbol
// alive as long as any function of that compilation can still run, nested
// ones included, so the record and the host callback live exactly that
// long: no id -> record map, nothing keyed by filename, and the cycle
// referrer -> Symbol -> record -> referrer lies inside the sandbox heap,
// where its collector frees it (seed 000's leak and its use-after-free).
//
// V8 calls ImportDynamically with the Symbol; the host is handed the
// request (hooks->import) and answers later by settling a resolver.
// Modules are loaded by the host (lib/) with their static imports linked
// before instantiation, so V8's synchronous resolve callback only looks up
// what was linked.
#include <cstring>

#include "internal.h"

using v8::Context;
using v8::EscapableHandleScope;
using v8::External;
using v8::HandleScope;
using v8::Isolate;
using v8::Local;
using v8::MaybeLocal;
using v8::Object;
using v8::String;
using v8::TryCatch;
using v8::Value;

namespace cordon {

namespace {

constexpr int kReferrerField = 0;
constexpr int kHostField = 1;

// The isolate of a V8 callback (set with Isolate::SetData at creation).
cdn_engine_isolate_t* IsoOf(Isolate* isolate) {
  return static_cast<cdn_engine_isolate_t*>(isolate->GetData(0));
}

ModuleRecord* FindModule(cdn_engine_isolate_t* iso, Local<v8::Module> module) {
  auto range = iso->module_index.equal_range(module->GetIdentityHash());
  for (auto it = range.first; it != range.second; ++it) {
    if (it->second->module == module) return it->second;
  }
  return nullptr;
}

// The record of a sandbox collected: release the native half from the
// queue (host tokens are released on the lock holder's thread).
void OnRecordCollected(const v8::WeakCallbackInfo<ImportHost>& info) {
  ImportHost* host = info.GetParameter();
  host->record.Reset();
  host->iso()->tasks->PostRelease(host);
}

// The ImportHost filed under the host-defined options, if any.
ImportHost* LookupHost(cdn_engine_isolate_t* iso, Local<v8::Data> options,
                       Local<Object>* record) {
  Isolate* isolate = iso->isolate;
  if (options.IsEmpty() || !options->IsFixedArray()) return nullptr;
  Local<v8::PrimitiveArray> array = options.As<v8::PrimitiveArray>();
  if (array->Length() < 1) return nullptr;
  Local<v8::Primitive> key = array->Get(isolate, 0);
  if (!key->IsSymbol()) return nullptr;
  Local<Context> internal = iso->internal_context.Get(isolate);
  Local<Value> argv[] = {key};
  Local<Value> found;
  if (!iso->import_get.Get(isolate)
           ->Call(internal, iso->import_map.Get(isolate), 1, argv)
           .ToLocal(&found) ||
      !found->IsObject())
    return nullptr;
  *record = found.As<Object>();
  return static_cast<ImportHost*>(
      GetObjectPointer(*record, kHostField, kTagImportHost));
}

// A new engine record for the referrer of `record`, for the host to make a
// new handle from when it dropped its own.
void* NewReferrer(cdn_engine_isolate_t* iso, ImportHost* host,
                  Local<Object> record,
                  const std::shared_ptr<ContextLink>& link) {
  Isolate* isolate = iso->isolate;
  switch (host->kind) {
    case CDN_REFERRER_FUNCTION: {
      auto* rec = new FunctionRecord(iso, link);
      Local<v8::Function> fn = GetField<v8::Function>(record, kReferrerField);
      rec->fn.Reset(isolate, fn);
      String::Utf8Value name(isolate, fn->GetName());
      if (*name != nullptr) rec->name.assign(*name, name.length());
      return static_cast<Record*>(rec);
    }
    case CDN_REFERRER_SCRIPT: {
      Local<v8::UnboundScript> script =
          GetField<v8::UnboundScript>(record, kReferrerField);
      auto* rec = new ScriptRecord(iso);
      rec->script.Reset(isolate, script);
      return static_cast<Record*>(rec);
    }
    case CDN_REFERRER_MODULE: {
      ModuleRecord* m =
          FindModule(iso, GetField<v8::Module>(record, kReferrerField));
      return m != nullptr ? static_cast<Record*>(m) : nullptr;
    }
    default:
      return nullptr;
  }
}

Local<Object> Attributes(Isolate* isolate, Local<Context> context,
                         Local<v8::FixedArray> list, int stride) {
  Local<Object> attrs = Object::New(isolate);
  if (list.IsEmpty()) return attrs;
  for (int i = 0; i + 1 < list->Length(); i += stride) {
    Local<Value> k = FixedGet(list, context, i).As<Value>();
    Local<Value> v = FixedGet(list, context, i + 1).As<Value>();
    if (k->IsName() &&
        attrs->CreateDataProperty(context, k.As<v8::Name>(), v).IsNothing())
      break;
  }
  return attrs;
}

MaybeLocal<v8::Promise> ImportDynamically(Local<Context> context,
                                          Local<v8::Data> options,
                                          Local<Value> resource_name,
                                          Local<String> specifier,
                                          Local<v8::FixedArray> assertions) {
  Isolate* isolate = Isolate::GetCurrent();  // the context's
  cdn_engine_isolate_t* iso = IsoOf(isolate);
  EscapableHandleScope scope(isolate);
  Local<v8::Promise::Resolver> resolver;
  if (!v8::Promise::Resolver::New(context).ToLocal(&resolver))
    return MaybeLocal<v8::Promise>();
  auto* crec = static_cast<ContextRecord*>(
      GetContextPointer(context, kContextRecordSlot, kTagContextRecord));
  if (crec == nullptr) {
    // The host disposed this context; its code still ran (a late task).
    if (resolver
            ->Reject(context, v8::Exception::Error(String::NewFromUtf8Literal(
                                  isolate, "The context has been disposed")))
            .IsNothing())
      return MaybeLocal<v8::Promise>();
    return scope.Escape(resolver->GetPromise());
  }
  Local<Object> record;
  ImportHost* host = LookupHost(iso, options, &record);

  cdn_import_t req{};
  req.kind = host != nullptr ? host->kind : CDN_REFERRER_NONE;
  req.callback = host != nullptr ? host->callback : nullptr;
  req.handle = host != nullptr ? host->handle : nullptr;
  req.context_host = crec->host;
  if (host != nullptr)
    req.referrer = NewReferrer(iso, host, record, crec->link);
  if (ToHost(isolate, context, specifier, crec->link, &req.specifier) !=
          CDN_OK ||
      ToHost(isolate, context, Attributes(isolate, context, assertions, 2),
             crec->link, &req.attributes) != CDN_OK) {
    cdn_value_free(&req.specifier);
    cdn_value_free(&req.attributes);
    if (req.referrer != nullptr && req.kind != CDN_REFERRER_MODULE)
      cdn_engine_ref_release(req.referrer);
    return MaybeLocal<v8::Promise>();
  }
  auto* rrec = new ResolverRecord(iso, crec->link);
  rrec->resolver.Reset(isolate, resolver);
  req.resolver = reinterpret_cast<cdn_engine_resolver_t*>(rrec);
  {
    HostScope host(iso);
    iso->hooks.import(iso->hooks.data, &req);
  }
  cdn_value_free(&req.specifier);
  cdn_value_free(&req.attributes);
  return scope.Escape(resolver->GetPromise());
}

MaybeLocal<v8::Module> ResolveStatic(Local<Context> context,
                                     Local<String> specifier,
                                     Local<v8::FixedArray> assertions,
                                     Local<v8::Module> referrer) {
  Isolate* isolate = Isolate::GetCurrent();  // the context's
  ModuleRecord* rec = FindModule(IsoOf(isolate), referrer);
  String::Utf8Value spec(isolate, specifier);
  if (rec != nullptr && *spec != nullptr) {
    for (size_t i = 0; i < rec->specifiers.size(); i++) {
      if (rec->specifiers[i] == *spec && rec->resolved[i] != nullptr)
        return rec->resolved[i]->module.Get(isolate);
    }
  }
  isolate->ThrowException(v8::Exception::Error(String::Concat(
      isolate, String::NewFromUtf8Literal(isolate, "Cannot resolve module "),
      specifier)));
  return MaybeLocal<v8::Module>();
}

void InitImportMeta(Local<Context> context, Local<v8::Module> module,
                    Local<Object> meta) {
  Isolate* isolate = Isolate::GetCurrent();  // the context's
  ModuleRecord* rec = FindModule(IsoOf(isolate), module);
  if (rec == nullptr) return;
  Local<String> url;
  // With its length: a filename may hold NUL characters.
  if (String::NewFromUtf8(isolate, rec->filename.data(),
                          v8::NewStringType::kNormal,
                          static_cast<int>(rec->filename.size()))
          .ToLocal(&url) &&
      meta->CreateDataProperty(context,
                               String::NewFromUtf8Literal(isolate, "url"), url)
          .IsNothing())
    return;  // terminating
}

}  // namespace

ModuleRecord::ModuleRecord(cdn_engine_isolate_t* iso,
                           std::shared_ptr<ContextLink> l)
    : Record(iso), link(std::move(l)) {
  iso->modules++;
}

ModuleRecord::~ModuleRecord() {
  cdn_engine_isolate_t* i = iso();
  auto range = i->module_index.equal_range(hash);
  for (auto it = range.first; it != range.second; ++it) {
    if (it->second == this) {
      i->module_index.erase(it);
      break;
    }
  }
  module.Reset();
  i->modules--;
}

ImportHost::~ImportHost() {
  record.Reset();
  ReleaseHost();
  if (owner != nullptr) owner->imports.erase(this);
  iso()->import_hosts--;
}

void ImportHost::ReleaseHost() {
  if (callback != nullptr) iso()->hooks.release(iso()->hooks.data, callback);
  if (handle != nullptr) iso()->hooks.release(iso()->hooks.data, handle);
  callback = handle = nullptr;
}

void InitImports(cdn_engine_isolate_t* iso, Local<Context> internal) {
  Isolate* isolate = iso->isolate;
  isolate->SetData(0, iso);
  isolate->SetHostImportModuleDynamicallyCallback(ImportDynamically);
  isolate->SetHostInitializeImportMetaObjectCallback(InitImportMeta);
  Context::Scope scope(internal);
  Local<Object> global = internal->Global();
  Local<v8::Function> ctor =
      global->Get(internal, String::NewFromUtf8Literal(isolate, "WeakMap"))
          .ToLocalChecked()
          .As<v8::Function>();
  Local<Object> map = ctor->NewInstance(internal).ToLocalChecked();
  Local<Object> proto =
      ctor->Get(internal, String::NewFromUtf8Literal(isolate, "prototype"))
          .ToLocalChecked()
          .As<Object>();
  iso->import_map.Reset(isolate, map);
  iso->import_get.Reset(
      isolate, proto->Get(internal, String::NewFromUtf8Literal(isolate, "get"))
                   .ToLocalChecked()
                   .As<v8::Function>());
  iso->import_set.Reset(
      isolate, proto->Get(internal, String::NewFromUtf8Literal(isolate, "set"))
                   .ToLocalChecked()
                   .As<v8::Function>());
  iso->import_key.Reset(
      isolate, v8::Private::New(isolate, String::NewFromUtf8Literal(
                                             isolate, "cordon.importHost")));
  Local<v8::ObjectTemplate> t = v8::ObjectTemplate::New(isolate);
  t->SetInternalFieldCount(2);
  iso->import_template.Reset(isolate, t);
}

Local<v8::PrimitiveArray> NewImportOptions(Isolate* isolate,
                                           const cdn_source_t* src,
                                           Local<v8::Symbol>* symbol) {
  if (src->import_callback == nullptr) return Local<v8::PrimitiveArray>();
  *symbol = v8::Symbol::New(isolate);
  Local<v8::PrimitiveArray> options = v8::PrimitiveArray::New(isolate, 1);
  options->Set(isolate, 0, *symbol);
  return options;
}

void ReleaseImportTokens(cdn_engine_isolate_t* iso, const cdn_source_t* src) {
  if (src->import_callback != nullptr)
    iso->hooks.release(iso->hooks.data, src->import_callback);
  if (src->import_handle != nullptr)
    iso->hooks.release(iso->hooks.data, src->import_handle);
}

void AttachImport(cdn_engine_isolate_t* iso, Local<v8::Symbol> symbol,
                  const cdn_source_t* src, cdn_referrer_kind kind,
                  Local<Value> fn, Local<v8::UnboundScript> script,
                  Local<v8::Module> module, ContextRecord* owner) {
  Isolate* isolate = iso->isolate;
  if (src->import_callback == nullptr) {
    ReleaseImportTokens(iso, src);
    return;
  }
  HandleScope handle_scope(isolate);
  Local<Context> internal = iso->internal_context.Get(isolate);
  Context::Scope context_scope(internal);
  auto* host =
      new ImportHost(iso, src->import_callback, src->import_handle, kind);
  if (owner != nullptr) {
    host->owner = owner;
    owner->imports.insert(host);
  }
  Local<Object> record =
      iso->import_template.Get(isolate)->NewInstance(internal).ToLocalChecked();
  if (kind == CDN_REFERRER_FUNCTION)
    SetField(record, kReferrerField, fn);
  else if (kind == CDN_REFERRER_SCRIPT)
    SetField(record, kReferrerField, script);
  else
    SetField(record, kReferrerField, module);
  SetObjectPointer(record, kHostField, host, kTagImportHost);
  host->record.Reset(isolate, record);
  host->record.SetWeak(host, OnRecordCollected,
                       v8::WeakCallbackType::kParameter);
  Local<Value> argv[] = {symbol, record};
  if (iso->import_set.Get(isolate)
          ->Call(internal, iso->import_map.Get(isolate), 2, argv)
          .IsEmpty())
    return;  // terminating: the record dies with the compilation
  // The function carries its Symbol too, so that the host can find the
  // record from the function.
  if (kind == CDN_REFERRER_FUNCTION)
    if (fn.As<Object>()
            ->SetPrivate(internal, iso->import_key.Get(isolate), symbol)
            .IsNothing())
      return;
}

}  // namespace cordon

using cordon::ContextRecord;
using cordon::ModuleRecord;
using cordon::ResolverRecord;

extern "C" void cdn_engine_context_set_host(cdn_engine_context_t* ctx,
                                            void* host) {
  reinterpret_cast<ContextRecord*>(ctx)->host = host;
}

extern "C" int cdn_engine_module_new(cdn_engine_context_t* ctx,
                                     const cdn_source_t* src,
                                     cdn_engine_module_t** out,
                                     cdn_value_t* err) {
  auto* crec = reinterpret_cast<ContextRecord*>(ctx);
  cdn_engine_isolate_t* iso = crec->iso();
  Isolate* isolate = iso->isolate;
  cordon::Entry entry(isolate, crec->context);
  Local<Context> context = entry.context;
  TryCatch& try_catch = entry.try_catch;
  *err = cdn_value_t{};
  Local<v8::Symbol> symbol;
  Local<v8::PrimitiveArray> options =
      cordon::NewImportOptions(isolate, src, &symbol);
  Local<String> code =
      String::NewFromTwoByte(isolate, src->code, v8::NewStringType::kNormal,
                             static_cast<int>(src->code_len))
          .ToLocalChecked();
  Local<String> name =
      String::NewFromTwoByte(isolate, src->filename, v8::NewStringType::kNormal,
                             static_cast<int>(src->filename_len))
          .ToLocalChecked();
  v8::ScriptOrigin origin = cordon::MakeOrigin(
      isolate, name, src->line_offset, src->column_offset, true, options);
  v8::ScriptCompiler::Source source(code, origin);
  Local<v8::Module> module;
  if (!v8::ScriptCompiler::CompileModule(isolate, &source).ToLocal(&module)) {
    cordon::ReleaseImportTokens(iso, src);
    return cordon::ExceptionToHost(isolate, context, &try_catch, true, err);
  }
  auto* rec = new ModuleRecord(iso, crec->link);
  rec->module.Reset(isolate, module);
  rec->hash = module->GetIdentityHash();
  String::Utf8Value file(isolate, name);
  if (*file != nullptr) rec->filename.assign(*file, file.length());
  iso->module_index.emplace(rec->hash, rec);
  Local<v8::FixedArray> requests = module->GetModuleRequests();
  rec->resolved.assign(requests->Length(), nullptr);
  for (int i = 0; i < requests->Length(); i++) {
    Local<v8::ModuleRequest> r =
        cordon::FixedGet(requests, context, i).As<v8::ModuleRequest>();
    String::Utf8Value spec(isolate, r->GetSpecifier());
    rec->specifiers.emplace_back(*spec != nullptr ? *spec : "");
  }
  cordon::AttachImport(iso, symbol, src, CDN_REFERRER_MODULE, Local<Value>(),
                       Local<v8::UnboundScript>(), module, crec);
  *out =
      reinterpret_cast<cdn_engine_module_t*>(static_cast<cordon::Record*>(rec));
  return CDN_OK;
}

extern "C" int cdn_engine_module_requests(cdn_engine_module_t* m,
                                          cdn_value_t* out) {
  auto* rec = reinterpret_cast<ModuleRecord*>(m);
  Isolate* isolate = rec->iso()->isolate;
  HandleScope handle_scope(isolate);
  *out = cdn_value_t{};
  if (rec->link->rec == nullptr) return CDN_EDISPOSED;  // context disposed
  Local<Context> context = rec->link->rec->context.Get(isolate);
  Context::Scope context_scope(context);
  Local<v8::FixedArray> requests =
      rec->module.Get(isolate)->GetModuleRequests();
  Local<v8::Array> list = v8::Array::New(isolate, requests->Length());
  for (int i = 0; i < requests->Length(); i++) {
    Local<v8::ModuleRequest> r =
        cordon::FixedGet(requests, context, i).As<v8::ModuleRequest>();
    Local<Value> pair[] = {
        r->GetSpecifier(),
        cordon::Attributes(isolate, context, cordon::ImportAttributes(r), 3)};
    if (list->CreateDataProperty(context, static_cast<uint32_t>(i),
                                 v8::Array::New(isolate, pair, 2))
            .IsNothing())
      return CDN_ETERMINATED;
  }
  return cordon::ToHost(isolate, context, list, rec->link, out);
}

extern "C" void cdn_engine_module_link(cdn_engine_module_t* m, size_t index,
                                       cdn_engine_module_t* target) {
  auto* rec = reinterpret_cast<ModuleRecord*>(m);
  if (index < rec->resolved.size())
    rec->resolved[index] = reinterpret_cast<ModuleRecord*>(target);
}

extern "C" int cdn_engine_module_evaluate(cdn_engine_module_t* m,
                                          cdn_value_t* out) {
  auto* rec = reinterpret_cast<ModuleRecord*>(m);
  cdn_engine_isolate_t* iso = rec->iso();
  Isolate* isolate = iso->isolate;
  HandleScope handle_scope(isolate);
  *out = cdn_value_t{};
  if (rec->link->rec == nullptr) return CDN_EDISPOSED;
  Local<Context> context = rec->link->rec->context.Get(isolate);
  Context::Scope context_scope(context);
  TryCatch try_catch(isolate);
  Local<v8::Module> module = rec->module.Get(isolate);
  Local<Value> result;
  if (module->GetStatus() < v8::Module::kInstantiated &&
      !module->InstantiateModule(context, cordon::ResolveStatic)
           .FromMaybe(false)) {
    return cordon::ExceptionToHost(isolate, context, &try_catch, false, out);
  }
  if (!module->Evaluate(context).ToLocal(&result)) {
    return cordon::ExceptionToHost(isolate, context, &try_catch, false, out);
  }
  isolate->PerformMicrotaskCheckpoint();
  if (try_catch.HasTerminated() || isolate->IsExecutionTerminating())
    return CDN_ETERMINATED;
  return cordon::ToHost(isolate, context, result, rec->link, out);
}

extern "C" int cdn_engine_module_namespace(cdn_engine_module_t* m,
                                           cdn_value_t* out) {
  auto* rec = reinterpret_cast<ModuleRecord*>(m);
  cdn_engine_isolate_t* iso = rec->iso();
  Isolate* isolate = iso->isolate;
  *out = cdn_value_t{};
  if (rec->link->rec == nullptr) return CDN_EDISPOSED;
  cordon::Entry entry(isolate, rec->link->rec->context);
  Local<v8::Module> module = rec->module.Get(isolate);
  if (module->GetStatus() < v8::Module::kInstantiated) {
    cordon::SetError(out, "Error", "the module is not linked");
    return CDN_EEXCEPTION;
  }
  return cordon::ToHost(isolate, entry.context, module->GetModuleNamespace(),
                        rec->link, out);
}

extern "C" int cdn_engine_import_resolve(cdn_engine_resolver_t* r,
                                         cdn_engine_module_t* m) {
  auto* rrec = reinterpret_cast<ResolverRecord*>(r);
  auto* mrec = reinterpret_cast<ModuleRecord*>(m);
  cdn_engine_isolate_t* iso = rrec->iso();
  Isolate* isolate = iso->isolate;
  if (rrec->link->rec == nullptr) return CDN_EDISPOSED;
  cordon::Entry entry(isolate, rrec->link->rec->context);
  Local<Context> context = entry.context;
  TryCatch& try_catch = entry.try_catch;
  Local<v8::Module> module = mrec->module.Get(isolate);
  Local<v8::Promise::Resolver> resolver = rrec->resolver.Get(isolate);
  if (module->GetStatus() == v8::Module::kErrored) {
    if (resolver->Reject(context, module->GetException()).IsNothing())
      return CDN_ETERMINATED;
  } else if (module->GetStatus() < v8::Module::kEvaluated) {
    if (resolver
            ->Reject(context, v8::Exception::Error(String::NewFromUtf8Literal(
                                  isolate, "the module was not evaluated")))
            .IsNothing())
      return CDN_ETERMINATED;
  } else {
    if (resolver->Resolve(context, module->GetModuleNamespace()).IsNothing())
      return CDN_ETERMINATED;
  }
  isolate->PerformMicrotaskCheckpoint();
  if (try_catch.HasTerminated() || isolate->IsExecutionTerminating())
    return CDN_ETERMINATED;
  return CDN_OK;
}
