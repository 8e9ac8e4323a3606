// value.cc: values across the isolate boundary.
//
// Primitives cross as C values; everything else as bytes in V8's
// serialisation format. Into the sandbox, ArrayBufferViews arrive as host
// objects in the layout Node's v8.Serializer writes (type index, byte
// length, raw bytes); out of it they are written natively, so that a
// buffer shared by many views is copied once.
//
// Functions travel as references: host objects of type kFunctionRef (13)
// holding an index into the value's refs. Out of the sandbox, V8's
// serialiser refuses functions, so a value that holds some is first copied
// by a Shadower: plain objects and arrays are rebuilt with each function
// replaced by a placeholder API object, which the serialiser hands to
// WriteHostObject. (Getters of such a value may so run twice.) Into the
// sandbox, lib/ writes the references itself, with the host function's name
// and length.
#include <unordered_map>
#include <cstdlib>
#include <cstring>
#include <string>

#include "internal.h"

using v8::Context;
using v8::Isolate;
using v8::Local;
using v8::Maybe;
using v8::MaybeLocal;
using v8::Object;
using v8::String;
using v8::TryCatch;
using v8::Value;

namespace cordon {
namespace {

// Node's type indices (lib/v8.js, arrayBufferViewTypes); 10 is Buffer.
enum ViewType : uint32_t {
  kInt8 = 0,
  kUint8,
  kUint8Clamped,
  kInt16,
  kUint16,
  kInt32,
  kUint32,
  kFloat32,
  kFloat64,
  kDataView,
  kBuffer,
  kBigInt64,
  kBigUint64,
  kViewTypeCount,
  kFunctionRef = 13,
  kPromiseRef = 14
};

// Deeper values are refused rather than risk the native stack.
constexpr int kMaxShadowDepth = 2000;

char* DupString(const char* s, size_t n) {
  char* out = static_cast<char*>(malloc(n + 1));
  if (out == nullptr) abort();
  memcpy(out, s, n);
  out[n] = '\0';
  return out;
}

char* ToUtf8(Isolate* isolate, Local<Value> v) {
  String::Utf8Value utf8(isolate, v);
  if (*utf8 == nullptr) return DupString("", 0);
  return DupString(*utf8, utf8.length());
}

// An ArrayBuffer holding a copy of `bytes`, allocated through the
// isolate's limited allocator: ArrayBuffer::New(isolate, length) would
// abort the process when the allocator refuses. A refusal throws a
// RangeError, which the run reports as the memory limit.
MaybeLocal<v8::ArrayBuffer> NewBuffer(Isolate* isolate, const void* bytes,
                                      size_t length) {
  if (length == 0) return v8::ArrayBuffer::New(isolate, 0);
  auto* iso = static_cast<cdn_engine_isolate_t*>(isolate->GetData(0));
  void* data = iso->allocator->AllocateUninitialized(length);
  if (data == nullptr) {
    isolate->ThrowException(
        v8::Exception::RangeError(String::NewFromUtf8Literal(
            isolate,
            "Array buffer allocation failed: the sandbox memory limit")));
    return MaybeLocal<v8::ArrayBuffer>();
  }
  memcpy(data, bytes, length);
  std::unique_ptr<v8::BackingStore> store = v8::ArrayBuffer::NewBackingStore(
      data, length,
      [](void* d, size_t len, void* allocator) {
        static_cast<LimitedAllocator*>(allocator)->Free(d, len);
      },
      iso->allocator.get());
  return v8::ArrayBuffer::New(isolate, std::move(store));
}

class Serializer final : public v8::ValueSerializer::Delegate {
 public:
  explicit Serializer(Isolate* isolate)
      : isolate_(isolate), ser_(isolate, this) {
    // Views are written natively, after the buffer they view, which is
    // written once however many views share it (as structured clone
    // does): written as host objects, each would copy its own bytes.
  }

  v8::ValueSerializer* ser() {
    return &ser_;
  }
  const std::string& reason() const {
    return reason_;
  }

  void ThrowDataCloneError(Local<String> message) override {
    String::Utf8Value utf8(isolate_, message);
    reason_ = *utf8 != nullptr ? *utf8 : "value could not be cloned";
    isolate_->ThrowException(v8::Exception::TypeError(message));
  }

  // Shared memory and compiled wasm modules would be shared, not copied:
  // refused, with the reason the host sees (V8's defaults throw an
  // uncoded Error, or write a transfer id nothing can read).
  Maybe<uint32_t> GetSharedArrayBufferId(
      Isolate* isolate, Local<v8::SharedArrayBuffer> shared) override {
    (void)shared;
    ThrowDataCloneError(String::NewFromUtf8Literal(
        isolate, "a SharedArrayBuffer cannot be copied across the boundary"));
    return v8::Nothing<uint32_t>();
  }

  Maybe<uint32_t> GetWasmModuleTransferId(
      Isolate* isolate, Local<v8::WasmModuleObject> module) override {
    (void)module;
    ThrowDataCloneError(String::NewFromUtf8Literal(
        isolate, "a WebAssembly.Module cannot be copied across the boundary"));
    return v8::Nothing<uint32_t>();
  }

