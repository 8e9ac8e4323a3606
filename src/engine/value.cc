// value.cc: values across the isolate boundary.
//
// Primitives cross as C values; everything else as bytes in V8's
// serialisation format. ArrayBufferViews are written as host objects in the
// layout Node's v8.Serializer uses (type index, byte length, raw bytes), so
// the host side reads and writes them with v8.serialize()/v8.deserialize().
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
  kViewTypeCount
};

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

class Serializer final : public v8::ValueSerializer::Delegate {
 public:
  explicit Serializer(Isolate* isolate)
      : isolate_(isolate), ser_(isolate, this) {
    ser_.SetTreatArrayBufferViewsAsHostObjects(true);
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

  Maybe<bool> WriteHostObject(Isolate* isolate, Local<Object> object) override {
    if (!object->IsArrayBufferView()) {
      ThrowDataCloneError(String::NewFromUtf8Literal(
          isolate, "a host object could not be cloned"));
      return v8::Nothing<bool>();
    }
    Local<v8::ArrayBufferView> view = object.As<v8::ArrayBufferView>();
    uint32_t type = kDataView;
    if (view->IsInt8Array())
      type = kInt8;
    else if (view->IsUint8Array())
      type = kUint8;
    else if (view->IsUint8ClampedArray())
      type = kUint8Clamped;
    else if (view->IsInt16Array())
      type = kInt16;
    else if (view->IsUint16Array())
      type = kUint16;
    else if (view->IsInt32Array())
      type = kInt32;
    else if (view->IsUint32Array())
      type = kUint32;
    else if (view->IsFloat32Array())
      type = kFloat32;
    else if (view->IsFloat64Array())
      type = kFloat64;
    else if (view->IsBigInt64Array())
      type = kBigInt64;
    else if (view->IsBigUint64Array())
      type = kBigUint64;
    size_t length = view->ByteLength();
    if (length > UINT32_MAX) {
      ThrowDataCloneError(String::NewFromUtf8Literal(
          isolate, "a typed array over 4 GiB could not be cloned"));
      return v8::Nothing<bool>();
    }
    ser_.WriteUint32(type);
    ser_.WriteUint32(static_cast<uint32_t>(length));
    if (length > 0) {
      std::string copy(length, '\0');
      view->CopyContents(&copy[0], length);
      ser_.WriteRawBytes(copy.data(), length);
    }
    return v8::Just(true);
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
  Deserializer(Isolate* isolate, const uint8_t* data, size_t size)
      : des_(isolate, data, size, this) {}

  v8::ValueDeserializer* des() {
    return &des_;
  }

  MaybeLocal<Object> ReadHostObject(Isolate* isolate) override {
    uint32_t type, length;
    const void* bytes = nullptr;
    if (!des_.ReadUint32(&type) || !des_.ReadUint32(&length) ||
        type >= kViewTypeCount ||
        (length > 0 && !des_.ReadRawBytes(length, &bytes))) {
      isolate->ThrowException(v8::Exception::TypeError(
          String::NewFromUtf8Literal(isolate, "malformed typed array data")));
      return MaybeLocal<Object>();
    }
    Local<v8::ArrayBuffer> ab = v8::ArrayBuffer::New(isolate, length);
    if (length > 0) memcpy(ab->Data(), bytes, length);
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

void SetError(cdn_value_t* out, const char* name, const char* message) {
  cdn_value_free(out);
  out->kind = CDN_VAL_ERROR;
  out->name = DupString(name, strlen(name));
  out->message = DupString(message, strlen(message));
}

int ToHost(Isolate* isolate, Local<Context> context, Local<Value> value,
           cdn_value_t* out) {
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
      s->WriteOneByte(isolate, out->u.str8, 0, n, String::NO_NULL_TERMINATION);
    } else {
      out->kind = CDN_VAL_UTF16;
      out->u.str16 = static_cast<uint16_t*>(malloc(n * sizeof(uint16_t)));
      if (out->u.str16 == nullptr) abort();
      s->Write(isolate, out->u.str16, 0, n, String::NO_NULL_TERMINATION);
    }
    out->len = static_cast<size_t>(n);
  } else {
    TryCatch try_catch(isolate);
    Serializer s(isolate);
    s.ser()->WriteHeader();
    if (s.ser()->WriteValue(context, value).IsNothing()) {
      if (try_catch.HasTerminated() || isolate->IsExecutionTerminating())
        return CDN_ETERMINATED;
      std::string reason = "A value of type ";
      reason += TypeName(value);
      reason += " cannot be copied out of the sandbox";
      if (!s.reason().empty()) reason += ": " + s.reason();
      SetError(out, "TypeError", reason.c_str());
      return CDN_ECLONE;
    }
    std::pair<uint8_t*, size_t> buf = s.ser()->Release();
    out->kind = CDN_VAL_BYTES;
    out->u.bytes = buf.first;
    out->len = buf.second;
  }
  return CDN_OK;
}

bool FromHost(Isolate* isolate, Local<Context> context, const cdn_value_t* in,
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
      Deserializer d(isolate, in->u.bytes, in->len);
      bool ok;
      if (!d.des()->ReadHeader(context).To(&ok) || !ok) {
        if (!isolate->IsExecutionTerminating())
          isolate->ThrowException(
              v8::Exception::TypeError(String::NewFromUtf8Literal(
                  isolate, "malformed serialised value")));
        return false;
      }
      return d.des()->ReadValue(context).ToLocal(out);
    }
    case CDN_VAL_ERROR:
      ThrowInSandbox(isolate, in);
      return false;
  }
  return false;
}

