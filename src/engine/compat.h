// compat.h: every difference between the V8 and Node embedder APIs of the
// Node lines cordon supports (20: V8 11.3, 22: V8 12.4, 24: V8 13.6,
// 26: V8 14.6). Nothing else in src/engine/ tests a version: code that meets
// a difference calls the helper here. Included only by internal.h.
#ifndef CORDON_ENGINE_COMPAT_H_
#define CORDON_ENGINE_COMPAT_H_

#include <cstring>
#include <type_traits>

#include <node.h>
#include <node_version.h>
#include <v8-version.h>
#include <v8.h>

#define CDN_V8_AT_LEAST(major, minor) \
  (V8_MAJOR_VERSION > (major) ||      \
   (V8_MAJOR_VERSION == (major) && V8_MINOR_VERSION >= (minor)))

// v8::TaskRunner. V8 12 (Node 22) made PostTask and its siblings
// non-virtual-in-spirit wrappers that pass a SourceLocation to protected
// Post*Impl methods, and V8 13 (Node 24) removed the old virtuals: embedders
// override the Impl methods there. Node 20's V8 has only the old virtuals.
// A TaskRunner subclass names its overrides through these macros and
// forwards them to its own Post(task) / PostDelayed(task, delay).
#if CDN_V8_AT_LEAST(12, 4)
#define CDN_TASK_RUNNER_OVERRIDES                                              \
 protected:                                                                    \
  void PostTaskImpl(std::unique_ptr<v8::Task> task, const v8::SourceLocation&) \
      override {                                                               \
    Post(std::move(task));                                                     \
  }                                                                            \
  void PostNonNestableTaskImpl(std::unique_ptr<v8::Task> task,                 \
                               const v8::SourceLocation&) override {           \
    Post(std::move(task));                                                     \
  }                                                                            \
  void PostDelayedTaskImpl(std::unique_ptr<v8::Task> task, double delay,       \
                           const v8::SourceLocation&) override {               \
    PostDelayed(std::move(task), delay);                                       \
  }                                                                            \
  void PostNonNestableDelayedTaskImpl(std::unique_ptr<v8::Task> task,          \
                                      double delay, const v8::SourceLocation&) \
      override {                                                               \
    PostDelayed(std::move(task), delay);                                       \
  }                                                                            \
  void PostIdleTaskImpl(std::unique_ptr<v8::IdleTask>,                         \
                        const v8::SourceLocation&) override {}                 \
                                                                               \
 public:
#else
#define CDN_TASK_RUNNER_OVERRIDES                                     \
 public:                                                              \
  void PostTask(std::unique_ptr<v8::Task> task) override {            \
    Post(std::move(task));                                            \
  }                                                                   \
  void PostNonNestableTask(std::unique_ptr<v8::Task> task) override { \
    Post(std::move(task));                                            \
  }                                                                   \
  void PostDelayedTask(std::unique_ptr<v8::Task> task, double delay)  \
      override {                                                      \
    PostDelayed(std::move(task), delay);                              \
  }                                                                   \
  void PostNonNestableDelayedTask(std::unique_ptr<v8::Task> task,     \
                                  double delay) override {            \
    PostDelayed(std::move(task), delay);                              \
  }                                                                   \
  void PostIdleTask(std::unique_ptr<v8::IdleTask>) override {}
#endif