  Maybe<bool> WriteHostObject(Isolate* isolate, Local<Object> object) override {
    if (object->InternalFieldCount() == 1) {
      // A function placeholder made by a Shadower: sandbox code cannot make
      // API objects, so nothing else has an internal field.
      uint32_t tag = GetField<v8::Uint32>(object, 0)->Value();
      ser_.WriteUint32((tag & 1) ? kPromiseRef : kFunctionRef);
      ser_.WriteUint32(tag >> 1);
      return v8::Just(true);
    }
    ThrowDataCloneError(String::NewFromUtf8Literal(
        isolate, "a host object could not be cloned"));
    return v8::Nothing<bool>();
  }

  void* ReallocateBufferMemory(void* old, size_t size,
                               size_t* actual) override {
    void* p = realloc(old, size);
    *actual = p != nullptr ? size : 0;
    return p;
  }

  void FreeBufferMemory(void* buffer) override {
    free(buffer);
  }

 private:
  Isolate* isolate_;
  v8::ValueSerializer ser_;
  std::string reason_;
};

class Deserializer final : public v8::ValueDeserializer::Delegate {
 public:
  Deserializer(Isolate* isolate, Local<Context> context, const uint8_t* data,
               size_t size, cdn_value_t* in,
               const std::shared_ptr<ContextLink>* link)
      : des_(isolate, data, size, this),
        context_(context),
        in_(in),
        link_(link),
        made_(in != nullptr ? in->nrefs : 0) {}

  v8::ValueDeserializer* des() {
    return &des_;
  }

  // The function for host callback `index`: made once, so that one host
  // function is one sandbox function within a value.
  MaybeLocal<Object> ReadFunctionRef(Isolate* isolate) {
    uint32_t index, length, name_len;
    const void* name = nullptr;
    if (!des_.ReadUint32(&index) || !des_.ReadUint32(&length) ||
        !des_.ReadUint32(&name_len) ||
        (name_len > 0 && !des_.ReadRawBytes(name_len, &name)) ||
        in_ == nullptr || index >= in_->nrefs || link_ == nullptr) {
      return Malformed(isolate);
    }
    if (!made_[index].IsEmpty()) return made_[index];
    void* cb = in_->refs[index];
    if (cb == nullptr) return Malformed(isolate);
    in_->refs[index] = nullptr;  // the callback record owns it now
    Local<v8::Function> fn;
    std::string n(static_cast<const char*>(name), name_len);
    if (!NewCallbackFunction(context_, cb, *link_, n, static_cast<int>(length))
             .ToLocal(&fn))
      return MaybeLocal<Object>();
    made_[index] = fn;
    return fn;
  }

  // The sandbox promise for host promise `index`, made once.
  MaybeLocal<Object> ReadPromiseRef(Isolate* isolate) {
    uint32_t index;
    if (!des_.ReadUint32(&index) || in_ == nullptr || index >= in_->nrefs ||
        link_ == nullptr)
      return Malformed(isolate);
    if (!made_[index].IsEmpty()) return made_[index];
    void* token = in_->refs[index];
    if (token == nullptr) return Malformed(isolate);
    in_->refs[index] = nullptr;  // adopted by the resolver's host side
    Local<v8::Promise> promise;
    if (!AdoptHostPromise(context_, token, *link_).ToLocal(&promise))
      return MaybeLocal<Object>();
    made_[index] = promise;
    return promise;
  }

  MaybeLocal<Object> Malformed(Isolate* isolate) {
    isolate->ThrowException(v8::Exception::TypeError(
        String::NewFromUtf8Literal(isolate, "malformed serialised value")));
    return MaybeLocal<Object>();
  }

  MaybeLocal<Object> ReadHostObject(Isolate* isolate) override {
    uint32_t type, length;
    const void* bytes = nullptr;
    if (!des_.ReadUint32(&type)) return Malformed(isolate);
    if (type == kFunctionRef) return ReadFunctionRef(isolate);
    if (type == kPromiseRef) return ReadPromiseRef(isolate);
    if (!des_.ReadUint32(&length) || type >= kViewTypeCount ||
        (length > 0 && !des_.ReadRawBytes(length, &bytes))) {
      isolate->ThrowException(v8::Exception::TypeError(
          String::NewFromUtf8Literal(isolate, "malformed typed array data")));
      return MaybeLocal<Object>();
    }
    Local<v8::ArrayBuffer> ab;
    if (!NewBuffer(isolate, bytes, length).ToLocal(&ab))
      return MaybeLocal<Object>();
    static const size_t kSizes[] = {1, 1, 1, 2, 2, 4, 4, 4, 8, 1, 1, 8, 8};
    if (length % kSizes[type] != 0) {
      isolate->ThrowException(
          v8::Exception::RangeError(String::NewFromUtf8Literal(
              isolate,
              "typed array length is not a multiple of its element size")));
      return MaybeLocal<Object>();
    }
    size_t n = length / kSizes[type];
    switch (type) {
      case kInt8:
        return v8::Int8Array::New(ab, 0, n);
      case kUint8:
      case kBuffer:
        return v8::Uint8Array::New(ab, 0, n);
      case kUint8Clamped:
        return v8::Uint8ClampedArray::New(ab, 0, n);
      case kInt16:
        return v8::Int16Array::New(ab, 0, n);
      case kUint16:
        return v8::Uint16Array::New(ab, 0, n);
      case kInt32:
        return v8::Int32Array::New(ab, 0, n);
      case kUint32:
        return v8::Uint32Array::New(ab, 0, n);
      case kFloat32:
        return v8::Float32Array::New(ab, 0, n);
      case kFloat64:
        return v8::Float64Array::New(ab, 0, n);
      case kBigInt64:
        return v8::BigInt64Array::New(ab, 0, n);
      case kBigUint64:
        return v8::BigUint64Array::New(ab, 0, n);
      default:
        return v8::DataView::New(ab, 0, length);
    }
  }