void ThrowInSandbox(Isolate* isolate, const cdn_value_t* error) {
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
  else {
    exc = v8::Exception::Error(msg);
    if (strcmp(name, "Error") != 0) {
      Local<String> n;
      if (String::NewFromUtf8(isolate, name).ToLocal(&n)) {
        // Fails only while terminating, when the error is moot anyway.
        if (exc.As<Object>()
                ->Set(isolate->GetCurrentContext(),
                      String::NewFromUtf8Literal(isolate, "name"), n)
                .IsNothing()) {
          return;  // terminating
        }
      }
    }
  }
  isolate->ThrowException(exc);
}

int ExceptionToHost(Isolate* isolate, Local<Context> context,
                    TryCatch* try_catch, bool compiling, cdn_value_t* out) {
  *out = cdn_value_t{};
  if (try_catch->HasTerminated() || isolate->IsExecutionTerminating())
    return CDN_ETERMINATED;
  Local<Value> exc = try_catch->Exception();
  if (!exc->IsNativeError()) {
    // A thrown value that is not an Error crosses as a value.
    int err = ToHost(isolate, context, exc, out);
    if (err == CDN_ECLONE) {
      SetError(out, "Error",
               "Uncaught value that cannot be copied out of the sandbox");
      return CDN_EEXCEPTION;
    }
    return err == CDN_OK ? CDN_EEXCEPTION : err;
  }
  // Reading name, message and stack may run sandbox getters; the deadline
  // is still armed around this.
  TryCatch inner(isolate);
  Local<Object> obj = exc.As<Object>();
  Local<Value> name, message, stack;
  auto get = [&](const char* key, Local<Value>* v) {
    Local<String> k = String::NewFromUtf8(isolate, key).ToLocalChecked();
    if (!obj->Get(context, k).ToLocal(v)) *v = v8::Undefined(isolate);
  };
  get("name", &name);
  get("message", &message);
  get("stack", &stack);
  if (inner.HasTerminated() || isolate->IsExecutionTerminating())
    return CDN_ETERMINATED;
  out->kind = CDN_VAL_ERROR;
  out->name = name->IsString() ? ToUtf8(isolate, name) : DupString("Error", 5);
  out->message =
      message->IsString() ? ToUtf8(isolate, message) : DupString("", 0);
  std::string st;
  if (stack->IsString()) {
    String::Utf8Value utf8(isolate, stack);
    if (*utf8 != nullptr) st.assign(*utf8, utf8.length());
  }
  if (compiling) {
    // A compile error has no frame; name the place, as a frame would.
    Local<v8::Message> m = try_catch->Message();
    if (!m.IsEmpty()) {
      String::Utf8Value file(isolate, m->GetScriptResourceName());
      int line = m->GetLineNumber(context).FromMaybe(0);
      int col = m->GetStartColumn(context).FromMaybe(0) + 1;
      st = std::string(out->name) + ": " + out->message + "\n    at " +
           (*file != nullptr ? *file : "<anonymous>") + ":" +
           std::to_string(line) + ":" + std::to_string(col);
    }
  }
  out->stack = DupString(st.data(), st.size());
  return CDN_EEXCEPTION;
}

}  // namespace cordon