namespace cordon {

// v8::ScriptOrigin. V8 12 (Node 22) deprecated, and V8 13 (Node 24)
// removed, the constructor taking an Isolate* first.
inline v8::ScriptOrigin MakeOrigin(v8::Isolate* isolate,
                                   v8::Local<v8::Value> name, int line,
                                   int column, bool is_module,
                                   v8::Local<v8::Data> host_options) {
#if CDN_V8_AT_LEAST(12, 4)
  (void)isolate;
  return v8::ScriptOrigin(name, line, column, false, -1, v8::Local<v8::Value>(),
                          false, false, is_module, host_options);
#else
  return v8::ScriptOrigin(isolate, name, line, column, false, -1,
                          v8::Local<v8::Value>(), false, false, is_module,
                          host_options);
#endif
}

// Object internal fields. V8 12 (Node 22) made them hold any v8::Data, so
// a Module or UnboundScript (which are not Values) goes in directly; Node
// 20's V8 holds only Values there, plus Node core's escape hatch
// SetInternalFieldForNodeCore for exactly those two types, and reads them
// back as the Value-typed handle they are not.
template <typename T>
inline void SetField(v8::Local<v8::Object> object, int index,
                     v8::Local<T> value) {
#if CDN_V8_AT_LEAST(12, 4)
  object->SetInternalField(index, value);
#else
  if constexpr (std::is_base_of_v<v8::Value, T>) {
    object->SetInternalField(index, value);
  } else {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    object->SetInternalFieldForNodeCore(index, value);
#pragma GCC diagnostic pop
  }
#endif
}

template <typename T>
inline v8::Local<T> GetField(v8::Local<v8::Object> object, int index) {
#if CDN_V8_AT_LEAST(12, 4)
  return object->GetInternalField(index).As<T>();
#else
  v8::Local<v8::Value> value = object->GetInternalField(index);
  if constexpr (std::is_base_of_v<v8::Value, T>) {
    return value.As<T>();
  } else {
    v8::Local<T> out;
    static_assert(sizeof(out) == sizeof(value), "handle sizes");
    memcpy(static_cast<void*>(&out), &value, sizeof(out));
    return out;
  }
#endif
}

// A module request's `with { ... }` list. V8 12 (Node 22) renamed import
// assertions to import attributes; V8 13 (Node 24) deprecated the old name.
inline v8::Local<v8::FixedArray> ImportAttributes(
    v8::Local<v8::ModuleRequest> request) {
#if CDN_V8_AT_LEAST(12, 4)
  return request->GetImportAttributes();
#else
  return request->GetImportAssertions();
#endif
}

// Copying a string's characters out. V8 13 (Node 24) added the V2 writers
// and deprecated the old ones; V8 14 (Node 26) removed the old ones.
inline void WriteLatin1(v8::Isolate* isolate, v8::Local<v8::String> s,
                        uint8_t* out, int n) {
#if CDN_V8_AT_LEAST(13, 6)
  s->WriteOneByteV2(isolate, 0, static_cast<uint32_t>(n), out);
#else
  s->WriteOneByte(isolate, out, 0, n, v8::String::NO_NULL_TERMINATION);
#endif
}

inline void WriteUtf16(v8::Isolate* isolate, v8::Local<v8::String> s,
                       uint16_t* out, int n) {
#if CDN_V8_AT_LEAST(13, 6)
  s->WriteV2(isolate, 0, static_cast<uint32_t>(n), out);
#else
  s->Write(isolate, out, 0, n, v8::String::NO_NULL_TERMINATION);
#endif
}

// Reading a FixedArray (module requests, import attributes). V8 14 (Node
// 26) dropped the Context argument.
inline v8::Local<v8::Data> FixedGet(v8::Local<v8::FixedArray> list,
                                    v8::Local<v8::Context> context, int i) {
#if CDN_V8_AT_LEAST(14, 0)
  (void)context;
  return list->Get(i);
#else
  return list->Get(context, i);
#endif
}

// An object's [[Prototype]]. V8 13 (Node 24) deprecated, and V8 14 (Node
// 26) removed, GetPrototype (which could expose a global's hidden
// prototype) in favour of GetPrototypeV2.
inline v8::Local<v8::Value> PrototypeOf(v8::Local<v8::Object> object) {
#if CDN_V8_AT_LEAST(13, 6)
  return object->GetPrototypeV2();
#else
  return object->GetPrototype();
#endif
}

// Set an object's [[Prototype]]; the same split as PrototypeOf.
inline v8::Maybe<bool> SetPrototypeOf(v8::Local<v8::Context> context,
                                      v8::Local<v8::Object> object,
                                      v8::Local<v8::Value> proto) {
#if CDN_V8_AT_LEAST(13, 6)
  return object->SetPrototypeV2(context, proto);
#else
  return object->SetPrototype(context, proto);
#endif
}

// Raw pointers V8 keeps for cordon: in a context's embedder data, an
// object's internal field, a v8::External. V8 14 (Node 26) tags each with a
// type (the V8 sandbox checks the tag on the way out) and deprecated the
// untagged forms; older lines have no tags. One tag per C++ type stored.
enum PointerTag : uint16_t {
  kTagContextRecord = 1,
  kTagImportHost = 2,
  kTagCallback = 3,
  kTagPromiseCell = 4,
};

#if CDN_V8_AT_LEAST(14, 0)
#define CDN_TAG_ARG(tag) , static_cast<uint16_t>(tag)
#else
#define CDN_TAG_ARG(tag)
#endif

inline void SetContextPointer(v8::Local<v8::Context> context, int slot, void* p,
                              PointerTag tag) {
  context->SetAlignedPointerInEmbedderData(slot, p CDN_TAG_ARG(tag));
}

inline void* GetContextPointer(v8::Local<v8::Context> context, int slot,
                               PointerTag tag) {
  return context->GetAlignedPointerFromEmbedderData(slot CDN_TAG_ARG(tag));
}

inline void SetObjectPointer(v8::Local<v8::Object> object, int index, void* p,
                             PointerTag tag) {
  object->SetAlignedPointerInInternalField(index, p CDN_TAG_ARG(tag));
}

inline void* GetObjectPointer(v8::Local<v8::Object> object, int index,
                              PointerTag tag) {
  return object->GetAlignedPointerFromInternalField(index CDN_TAG_ARG(tag));
}

inline v8::Local<v8::External> NewExternal(v8::Isolate* isolate, void* p,
                                           PointerTag tag) {
  return v8::External::New(isolate, p CDN_TAG_ARG(tag));
}

inline void* ExternalValue(v8::Local<v8::Value> data, PointerTag tag) {
#if CDN_V8_AT_LEAST(14, 0)
  return data.As<v8::External>()->Value(static_cast<uint16_t>(tag));
#else
  (void)tag;
  return data.As<v8::External>()->Value();
#endif
}

// Tearing down an isolate registered with Node's platform. Up to Node 22 the
// platform wants UnregisterIsolate right before Isolate::Dispose (as Node
// does for its workers). From Node 24 V8 posts tasks while disposing, which
// must still find the isolate registered; the platform offers
// DisposeIsolate, which deinitialises, unregisters and frees in that order
// (nodejs/node#30846 for why the address must not be reused while
// registered). No lock may be held.
inline void DisposeIsolate(node::MultiIsolatePlatform* platform,
                           v8::Isolate* isolate) {
#if NODE_MAJOR_VERSION >= 24
  platform->DisposeIsolate(isolate);
#else
  platform->UnregisterIsolate(isolate);
  isolate->Dispose();
#endif
}

// Memory outside the heap that the sandbox's collector should feel. V8 13
// (Node 24) marks AdjustAmountOfExternalAllocatedMemory deprecated soon in
// favour of ExternalMemoryAccounter, an object per owner; it is still there
// on every line we support, and one counter suits records made and freed
// under the lock.
inline void AdjustExternal(v8::Isolate* isolate, int64_t bytes) {
  isolate->AdjustAmountOfExternalAllocatedMemory(bytes);
}

// WebAssembly memories in V8's external memory. V8 14 (Node 26) no longer
// counts them there (v8.getHeapStatistics() in plain Node 26 shows no
// change for 320 MB of memories; Node 24 shows 320 MB): wasm.cc reports
// them itself on those lines (and counts what it reported, since V8 14's
// statistics leave such reports out too: wasm.cc, ExternalMemory).
constexpr bool kV8CountsWasmMemory = !CDN_V8_AT_LEAST(14, 0);

}  // namespace cordon

#endif  // CORDON_ENGINE_COMPAT_H_