 private:
  v8::ValueDeserializer des_;
  Local<Context> context_;
  cdn_value_t* in_;
  const std::shared_ptr<ContextLink>* link_;
  std::vector<Local<Object>> made_;
};

// A copy of a value in which functions are placeholders (see the top).
class Shadower {
 public:
  Shadower(Isolate* isolate, Local<Context> context,
           Local<v8::ObjectTemplate> placeholder)
      : isolate_(isolate),
        context_(context),
        seen_(v8::Map::New(isolate)),
        template_(placeholder) {}

  // What the placeholders stand for, by index: functions and promises.
  std::vector<Local<Object>>& refs() {
    return refs_;
  }

  MaybeLocal<Value> Copy(Local<Value> value, int depth) {
    if (!value->IsObject()) return value;
    if (depth > kMaxShadowDepth) {
      isolate_->ThrowException(
          v8::Exception::RangeError(String::NewFromUtf8Literal(
              isolate_, "the value is nested too deeply")));
      return MaybeLocal<Value>();
    }
    Local<Value> known;
    if (!seen_->Get(context_, value).ToLocal(&known))
      return MaybeLocal<Value>();
    if (!known->IsUndefined()) return known;
    if (value->IsFunction() || value->IsPromise())
      return Placeholder(value.As<Object>());
    if (value->IsArray()) return CopyArray(value.As<v8::Array>(), depth);
    if (value->IsModuleNamespaceObject() || IsPlain(value.As<Object>()))
      return CopyObject(value.As<Object>(), depth);
    return value;  // the serialiser's business
  }

 private:
  // A plain object: made by an object literal or Object.create(null).
  static bool IsPlain(Local<Object> obj) {
    if (obj->IsProxy() || obj->IsPromise() || obj->IsArrayBufferView() ||
        obj->IsArrayBuffer() || obj->IsDate() || obj->IsRegExp() ||
        obj->IsMap() || obj->IsSet() || obj->IsNativeError() ||
        obj->IsBooleanObject() || obj->IsNumberObject() ||
        obj->IsStringObject() || obj->IsBigIntObject() ||
        obj->IsSymbolObject() || obj->IsWeakMap() || obj->IsWeakSet())
      return false;
    Local<Value> proto = PrototypeOf(obj);
    return proto->IsNull() ||
           (proto->IsObject() && PrototypeOf(proto.As<Object>())->IsNull());
  }

  // The internal field holds index * 2 + (1 for a promise).
  MaybeLocal<Value> Placeholder(Local<Object> target) {
    Local<Object> ph;
    if (!template_->NewInstance(context_).ToLocal(&ph))
      return MaybeLocal<Value>();
    uint32_t tag =
        static_cast<uint32_t>(refs_.size()) * 2 + (target->IsPromise() ? 1 : 0);
    ph->SetInternalField(0, v8::Integer::NewFromUnsigned(isolate_, tag));
    refs_.push_back(target);
    if (seen_->Set(context_, target, ph).IsEmpty()) return MaybeLocal<Value>();
    return ph;
  }

  MaybeLocal<Value> CopyArray(Local<v8::Array> array, int depth) {
    uint32_t n = array->Length();
    Local<v8::Array> copy = v8::Array::New(isolate_, static_cast<int>(n));
    if (seen_->Set(context_, array, copy).IsEmpty()) return MaybeLocal<Value>();
    for (uint32_t i = 0; i < n; i++) {
      Local<Value> v, c;
      if (!array->Get(context_, i).ToLocal(&v) ||
          !Copy(v, depth + 1).ToLocal(&c) ||
          // Not Set: an index setter on Array.prototype would be handed
          // the copy's placeholders.
          copy->CreateDataProperty(context_, i, c).IsNothing())
        return MaybeLocal<Value>();
    }
    return copy;
  }

  // Own enumerable string-keyed properties, as data properties.
  MaybeLocal<Value> CopyObject(Local<Object> obj, int depth) {
    Local<Object> copy = Object::New(isolate_);
    Local<v8::Array> keys;
    if (seen_->Set(context_, obj, copy).IsEmpty() ||
        !obj->GetOwnPropertyNames(context_).ToLocal(&keys))
      return MaybeLocal<Value>();
    for (uint32_t i = 0; i < keys->Length(); i++) {
      Local<Value> key, v, c;
      if (!keys->Get(context_, i).ToLocal(&key) ||
          !obj->Get(context_, key).ToLocal(&v) ||
          !Copy(v, depth + 1).ToLocal(&c) ||
          copy->CreateDataProperty(context_, key.As<v8::Name>(), c).IsNothing())
        return MaybeLocal<Value>();
    }
    return copy;
  }

  Isolate* isolate_;
  Local<Context> context_;
  Local<v8::Map> seen_;
  Local<v8::ObjectTemplate> template_;
  std::vector<Local<Object>> refs_;
};

// A short description of a value's type for error messages.
const char* TypeName(Local<Value> v) {
  if (v->IsFunction()) return "function";
  if (v->IsSymbol()) return "symbol";
  if (v->IsPromise()) return "Promise";
  if (v->IsProxy()) return "Proxy";
  if (v->IsWeakMap() || v->IsWeakSet()) return "WeakMap/WeakSet";
  if (v->IsSharedArrayBuffer()) return "SharedArrayBuffer";
  return "object";
}

}  // namespace

// A function's own property `key` when it is a plain data property (no
// getter or proxy trap runs); empty otherwise.
static Local<Value> OwnDataProperty(Isolate* isolate, Local<Context> context,
                                    Local<v8::Function> fn, const char* key) {
  if (fn->IsProxy()) return Local<Value>();
  TryCatch ignore(isolate);
  Local<String> k, value_key = String::NewFromUtf8Literal(isolate, "value");
  Local<Value> desc, value;
  if (!String::NewFromUtf8(isolate, key).ToLocal(&k) ||
      !fn->GetOwnPropertyDescriptor(context, k).ToLocal(&desc) ||
      !desc->IsObject() ||
      !desc.As<Object>()->HasOwnProperty(context, value_key).FromMaybe(false) ||
      !desc.As<Object>()->Get(context, value_key).ToLocal(&value))
    return Local<Value>();
  return value;
}

// Its `length`, clamped: it only describes the host proxy.
static int FunctionLength(Isolate* isolate, Local<Context> context,
                          Local<v8::Function> fn) {
  Local<Value> length = OwnDataProperty(isolate, context, fn, "length");
  if (length.IsEmpty() || !length->IsNumber()) return 0;
  double l = length.As<v8::Number>()->Value();
  return l >= 0 && l <= 65535 ? static_cast<int>(l) : 0;
}

// Its `name`: the own data property (computed method names live only
// there), else what V8 compiled it with.
static Local<Value> FunctionName(Isolate* isolate, Local<Context> context,
                                 Local<v8::Function> fn) {
  Local<Value> name = OwnDataProperty(isolate, context, fn, "name");
  return !name.IsEmpty() && name->IsString() ? name : fn->GetName();
}

// Records for the functions and promises a value carries out, in its refs.
static void TakeRefs(Isolate* isolate, Local<Context> context,
                     const std::vector<Local<Object>>& refs,
                     const std::shared_ptr<ContextLink>& link,
                     cdn_value_t* out) {
  cdn_engine_isolate_t* iso = link->rec->iso();
  out->refs = static_cast<void**>(calloc(refs.size(), sizeof(void*)));
  if (out->refs == nullptr) abort();
  out->nrefs = refs.size();
  out->refs_out = 1;
  for (size_t i = 0; i < refs.size(); i++) {
    if (refs[i]->IsPromise()) {
      Record* p =
          WatchPromise(isolate, context, refs[i].As<v8::Promise>(), link);
      out->refs[i] = p;
      continue;
    }
    auto* rec = new FunctionRecord(iso, link);
    Local<v8::Function> fn = refs[i].As<v8::Function>();
    rec->fn.Reset(isolate, fn);
    String::Utf8Value name(isolate, FunctionName(isolate, context, fn));
    if (*name != nullptr) rec->name.assign(*name, name.length());
    rec->length = FunctionLength(isolate, context, fn);
    out->refs[i] = static_cast<Record*>(rec);
  }
}

// Objects leave in V8's format; those holding functions through a shadow
// copy whose placeholders become function references.
static int SerializeObject(Isolate* isolate, Local<Context> context,
                           Local<Value> value,
                           const std::shared_ptr<ContextLink>& link,
                           cdn_value_t* out) {
  TryCatch try_catch(isolate);
  auto s = std::make_unique<Serializer>(isolate);
  s->ser()->WriteHeader();
  bool ok = s->ser()->WriteValue(context, value).FromMaybe(false);
  if (!ok && s->reason().empty() && try_catch.HasCaught() &&
      !try_catch.HasTerminated()) {
    // Sandbox code (a getter, a proxy trap) threw while being copied: that
    // exception is the outcome, as if the run had thrown it.
    int err = ExceptionToHost(isolate, context, &try_catch, false, out);
    return err == CDN_EEXCEPTION ? CDN_EEXCEPTION : err;
  }
  std::vector<Local<Object>> refs;
  if (!ok && !try_catch.HasTerminated() && link && link->rec != nullptr) {
    try_catch.Reset();
    cdn_engine_isolate_t* iso = link->rec->iso();
    if (iso->placeholder.IsEmpty()) {
      Local<v8::ObjectTemplate> t = v8::ObjectTemplate::New(isolate);
      t->SetInternalFieldCount(1);
      iso->placeholder.Reset(isolate, t);
    }
    Shadower shadow(isolate, context, iso->placeholder.Get(isolate));
    Local<Value> copy;
    // Refused once: serialise the copy (functions and promises as
    // references, module namespaces as plain objects).
    if (shadow.Copy(value, 0).ToLocal(&copy)) {
      s = std::make_unique<Serializer>(isolate);
      s->ser()->WriteHeader();
      ok = s->ser()->WriteValue(context, copy).FromMaybe(false);
      refs = std::move(shadow.refs());
    } else if (try_catch.HasCaught() && !try_catch.HasTerminated()) {
      // A getter threw while copying, or the value is nested too deeply.
      return ExceptionToHost(isolate, context, &try_catch, false, out);
    }
  }
  if (!ok) {
    if (try_catch.HasTerminated() || isolate->IsExecutionTerminating())
      return CDN_ETERMINATED;
    std::string reason = "A value of type ";
    reason += TypeName(value);
    reason += " cannot be copied out of the sandbox";
    if (!s->reason().empty()) reason += ": " + s->reason();
    SetError(out, "TypeError", reason.c_str());
    return CDN_ECLONE;
  }
  if (isolate->IsExecutionTerminating()) return CDN_ETERMINATED;
  std::pair<uint8_t*, size_t> buf = s->ser()->Release();
  out->kind = CDN_VAL_BYTES;
  out->u.bytes = buf.first;
  out->len = buf.second;
  if (!refs.empty()) TakeRefs(isolate, context, refs, link, out);
  return CDN_OK;
}

void ReleaseRefs(cdn_engine_isolate_t* iso, cdn_value_t* v) {
  for (size_t i = 0; i < v->nrefs; i++) {
    if (v->refs[i] == nullptr) continue;
    iso->hooks.release(iso->hooks.data, v->refs[i]);
    v->refs[i] = nullptr;
  }
}

void SetError(cdn_value_t* out, const char* name, const char* message) {
  cdn_value_free(out);
  out->kind = CDN_VAL_ERROR;
  out->name = DupString(name, strlen(name));
  out->message = DupString(message, strlen(message));
}

int ToHost(Isolate* isolate, Local<Context> context, Local<Value> value,
           const std::shared_ptr<ContextLink>& link, cdn_value_t* out) {
  *out = cdn_value_t{};
  if (value->IsUndefined()) {
    out->kind = CDN_VAL_UNDEFINED;
  } else if (value->IsNull()) {
    out->kind = CDN_VAL_NULL;
  } else if (value->IsBoolean()) {
    out->kind = CDN_VAL_BOOL;
    out->boolean = value->IsTrue();
  } else if (value->IsNumber()) {
    out->kind = CDN_VAL_NUMBER;
    out->number = value.As<v8::Number>()->Value();
  } else if (value->IsString()) {
    Local<String> s = value.As<String>();
    int n = s->Length();
    if (s->IsOneByte()) {
      out->kind = CDN_VAL_LATIN1;
      out->u.str8 = static_cast<uint8_t*>(malloc(n > 0 ? n : 1));
      if (out->u.str8 == nullptr) abort();
      WriteLatin1(isolate, s, out->u.str8, n);
    } else {
      out->kind = CDN_VAL_UTF16;
      out->u.str16 =
          static_cast<uint16_t*>(malloc((n > 0 ? n : 1) * sizeof(uint16_t)));
      if (out->u.str16 == nullptr) abort();
      WriteUtf16(isolate, s, out->u.str16, n);
    }
    out->len = static_cast<size_t>(n);
  } else if ((value->IsFunction() || value->IsPromise()) && link &&
             link->rec != nullptr) {
    // A function or promise itself: a reference, with no serialisation.
    std::vector<Local<Object>> refs{value.As<Object>()};
    TakeRefs(isolate, context, refs, link, out);
    out->kind = CDN_VAL_REF;
  } else {
    return SerializeObject(isolate, context, value, link, out);
  }
  return CDN_OK;
}

static bool FromHostValue(Isolate* isolate, Local<Context> context,
                          cdn_value_t* in,
                          const std::shared_ptr<ContextLink>& link,
                          Local<Value>* out);

bool FromHost(Isolate* isolate, Local<Context> context, cdn_value_t* in,
              const std::shared_ptr<ContextLink>& link, Local<Value>* out) {
  bool ok = FromHostValue(isolate, context, in, link, out);
  if (in->nrefs > 0) ReleaseRefs(link->rec->iso(), in);
  return ok;
}

static bool FromHostValue(Isolate* isolate, Local<Context> context,
                          cdn_value_t* in,
                          const std::shared_ptr<ContextLink>& link,
                          Local<Value>* out) {
  switch (in->kind) {
    case CDN_VAL_UNDEFINED:
      *out = v8::Undefined(isolate);
      return true;
    case CDN_VAL_NULL:
      *out = v8::Null(isolate);
      return true;
    case CDN_VAL_BOOL:
      *out = v8::Boolean::New(isolate, in->boolean != 0);
      return true;
    case CDN_VAL_NUMBER:
      *out = v8::Number::New(isolate, in->number);
      return true;
    case CDN_VAL_LATIN1: {
      Local<String> s;
      if (!String::NewFromOneByte(isolate, in->u.str8,
                                  v8::NewStringType::kNormal,
                                  static_cast<int>(in->len))
               .ToLocal(&s))
        return false;
      *out = s;
      return true;
    }
    case CDN_VAL_UTF16: {
      Local<String> s;
      if (!String::NewFromTwoByte(isolate, in->u.str16,
                                  v8::NewStringType::kNormal,
                                  static_cast<int>(in->len))
               .ToLocal(&s))
        return false;
      *out = s;
      return true;
    }
    case CDN_VAL_BYTES: {
      Deserializer d(isolate, context, in->u.bytes, in->len, in, &link);
      bool ok;
      if (!d.des()->ReadHeader(context).To(&ok) || !ok) {
        if (!isolate->IsExecutionTerminating())
          isolate->ThrowException(
              v8::Exception::TypeError(String::NewFromUtf8Literal(
                  isolate, "malformed serialised value")));
        return false;
      }
      bool read, refused = false;
      {
        TryCatch try_catch(isolate);
        read = d.des()->ReadValue(context).ToLocal(out);
        if (!read && try_catch.HasCaught() && !try_catch.HasTerminated()) {
          // V8's own "Unable to deserialize" (a plain Error): a value the
          // host serialiser wrote but cannot really copy (a
          // WebAssembly.Module). Ours (malformed data, the memory limit)
          // pass as they are.
          Local<Value> exc = try_catch.Exception();
          refused = exc->IsNativeError() &&
                    exc.As<Object>()->GetConstructorName()->StringEquals(
                        String::NewFromUtf8Literal(isolate, "Error"));
          if (!refused) try_catch.ReThrow();
        } else if (!read) {
          try_catch.ReThrow();
        }
      }
      if (refused) {
        cdn_value_t e{};
        e.kind = CDN_VAL_ERROR;
        e.name = const_cast<char*>("TypeError");
        e.message = const_cast<char*>(
            "A value cannot be copied into the sandbox (a WebAssembly.Module "
            "or another value V8 cannot copy)");
        e.code = const_cast<char*>("ERR_CANNOT_CLONE");
        ThrowInSandbox(isolate, &e);  // borrows the strings
      }
      return read;
    }
    case CDN_VAL_ERROR:
      ThrowInSandbox(isolate, in);
      return false;
    case CDN_VAL_REF:
      break;  // only ever leaves the sandbox
  }
  return false;
}

Local<Value> NewError(Isolate* isolate, const cdn_value_t* error);

void ThrowInSandbox(Isolate* isolate, const cdn_value_t* error) {
  Local<Value> exc = NewError(isolate, error);
  if (!exc.IsEmpty()) isolate->ThrowException(exc);
}

// The host error's other own data properties (u.bytes: lib/'s serialised
// object of them, data only) as own data properties of `exc`; false only
// while terminating.
static bool AddErrorProps(Isolate* isolate, Local<Context> context,
                          Local<Object> exc, const cdn_value_t* error) {
  TryCatch try_catch(isolate);
  Deserializer d(isolate, context, error->u.bytes, error->len, nullptr,
                 nullptr);
  Local<Value> props;
  Local<v8::Array> keys;
  bool ok;
  if (!d.des()->ReadHeader(context).To(&ok) || !ok ||
      !d.des()->ReadValue(context).ToLocal(&props) || !props->IsObject() ||
      !props.As<Object>()
           ->GetOwnPropertyNames(context, v8::ONLY_ENUMERABLE)
           .ToLocal(&keys))
    return !try_catch.HasTerminated();
  for (uint32_t i = 0; i < keys->Length(); i++) {
    Local<Value> key, value;
    if (!keys->Get(context, i).ToLocal(&key) || !key->IsName() ||
        !props.As<Object>()->Get(context, key).ToLocal(&value) ||
        exc->CreateDataProperty(context, key.As<v8::Name>(), value).IsNothing())
      return !try_catch.HasTerminated();
  }
  return true;
}

// An error of the sandbox's own intrinsics, whatever sandbox code did to
// its globals; empty only while terminating.
Local<Value> NewError(Isolate* isolate, const cdn_value_t* error) {
  const char* name = error->name != nullptr ? error->name : "Error";
  const char* message = error->message != nullptr ? error->message : "";
  Local<String> msg =
      String::NewFromUtf8(isolate, message).FromMaybe(String::Empty(isolate));
  Local<Value> exc;
  // The context's own intrinsics, whatever sandbox code did to its globals.
  if (strcmp(name, "TypeError") == 0)
    exc = v8::Exception::TypeError(msg);
  else if (strcmp(name, "RangeError") == 0)
    exc = v8::Exception::RangeError(msg);
  else if (strcmp(name, "SyntaxError") == 0)
    exc = v8::Exception::SyntaxError(msg);
  else if (strcmp(name, "ReferenceError") == 0)
    exc = v8::Exception::ReferenceError(msg);
  else
    exc = v8::Exception::Error(msg);
  // Setting a property fails only while terminating, when the error is moot.
  Local<Context> context = isolate->GetCurrentContext();
  auto set = [&](Local<String> key, const char* value) {
    Local<String> v;
    return !String::NewFromUtf8(isolate, value).ToLocal(&v) ||
           exc.As<Object>()->CreateDataProperty(context, key, v).IsJust();
  };
  if (!exc->IsNativeError() || strcmp(name, "Error") == 0 ||
      exc.As<Object>()->GetConstructorName()->StringEquals(
          String::NewFromUtf8(isolate, name)
              .FromMaybe(String::Empty(isolate)))) {
    // a standard error of that name already
  } else if (!set(String::NewFromUtf8Literal(isolate, "name"), name)) {
    return Local<Value>();
  }
  if (error->code != nullptr &&
      !set(String::NewFromUtf8Literal(isolate, "code"), error->code))
    return Local<Value>();
  if (error->u.bytes != nullptr && error->len > 0 &&
      !AddErrorProps(isolate, context, exc.As<Object>(), error))
    return Local<Value>();
  return exc;
}

// What a thrown value is, for a message, without running sandbox code: no
// getter, trap or toString is consulted.
static std::string DescribeThrown(Isolate* isolate, Local<Value> v) {
  auto clip = [](std::string s) {
    return s.size() > 80 ? s.substr(0, 77) + "..." : s;
  };
  if (v->IsSymbol()) {
    Local<Value> d = v.As<v8::Symbol>()->Description(isolate);
    if (!d->IsString()) return "a symbol";
    String::Utf8Value s(isolate, d);
    return "Symbol(" + clip(*s != nullptr ? *s : "") + ")";
  }
  if (v->IsProxy()) return "a Proxy";
  if (v->IsFunction()) {
    String::Utf8Value s(isolate, v.As<v8::Function>()->GetDebugName());
    std::string name = *s != nullptr ? *s : "";
    return "function " +
           (name.empty() ? std::string("<anonymous>") : clip(name));
  }
  if (v->IsPromise()) return "a Promise";
  if (v->IsObject()) {
    String::Utf8Value s(isolate, v.As<Object>()->GetConstructorName());
    std::string name = *s != nullptr ? *s : "";
    return name.empty() ? "an object" : "an instance of " + clip(name);
  }
  return "a value";
}

// A thrown value that is not an Error crosses as data only: an exception
// carries no function or promise references out. One that cannot be
// copied (a function, a symbol, a proxy, an object whose getter throws)
// becomes an Error that says what was thrown, coded ERR_CANNOT_CLONE.
static int CopyThrown(Isolate* isolate, Local<Context> context, Local<Value> v,
                      cdn_value_t* out) {
  if (!v->IsObject() && !v->IsSymbol())
    return ToHost(isolate, context, v, std::shared_ptr<ContextLink>(), out);
  std::string why;
  if (v->IsSymbol() || v->IsProxy() || v->IsFunction() || v->IsPromise()) {
    why = "it cannot be copied out of the sandbox";
  } else {
    TryCatch try_catch(isolate);
    Serializer s(isolate);
    s.ser()->WriteHeader();
    if (s.ser()->WriteValue(context, v).FromMaybe(false)) {
      if (isolate->IsExecutionTerminating()) return CDN_ETERMINATED;
      std::pair<uint8_t*, size_t> buf = s.ser()->Release();
      out->kind = CDN_VAL_BYTES;
      out->u.bytes = buf.first;
      out->len = buf.second;
      return CDN_OK;
    }
    if (try_catch.HasTerminated() || isolate->IsExecutionTerminating())
      return CDN_ETERMINATED;
    std::string reason = s.reason();
    if (reason.size() > 120) reason = reason.substr(0, 117) + "...";
    why = reason.empty()
              ? "copying it out of the sandbox threw"
              : "it cannot be copied out of the sandbox (" + reason + ")";
  }
  std::string message = "Uncaught " + DescribeThrown(isolate, v) + ": " + why;
  SetError(out, "Error", message.c_str());
  out->code = DupString("ERR_CANNOT_CLONE", 16);
  return CDN_OK;
}

// An Error's own data properties besides name, message, stack and code
// (enumerable ones, and `cause`), as a serialised null-prototype object in
// out->u.bytes. Accessors are skipped, not called; a property whose value
// cannot be copied is left out.
static void CopyErrorProps(Isolate* isolate, Local<Context> context,
                           Local<Object> error, cdn_value_t* out) {
  TryCatch try_catch(isolate);
  Local<v8::Array> keys;
  if (!error
           ->GetOwnPropertyNames(context,
                                 static_cast<v8::PropertyFilter>(
                                     v8::ONLY_ENUMERABLE | v8::SKIP_SYMBOLS),
                                 v8::KeyConversionMode::kConvertToString)
           .ToLocal(&keys))
    return;
  Local<String> cause = String::NewFromUtf8Literal(isolate, "cause");
  Local<String> value_key = String::NewFromUtf8Literal(isolate, "value");
  Local<Object> props =
      Object::New(isolate, v8::Null(isolate), nullptr, nullptr, 0);
  uint32_t count = 0;
  for (uint32_t i = 0; i <= keys->Length(); i++) {
    Local<Value> key, desc, value;
    if (i < keys->Length()) {
      if (!keys->Get(context, i).ToLocal(&key) || !key->IsString()) return;
      String::Utf8Value k(isolate, key);
      if (*k == nullptr || strcmp(*k, "name") == 0 ||
          strcmp(*k, "message") == 0 || strcmp(*k, "stack") == 0 ||
          strcmp(*k, "code") == 0 || strcmp(*k, "cause") == 0)
        continue;
    } else {
      key = cause;  // own but not enumerable when made by new Error(m, {cause})
    }
    if (!error->GetOwnPropertyDescriptor(context, key.As<v8::Name>())
             .ToLocal(&desc))
      return;
    if (!desc->IsObject()) continue;
    Local<Object> d = desc.As<Object>();
    // A fresh descriptor object: an own `value` is data, never a getter.
    if (!d->HasOwnProperty(context, value_key).FromMaybe(false) ||
        !d->Get(context, value_key).ToLocal(&value))
      continue;
    Serializer one(isolate);
    one.ser()->WriteHeader();
    if (!one.ser()->WriteValue(context, value).FromMaybe(false)) {
      if (try_catch.HasTerminated()) return;
      try_catch.Reset();
      continue;
    }
    if (props->CreateDataProperty(context, key.As<v8::Name>(), value)
            .IsNothing())
      return;
    count++;
  }
  if (count == 0) return;
  Serializer s(isolate);
  s.ser()->WriteHeader();
  if (!s.ser()->WriteValue(context, props).FromMaybe(false)) return;
  std::pair<uint8_t*, size_t> buf = s.ser()->Release();
  out->u.bytes = buf.first;
  out->len = buf.second;
}

int ThrownToHost(Isolate* isolate, Local<Context> context, Local<Value> exc,
                 cdn_value_t* out) {
  *out = cdn_value_t{};
  if (!exc->IsNativeError()) return CopyThrown(isolate, context, exc, out);
  // Reading name, message and stack may run sandbox getters; the deadline
  // is still armed around this.
  TryCatch inner(isolate);
  Local<Object> obj = exc.As<Object>();
  Local<Value> name, message, stack, code;
  // Stop at the first termination: V8's own stack accessor formats the
  // message again, and from Node 22 catches the termination there, so a
  // looping message getter would run again with no deadline left to end it.
  auto get = [&](const char* key, Local<Value>* v) {
    *v = v8::Undefined(isolate);
    if (inner.HasTerminated() || isolate->IsExecutionTerminating())
      return false;
    Local<String> k = String::NewFromUtf8(isolate, key).ToLocalChecked();
    if (!obj->Get(context, k).ToLocal(v)) *v = v8::Undefined(isolate);
    return !inner.HasTerminated() && !isolate->IsExecutionTerminating();
  };
  if (!get("name", &name) || !get("message", &message) ||
      !get("stack", &stack) || !get("code", &code))
    return CDN_ETERMINATED;
  out->kind = CDN_VAL_ERROR;
  out->name = name->IsString() ? ToUtf8(isolate, name) : DupString("Error", 5);
  out->message =
      message->IsString() ? ToUtf8(isolate, message) : DupString("", 0);
  out->stack = stack->IsString() ? ToUtf8(isolate, stack) : DupString("", 0);
  if (code->IsString()) out->code = ToUtf8(isolate, code);
  CopyErrorProps(isolate, context, obj, out);
  if (isolate->IsExecutionTerminating()) {
    cdn_value_free(out);
    return CDN_ETERMINATED;
  }
  return CDN_OK;
}

int ExceptionToHost(Isolate* isolate, Local<Context> context,
                    TryCatch* try_catch, bool compiling, cdn_value_t* out) {
  *out = cdn_value_t{};
  if (try_catch->HasTerminated() || isolate->IsExecutionTerminating())
    return CDN_ETERMINATED;
  int err = ThrownToHost(isolate, context, try_catch->Exception(), out);
  if (err != CDN_OK) return err;
  if (compiling && out->kind == CDN_VAL_ERROR) {
    // A compile error has no frame; name the place, as a frame would.
    Local<v8::Message> m = try_catch->Message();
    if (!m.IsEmpty()) {
      String::Utf8Value file(isolate, m->GetScriptResourceName());
      int line = m->GetLineNumber(context).FromMaybe(0);
      int col = m->GetStartColumn(context).FromMaybe(0) + 1;
      std::string st = std::string(out->name) + ": " + out->message +
                       "\n    at " +
                       (*file != nullptr ? *file : "<anonymous>") + ":" +
                       std::to_string(line) + ":" + std::to_string(col);
      free(out->stack);
      out->stack = DupString(st.data(), st.size());
    }
  }
  return CDN_EEXCEPTION;
}

}  // namespace cordon
