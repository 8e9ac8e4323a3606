// wasm.cc: WebAssembly memories, held to the isolate's memory limit.
//
// A WebAssembly memory is neither on V8's heap nor made by the ArrayBuffer
// allocator, so neither of the isolate's limits sees it; Node 26's V8 no
// longer reports it as external memory either, where OverLimit finds it on
// the older lines (an uncounted 16 MB sandbox grew the host to 9 GB). So
// every context of a limited isolate makes its memories here:
// - WebAssembly.Memory and Memory.prototype.grow are wrapped: a memory is
//   checked against the limit when made and when grown from JS, and its
//   maximum is clamped to the limit (no one memory can outgrow it);
// - a module's own memories become imports (the binary is rewritten when
//   compiled: Module, compile, instantiate), which instantiation (Instance,
//   instantiate) supplies with memories made as above;
// - growth that no wrapper sees (memory.grow in WebAssembly code, a
//   resizable buffer's resize) is read back by a poll: every
//   CDN_POLL_INTERVAL_MS while the isolate runs, the host's watchdog asks
//   for an interrupt (cdn_engine_poll), which re-reads every memory's size.
// Sizes are reported to V8 as external memory (on the lines where V8 does
// not count them itself), so its collector and OverLimit feel them.
//
// Everything here runs on the thread holding the isolate's lock, except
// cdn_engine_poll (the watchdog's thread).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "internal.h"

using v8::Array;
using v8::Context;
using v8::Function;
using v8::FunctionCallbackInfo;
using v8::HandleScope;
using v8::Isolate;
using v8::Local;
using v8::Object;
using v8::String;
using v8::Value;

namespace cordon {

namespace {

// The import module a rewritten module's own memories come from; the field
// names carry each memory's limits ("index:initial:maximum:flags").
constexpr char kMemoryModule[] = "cordon:memory";
constexpr uint64_t kPageSize = 65536;

// Live memories, per isolate and in all isolates together. Each reserves
// about 10 GiB of address space whatever its size, and V8 has about 1 TiB
// for the whole process: past that, the host's own WebAssembly (undici's
// HTTP parser) fails too. So a sandbox gets a few, and all of them fewer
// than V8 has.
constexpr size_t kMaxMemories = 8;
constexpr size_t kMaxAllMemories = 48;
// The maxima of a sandbox's live memories add up to at most this many
// times its limit: growth from WebAssembly code is seen only by the poll,
// and a builtin that fills a memory does not stop for it, so the maxima
// bound what the host may have to hold (the limit's documented 4x).
constexpr uint64_t kMaxGrowth = 4;
// Async compilations pending at once in a sandbox: each holds a copy of
// its bytes outside any heap, and each is counted at every refresh.
constexpr size_t kMaxPending = 64;
// What a compiled module is charged against the limit, per byte of its
// wire bytes: V8 keeps a copy of them and its code outside both heaps
// (3 000 modules of 60 KB, 180 MB of bytes, left a host at 291 MB RSS
// on Node 26 and 294 MB on Node 20), and reports neither where the limit
// looks.
constexpr uint64_t kModuleFactor = 2;
std::atomic<size_t> all_memories{0};

// Whether V8's heap statistics show what AdjustExternal reports: V8 14
// still schedules collections by it but leaves it out of
// HeapStatistics::external_memory(), where OverLimit looks. Asked once per
// process (it is V8's behaviour, not an isolate's): -1 until then.
std::atomic<int> adjust_shown{-1};

void ProbeAdjustShown(Isolate* isolate) {
  if (kV8CountsWasmMemory || adjust_shown.load() >= 0) return;
  constexpr int64_t kProbe = 1 << 20;
  v8::HeapStatistics before, after;
  isolate->GetHeapStatistics(&before);
  AdjustExternal(isolate, kProbe);
  isolate->GetHeapStatistics(&after);
  AdjustExternal(isolate, -kProbe);
  adjust_shown.store(
      after.external_memory() >= before.external_memory() + kProbe ? 1 : 0);
}

// Limits flags of the binary format.
constexpr uint8_t kHasMaximum = 1;
constexpr uint8_t kShared = 2;
constexpr uint8_t kMemory64 = 4;

// The originals a context's wrappers call (the array in their data).
enum {
  kOrigMemory,
  kOrigGrow,
  kOrigModule,
  kOrigCompile,
  kOrigInstantiate,
  kOrigInstance,
  kOrigImports,
  kOrigCount
};

struct Limits {
  uint8_t flags = 0;
  uint64_t initial = 0;
  uint64_t maximum = 0;
  std::string raw;  // as encoded in the binary
};

cdn_engine_isolate_t* IsoOf(Isolate* isolate) {
  return static_cast<cdn_engine_isolate_t*>(isolate->GetData(0));
}

uint64_t LimitPages(cdn_engine_isolate_t* iso) {
  return std::max<uint64_t>(1, iso->memory_limit / kPageSize);
}

// ---- the binary ---------------------------------------------------------

bool ReadLeb(const uint8_t** p, const uint8_t* end, int bits, uint64_t* out) {
  uint64_t v = 0;
  for (int shift = 0; *p < end && shift < bits; shift += 7) {
    uint8_t b = *(*p)++;
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) {
      *out = v;
      return true;
    }
  }
  return false;
}

void WriteLeb(std::string* out, uint64_t v) {
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    out->push_back(static_cast<char>(v != 0 ? b | 0x80 : b));
  } while (v != 0);
}

void WriteName(std::string* out, const std::string& name) {
  WriteLeb(out, name.size());
  out->append(name);
}

std::string FieldName(size_t index, const Limits& l) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%zu:%llu:%llu:%u", index,
                static_cast<unsigned long long>(l.initial),
                static_cast<unsigned long long>(l.maximum),
                static_cast<unsigned>(l.flags));
  return buf;
}

bool ParseFieldName(const std::string& name, Limits* l) {
  unsigned long long initial, maximum;
  unsigned flags;
  size_t index;
  // Only what RewriteModule writes: four decimal numbers (no sign, no
  // space, nothing after; a user's import of that name gets the same
  // checked memory as ours).
  int colons = 0;
  for (char c : name) {
    if (c == ':') {
      colons++;
    } else if (c < '0' || c > '9') {
      return false;
    }
  }
  if (colons != 3 || name.size() > 80 ||
      std::sscanf(name.c_str(), "%zu:%llu:%llu:%u", &index, &initial, &maximum,
                  &flags) != 4 ||
      flags > 7)
    return false;
  l->initial = initial;
  l->maximum = maximum;
  l->flags = static_cast<uint8_t>(flags);
  return true;
}

enum class Rewrite { kUnchanged, kRewritten, kUnsupported };

// Turn the module's own memories into imports from kMemoryModule, appended
// after its imports (so every memory keeps its index). Only the section
// framing and the memory section are read; V8 validates the rest.
// kUnchanged: no memory of its own, or not a module at all (V8 says why).
Rewrite RewriteModule(const uint8_t* data, size_t len, std::string* out,
                      std::vector<Limits>* memories) {
  static const uint8_t kHeader[8] = {0, 'a', 's', 'm', 1, 0, 0, 0};
  if (len < 8 || std::memcmp(data, kHeader, 8) != 0) return Rewrite::kUnchanged;
  struct Section {
    uint8_t id;
    const uint8_t* payload;
    uint64_t size;
  };
  std::vector<Section> sections;
  const uint8_t* p = data + 8;
  const uint8_t* end = data + len;
  bool has_imports = false;
  while (p < end) {
    Section s;
    s.id = *p++;
    if (!ReadLeb(&p, end, 32, &s.size) ||
        s.size > static_cast<uint64_t>(end - p))
      return Rewrite::kUnchanged;  // malformed: V8 rejects it
    s.payload = p;
    p += s.size;
    if (s.id == 2) has_imports = true;
    if (s.id == 5) {
      const uint8_t* q = s.payload;
      const uint8_t* q_end = q + s.size;
      uint64_t count;
      if (!ReadLeb(&q, q_end, 32, &count)) return Rewrite::kUnchanged;
      for (uint64_t i = 0; i < count; i++) {
        Limits l;
        const uint8_t* start = q;
        if (q >= q_end) return Rewrite::kUnchanged;
        l.flags = *q++;
        if (l.flags & ~(kHasMaximum | kShared | kMemory64))
          return Rewrite::kUnsupported;  // (custom page sizes)
        int bits = (l.flags & kMemory64) ? 64 : 32;
        if (!ReadLeb(&q, q_end, bits, &l.initial)) return Rewrite::kUnchanged;
        if ((l.flags & kHasMaximum) && !ReadLeb(&q, q_end, bits, &l.maximum))
          return Rewrite::kUnchanged;
        l.raw.assign(reinterpret_cast<const char*>(start), q - start);
        memories->push_back(std::move(l));
      }
      if (q != q_end) return Rewrite::kUnchanged;
    }
    sections.push_back(s);
  }
  if (memories->empty()) return Rewrite::kUnchanged;

  std::string entries;
  for (size_t i = 0; i < memories->size(); i++) {
    WriteName(&entries, kMemoryModule);
    WriteName(&entries, FieldName(i, (*memories)[i]));
    entries.push_back(2);  // a memory
    entries.append((*memories)[i].raw);
  }
  auto emit = [out](uint8_t id, const std::string& payload) {
    out->push_back(static_cast<char>(id));
    WriteLeb(out, payload.size());
    out->append(payload);
  };
  out->assign(reinterpret_cast<const char*>(kHeader), 8);
  bool imports_done = false;
  for (const Section& s : sections) {
    if (!has_imports && !imports_done && s.id != 0 && s.id != 1) {
      std::string payload;
      WriteLeb(&payload, memories->size());
      payload.append(entries);
      emit(2, payload);
      imports_done = true;
    }
    if (s.id == 5) continue;
    if (s.id == 2) {
      const uint8_t* q = s.payload;
      uint64_t count;
      if (!ReadLeb(&q, s.payload + s.size, 32, &count))
        return Rewrite::kUnchanged;
      std::string payload;
      WriteLeb(&payload, count + memories->size());
      payload.append(reinterpret_cast<const char*>(q), s.payload + s.size - q);
      payload.append(entries);
      emit(2, payload);
      continue;
    }
    emit(s.id, std::string(reinterpret_cast<const char*>(s.payload), s.size));
  }
  return Rewrite::kRewritten;
}

// A BufferSource's bytes (false: not one; V8 then says so).
bool CopyBytes(Local<Value> v, std::string* out) {
  if (v->IsArrayBufferView()) {
    auto view = v.As<v8::ArrayBufferView>();
    out->resize(view->ByteLength());
    view->CopyContents(out->data(), out->size());
    return true;
  }
  std::shared_ptr<v8::BackingStore> store;
  if (v->IsArrayBuffer())
    store = v.As<v8::ArrayBuffer>()->GetBackingStore();
  else if (v->IsSharedArrayBuffer())
    store = v.As<v8::SharedArrayBuffer>()->GetBackingStore();
  else
    return false;
  out->assign(static_cast<const char*>(store->Data()), store->ByteLength());
  return true;
}

// The rewritten bytes as a Uint8Array. Their store is not the allocator's
// (it cannot fail fatally, and lives only while V8 compiles).
Local<Value> NewBytes(Isolate* isolate, std::string bytes) {
  auto* held = new std::string(std::move(bytes));
  size_t len = held->size();
  auto store = v8::ArrayBuffer::NewBackingStore(
      held->data(), len,
      [](void*, size_t, void* deleter_data) {
        delete static_cast<std::string*>(deleter_data);
      },
      held);
  auto buffer = v8::ArrayBuffer::New(isolate, std::move(store));
  return v8::Uint8Array::New(buffer, 0, len);
}

// ---- the memories -------------------------------------------------------

std::shared_ptr<v8::BackingStore> StoreOf(Isolate* isolate,
                                          const v8::Global<Object>& memory) {
  Local<Value> buffer =
      memory.Get(isolate).As<v8::WasmMemoryObject>()->Buffer();
  if (buffer->IsSharedArrayBuffer())
    return buffer.As<v8::SharedArrayBuffer>()->GetBackingStore();
  return buffer.As<v8::ArrayBuffer>()->GetBackingStore();
}

}  // namespace

// One memory of a limited context, for as long as its pages live: the
// memory object (a phantom handle, empty once collected) or any buffer of
// it (the backing store, which a buffer keeps without its memory). No weak
// callback: nothing of V8's can run one after FreeWasmMemories.
struct WasmMemory {
  v8::Global<Object> memory;
  std::weak_ptr<v8::BackingStore> store;
  size_t reported = 0;     // its size as last counted
  uint64_t max_bytes = 0;  // its maximum (clamped)
};

namespace {

void Forget(cdn_engine_isolate_t* iso, WasmMemory* m) {
  if (!kV8CountsWasmMemory && m->reported > 0) {
    AdjustExternal(iso->isolate, -static_cast<int64_t>(m->reported));
    iso->wasm_bytes -= static_cast<int64_t>(m->reported);
  }
  iso->wasm_count.fetch_sub(1, std::memory_order_relaxed);
  all_memories.fetch_sub(1, std::memory_order_relaxed);
  delete m;
}

void PruneModules(cdn_engine_isolate_t* iso);

// Re-read every memory's size, forget those whose pages are gone (and the
// modules that were collected), and tell V8 what changed.
void Refresh(cdn_engine_isolate_t* iso) {
  PruneModules(iso);
  if (iso->wasm_memories.empty()) return;
  Isolate* isolate = iso->isolate;
  HandleScope scope(isolate);
  int64_t delta = 0;
  for (auto it = iso->wasm_memories.begin(); it != iso->wasm_memories.end();) {
    WasmMemory* m = *it;
    std::shared_ptr<v8::BackingStore> store;
    if (!m->memory.IsEmpty()) {
      store = StoreOf(isolate, m->memory);
      m->store = store;  // (a grow may have moved it)
    } else {
      store = m->store.lock();
    }
    if (store == nullptr) {
      it = iso->wasm_memories.erase(it);
      Forget(iso, m);
      continue;
    }
    size_t size = store->ByteLength();
    delta += static_cast<int64_t>(size) - static_cast<int64_t>(m->reported);
    m->reported = size;
    ++it;
  }
  if (!kV8CountsWasmMemory && delta != 0) {
    iso->wasm_bytes += delta;
    AdjustExternal(isolate, delta);
  }
}

// Forget the compiled modules that were collected.
void PruneModules(cdn_engine_isolate_t* iso) {
  auto& mods = iso->wasm_modules;
  mods.erase(std::remove_if(mods.begin(), mods.end(),
                            [](const auto& m) { return m.first.IsEmpty(); }),
             mods.end());
}

// The poll's state, one word (iso->wasm_poll): kPolling while the
// watchdog lists the isolate, kAsked while an interrupt it asked for has
// not run. One word, so that the watchdog dropping the isolate and an
// interrupt asking to be listed again cannot both miss.
constexpr int kPolling = 1;
constexpr int kAsked = 2;

// Set `add`, clear `remove`; returns the state before.
int Update(cdn_engine_isolate_t* iso, int add, int remove) {
  int s = iso->wasm_poll.load();
  while (!iso->wasm_poll.compare_exchange_weak(s, (s | add) & ~remove)) {
  }
  return s;
}

void StartPoll(cdn_engine_isolate_t* iso, int answered) {
  if (!(Update(iso, kPolling, answered) & kPolling) &&
      iso->hooks.poll != nullptr)
    iso->hooks.poll(iso->hooks.data);
}

void Stop(cdn_engine_isolate_t* iso) {
  iso->out_of_memory.store(true);
  iso->isolate->TerminateExecution();
}

// Whether `bytes` more fit under the limit, after a thorough collection if
// they do not at first (dropped memories are freed only by one). A stop
// otherwise.
bool Fits(cdn_engine_isolate_t* iso, uint64_t bytes) {
  auto over = [iso, bytes]() {
    Refresh(iso);
    v8::HeapStatistics hs;
    iso->isolate->GetHeapStatistics(&hs);
    return bytes > iso->memory_limit ||
           ExternalMemory(iso, hs) > iso->memory_limit - bytes;
  };
  if (!over()) return true;
  iso->recovering = true;
  iso->isolate->LowMemoryNotification();
  iso->recovering = false;
  if (!over()) return true;
  Stop(iso);
  return false;
}

void Track(cdn_engine_isolate_t* iso, Local<Object> memory,
           uint64_t max_bytes) {
  auto* m = new WasmMemory;
  m->memory.Reset(iso->isolate, memory);
  m->memory.SetWeak();
  m->max_bytes = max_bytes;
  iso->wasm_memories.insert(m);
  iso->wasm_count.fetch_add(1, std::memory_order_relaxed);
  all_memories.fetch_add(1, std::memory_order_relaxed);
  Refresh(iso);
  StartPoll(iso, 0);
}

// What the live memories' maxima leave of kMaxGrowth x the limit.
uint64_t GrowthLeft(cdn_engine_isolate_t* iso) {
  uint64_t used = 0;
  for (WasmMemory* m : iso->wasm_memories) used += m->max_bytes;
  uint64_t all = static_cast<uint64_t>(iso->memory_limit) * kMaxGrowth;
  return used < all ? all - used : 0;
}

void ThrowNoRoom(Isolate* isolate, const char* why) {
  std::string message =
      std::string("WebAssembly.Memory(): could not allocate memory (") + why +
      ")";
  isolate->ThrowException(v8::Exception::RangeError(
      String::NewFromUtf8(isolate, message.c_str()).ToLocalChecked()));
}

// Whether another memory of `min_bytes` at least may be made (after a
// thorough collection, which frees dropped ones, if not at first); a
// RangeError otherwise, as V8 throws when it has no address space left.
// *left: what its maximum may be.
bool Room(cdn_engine_isolate_t* iso, uint64_t min_bytes, uint64_t* left) {
  auto full = [iso, min_bytes, left]() {
    Refresh(iso);
    *left = GrowthLeft(iso);
    return iso->wasm_count.load() >= kMaxMemories ||
           all_memories.load() >= kMaxAllMemories || *left < min_bytes;
  };
  if (!full()) return true;
  iso->recovering = true;
  iso->isolate->LowMemoryNotification();
  iso->recovering = false;
  if (!full()) return true;
  ThrowNoRoom(iso->isolate,
              *left < min_bytes
                  ? "the maxima of its memories would pass 4x the limit"
                  : "a sandbox holds at most 8 WebAssembly memories at a "
                    "time");
  return false;
}

Local<Value> Orig(const FunctionCallbackInfo<Value>& info, int which) {
  Local<Context> context = info.GetIsolate()->GetCurrentContext();
  return info.Data().As<Array>()->Get(context, which).ToLocalChecked();
}

// The original `which`, called with this call's receiver, or constructed.
v8::MaybeLocal<Value> CallOrig(const FunctionCallbackInfo<Value>& info,
                               int which, std::vector<Local<Value>>* args) {
  Local<Context> context = info.GetIsolate()->GetCurrentContext();
  return Orig(info, which)
      .As<Function>()
      ->Call(context, info.This(), static_cast<int>(args->size()),
             args->data());
}

v8::MaybeLocal<Object> NewOrig(const FunctionCallbackInfo<Value>& info,
                               int which, std::vector<Local<Value>>* args) {
  Local<Context> context = info.GetIsolate()->GetCurrentContext();
  return Orig(info, which)
      .As<Function>()
      ->NewInstance(context, static_cast<int>(args->size()), args->data());
}

// A page count from a descriptor value, already a primitive (a Number,
// or a BigInt for 64-bit memories); false if V8 would reject it anyway.
bool Pages(Local<Value> v, uint64_t* out) {
  if (v->IsBigInt()) {
    bool lossless;
    *out = v.As<v8::BigInt>()->Uint64Value(&lossless);
    return lossless;
  }
  if (!v->IsNumber()) return false;
  double d = v.As<v8::Number>()->Value();
  if (!(d >= 0) || d > 1e15) return false;
  *out = static_cast<uint64_t>(d);
  return true;
}

Local<Value> PagesValue(Isolate* isolate, uint64_t pages, bool is64) {
  if (is64) return v8::BigInt::NewFromUnsigned(isolate, pages);
  return v8::Number::New(isolate, static_cast<double>(pages));
}

// Make a memory from a descriptor, its maximum clamped to the limit,
// checked and tracked. Empty with an exception or a stop.
//
// The descriptor is read once, each value converted once (as the
// constructor would: ToString for the address type, ToBigInt or ToNumber
// for sizes, ToBoolean for shared), and V8 is given only those primitives
// on an object without a prototype: a getter or valueOf that answers
// differently the second time, or one on Object.prototype, cannot make V8
// build another memory than the one checked.
v8::MaybeLocal<Object> NewMemory(Local<Context> context, Local<Function> orig,
                                 Local<Value> descriptor) {
  Isolate* isolate =
      Isolate::GetCurrent();  // (no Context::GetIsolate in V8 14)
  cdn_engine_isolate_t* iso = IsoOf(isolate);
  if (!descriptor->IsObject())
    return orig->NewInstance(context, 1, &descriptor);
  Local<Object> in = descriptor.As<Object>();
  Local<Object> copy =
      Object::New(isolate, v8::Null(isolate), nullptr, nullptr, 0);
  enum { kAddress, kInitial, kMinimum, kMaximum, kShared, kCount };
  static const char* const kKeys[kCount] = {"address", "initial", "minimum",
                                            "maximum", "shared"};
  Local<Value> values[kCount];
  for (int i = 0; i < kCount; i++) {
    Local<String> key = String::NewFromUtf8(isolate, kKeys[i]).ToLocalChecked();
    if (!in->Get(context, key).ToLocal(&values[i])) return {};
  }
  // The address type first: it decides how the sizes convert. (`index`,
  // its old name, V8 no longer reads: it is not read here either.)
  bool is64 = false;
  if (!values[kAddress]->IsUndefined()) {
    Local<String> str;
    if (!values[kAddress]->ToString(context).ToLocal(&str)) return {};
    values[kAddress] = str;
    is64 = str->StringEquals(String::NewFromUtf8Literal(isolate, "i64"));
  }
  for (int i : {kInitial, kMinimum, kMaximum}) {
    if (values[i]->IsUndefined()) continue;
    if (is64) {
      Local<v8::BigInt> big;
      if (!values[i]->ToBigInt(context).ToLocal(&big)) return {};
      values[i] = big;
    } else {
      Local<v8::Number> num;
      if (!values[i]->ToNumber(context).ToLocal(&num)) return {};
      values[i] = num;
    }
  }
  if (!values[kShared]->IsUndefined())
    values[kShared] =
        v8::Boolean::New(isolate, values[kShared]->BooleanValue(isolate));
  for (int i = 0; i < kCount; i++) {
    if (values[i]->IsUndefined()) continue;
    Local<String> key = String::NewFromUtf8(isolate, kKeys[i]).ToLocalChecked();
    if (copy->CreateDataProperty(context, key, values[i]).IsNothing())
      return {};
  }
  Local<Value> initial_v =
      values[kInitial]->IsUndefined() ? values[kMinimum] : values[kInitial];
  uint64_t initial, maximum = 0, limit = LimitPages(iso);
  bool has_max = !values[kMaximum]->IsUndefined();
  bool shared = values[kShared]->IsTrue();
  bool valid = Pages(initial_v, &initial) &&
               (!has_max || Pages(values[kMaximum], &maximum)) &&
               (!has_max || initial <= maximum);
  // (Invalid: V8 throws for these primitives without making a memory.)
  Local<Value> arg = copy;
  if (!valid) return orig->NewInstance(context, 1, &arg);
  if (initial > limit) {
    Stop(iso);
    return {};
  }
  if (!Fits(iso, initial * kPageSize)) return {};
  uint64_t left;
  if (!Room(iso, initial * kPageSize, &left)) return {};
  // (A 32-bit memory has at most 65536 pages.)
  uint64_t clamp = std::min<uint64_t>(limit, left / kPageSize);
  if (!is64) clamp = std::min<uint64_t>(clamp, 65536);
  if (!has_max) maximum = shared ? initial : clamp;
  if ((has_max && maximum > clamp) || (!has_max && !shared)) {
    maximum = clamp;
    Local<String> key = String::NewFromUtf8Literal(isolate, "maximum");
    if (copy->CreateDataProperty(context, key, PagesValue(isolate, clamp, is64))
            .IsNothing())
      return {};
  }
  Local<Object> memory;
  if (!orig->NewInstance(context, 1, &arg).ToLocal(&memory)) return {};
  Track(iso, memory, maximum * kPageSize);
  return memory;
}

// A memory for a rewritten module's import, from its field name.
v8::MaybeLocal<Object> NewImportedMemory(Local<Context> context,
                                         Local<Function> orig,
                                         const Limits& l) {
  Isolate* isolate =
      Isolate::GetCurrent();  // (no Context::GetIsolate in V8 14)
  bool is64 = l.flags & kMemory64;
  Local<Object> d = Object::New(isolate);
  auto set = [&](const char* key, Local<Value> v) {
    return d
        ->CreateDataProperty(
            context, String::NewFromUtf8(isolate, key).ToLocalChecked(), v)
        .FromMaybe(false);
  };
  if (!set("initial", PagesValue(isolate, l.initial, is64))) return {};
  if ((l.flags & kHasMaximum) &&
      !set("maximum", PagesValue(isolate, l.maximum, is64)))
    return {};
  if ((l.flags & kShared) && !set("shared", v8::True(isolate))) return {};
  if (is64 && !set("address", String::NewFromUtf8Literal(isolate, "i64")))
    return {};
  return NewMemory(context, orig, d);
}

std::string Utf8(Isolate* isolate, Local<Value> v) {
  String::Utf8Value s(isolate, v);
  return *s != nullptr ? std::string(*s, s.length()) : std::string();
}

// The rewritten imports of a module: field name and limits.
bool MemoryImports(Local<Context> context, Local<Function> imports_fn,
                   Local<Value> module,
                   std::vector<std::pair<std::string, Limits>>* out) {
  Isolate* isolate =
      Isolate::GetCurrent();  // (no Context::GetIsolate in V8 14)
  Local<Value> list;
  if (!imports_fn->Call(context, v8::Undefined(isolate), 1, &module)
           .ToLocal(&list) ||
      !list->IsArray())
    return false;
  Local<Array> a = list.As<Array>();
  for (uint32_t i = 0; i < a->Length(); i++) {
    Local<Value> e, mod, name, kind;
    if (!a->Get(context, i).ToLocal(&e) || !e->IsObject() ||
        !e.As<Object>()
             ->Get(context, String::NewFromUtf8Literal(isolate, "module"))
             .ToLocal(&mod) ||
        !e.As<Object>()
             ->Get(context, String::NewFromUtf8Literal(isolate, "name"))
             .ToLocal(&name) ||
        !e.As<Object>()
             ->Get(context, String::NewFromUtf8Literal(isolate, "kind"))
             .ToLocal(&kind))
      return false;
    Limits l;
    std::string field = Utf8(isolate, name);
    if (Utf8(isolate, mod) == kMemoryModule &&
        Utf8(isolate, kind) == "memory" && ParseFieldName(field, &l))
      out->emplace_back(std::move(field), l);
  }
  return true;
}

// The import object instantiation sees: the caller's, with kMemoryModule
// supplied (on an object whose prototype is the caller's, which is left
// as it was). Unchanged when the module has no memory of its own, or when
// V8 would reject the caller's.
v8::MaybeLocal<Value> WithMemories(
    Local<Context> context, Local<Function> memory_fn, Local<Value> imports,
    const std::vector<std::pair<std::string, Limits>>& memories) {
  Isolate* isolate =
      Isolate::GetCurrent();  // (no Context::GetIsolate in V8 14)
  if (memories.empty() || !(imports->IsUndefined() || imports->IsObject()))
    return imports;
  Local<Object> ours = Object::New(isolate);
  for (const auto& entry : memories) {
    Local<Object> memory;
    if (!NewImportedMemory(context, memory_fn, entry.second).ToLocal(&memory) ||
        ours->CreateDataProperty(
                context,
                String::NewFromUtf8(isolate, entry.first.c_str())
                    .ToLocalChecked(),
                memory)
            .IsNothing())
      return {};
  }
  Local<Object> result = Object::New(isolate);
  if (imports->IsObject() &&
      SetPrototypeOf(context, result, imports).IsNothing())
    return {};
  if (result
          ->CreateDataProperty(
              context, String::NewFromUtf8Literal(isolate, kMemoryModule), ours)
          .IsNothing())
    return {};
  return result;
}

void ThrowUnsupported(Isolate* isolate) {
  isolate->ThrowException(v8::Exception::WasmCompileError(
      String::NewFromUtf8Literal(isolate,
                                 "WebAssembly memories with custom page "
                                 "sizes are not supported under a memory "
                                 "limit")));
}

// The source argument, rewritten when it has memories of its own (in
// *memories). Empty with an exception.
v8::MaybeLocal<Value> Source(Isolate* isolate, Local<Value> source,
                             std::vector<Limits>* memories) {
  std::string bytes, rewritten;
  if (!CopyBytes(source, &bytes)) return source;
  switch (RewriteModule(reinterpret_cast<const uint8_t*>(bytes.data()),
                        bytes.size(), &rewritten, memories)) {
    case Rewrite::kUnchanged:
      return source;
    case Rewrite::kUnsupported:
      ThrowUnsupported(isolate);
      return {};
    case Rewrite::kRewritten:
      break;
  }
  return NewBytes(isolate, std::move(rewritten));
}

std::vector<std::pair<std::string, Limits>> Named(
    const std::vector<Limits>& memories) {
  std::vector<std::pair<std::string, Limits>> out;
  for (size_t i = 0; i < memories.size(); i++)
    out.emplace_back(FieldName(i, memories[i]), memories[i]);
  return out;
}

std::vector<Local<Value>> Args(const FunctionCallbackInfo<Value>& info) {
  std::vector<Local<Value>> args;
  for (int i = 0; i < info.Length(); i++) args.push_back(info[i]);
  return args;
}

void ThrowNotConstructed(Isolate* isolate, const char* name) {
  std::string message =
      std::string("WebAssembly.") + name + " must be invoked with 'new'";
  isolate->ThrowException(v8::Exception::TypeError(
      String::NewFromUtf8(isolate, message.c_str()).ToLocalChecked()));
}

// A promise rejected with what `try_catch` caught, for the async entries.
void RejectWith(const FunctionCallbackInfo<Value>& info,
                v8::TryCatch* try_catch) {
  Local<Context> context = info.GetIsolate()->GetCurrentContext();
  if (!try_catch->CanContinue() || !try_catch->HasCaught()) {
    try_catch->ReThrow();
    return;
  }
  Local<v8::Promise::Resolver> resolver;
  if (!v8::Promise::Resolver::New(context).ToLocal(&resolver)) return;
  Local<Value> exception = try_catch->Exception();
  try_catch->Reset();
  if (resolver->Reject(context, exception).IsNothing()) return;
  info.GetReturnValue().Set(resolver->GetPromise());
}

// ---- the wrappers -------------------------------------------------------

void MemoryCtor(const FunctionCallbackInfo<Value>& info) {
  Isolate* isolate = info.GetIsolate();
  if (!info.IsConstructCall()) return ThrowNotConstructed(isolate, "Memory");
  Local<Context> context = isolate->GetCurrentContext();
  Local<Object> memory;
  if (NewMemory(context, Orig(info, kOrigMemory).As<Function>(), info[0])
          .ToLocal(&memory))
    info.GetReturnValue().Set(memory);
}

void MemoryGrow(const FunctionCallbackInfo<Value>& info) {
  Isolate* isolate = info.GetIsolate();
  cdn_engine_isolate_t* iso = IsoOf(isolate);
  std::vector<Local<Value>> args = Args(info);
  Local<Value> result;
  // Grown first (V8 throws its RangeError past the memory's maximum, which
  // is at most the limit), then checked: past the limit, the run stops
  // before the new pages can be used.
  if (!CallOrig(info, kOrigGrow, &args).ToLocal(&result) || !Fits(iso, 0))
    return;
  info.GetReturnValue().Set(result);
}

// The length of a module's bytes (a view or a buffer; 0 for anything
// else, which V8 rejects).
uint64_t WireBytes(Local<Value> source) {
  if (source->IsArrayBufferView())
    return source.As<v8::ArrayBufferView>()->ByteLength();
  if (source->IsArrayBuffer())
    return source.As<v8::ArrayBuffer>()->ByteLength();
  if (source->IsSharedArrayBuffer())
    return source.As<v8::SharedArrayBuffer>()->ByteLength();
  return 0;
}

// Charge a compiled module until it is collected (a phantom handle).
void TrackModule(cdn_engine_isolate_t* iso, Local<Object> module,
                 uint64_t cost) {
  if (cost == 0) return;
  iso->wasm_modules.emplace_back(v8::Global<Object>(iso->isolate, module),
                                 cost);
  iso->wasm_modules.back().first.SetWeak();
}

// The module an async compilation gave (compile: the module; instantiate
// from bytes: { module, instance }), charged. Data: its cost.
void TrackAsyncModule(const FunctionCallbackInfo<Value>& info) {
  Isolate* isolate = info.GetIsolate();
  Local<Context> context = isolate->GetCurrentContext();
  Local<Value> v = info[0];
  if (v->IsObject() && !v->IsWasmModuleObject() &&
      !v.As<Object>()
           ->Get(context, String::NewFromUtf8Literal(isolate, "module"))
           .ToLocal(&v))
    return;
  if (!v->IsWasmModuleObject()) return;
  cdn_engine_isolate_t* iso = IsoOf(isolate);
  uint64_t cost = static_cast<uint64_t>(info.Data().As<v8::Number>()->Value());
  TrackModule(iso, v.As<Object>(), cost);
  (void)Fits(iso, 0);  // past the limit: the sandbox stops here
}

void IgnoreRejection(const FunctionCallbackInfo<Value>&) {}

void ModuleCtor(const FunctionCallbackInfo<Value>& info) {
  Isolate* isolate = info.GetIsolate();
  if (!info.IsConstructCall()) return ThrowNotConstructed(isolate, "Module");
  std::vector<Local<Value>> args = Args(info);
  std::vector<Limits> memories;
  if (!args.empty() && !Source(isolate, args[0], &memories).ToLocal(&args[0]))
    return;
  uint64_t cost = args.empty() ? 0 : WireBytes(args[0]) * kModuleFactor;
  if (!Fits(IsoOf(isolate), cost)) return;
  Local<Object> module;
  if (NewOrig(info, kOrigModule, &args).ToLocal(&module)) {
    TrackModule(IsoOf(isolate), module, cost);
    info.GetReturnValue().Set(module);
  }
}

// The promise of an async compilation, counted while it is pending (the
// host loop stays alive meanwhile, as Node's does for its own: the result
// would otherwise be lost when nothing else keeps the host process
// running). Counted by its own state, not by a reaction, which a
// termination could drop; and only while its context lives.
void ReturnCounted(const FunctionCallbackInfo<Value>& info,
                   Local<Value> result) {
  Isolate* isolate = info.GetIsolate();
  cdn_engine_isolate_t* iso = IsoOf(isolate);
  info.GetReturnValue().Set(result);
  if (!result->IsPromise()) return;
  auto* rec = static_cast<ContextRecord*>(GetContextPointer(
      isolate->GetCurrentContext(), kContextRecordSlot, kTagContextRecord));
  if (rec == nullptr) return;
  iso->wasm_pending.push_back(
      {v8::Global<v8::Promise>(isolate, result.As<v8::Promise>()), rec->link});
  iso->wasm_async.store(static_cast<int>(iso->wasm_pending.size()),
                        std::memory_order_release);
}

// An async entry's end: the original's promise, counted; or, when `ok` is
// false or the original threw, a promise rejected with what was caught.
void FinishAsync(const FunctionCallbackInfo<Value>& info, int which, bool ok,
                 std::vector<Local<Value>>* args, v8::TryCatch* try_catch) {
  cdn_engine_isolate_t* iso = IsoOf(info.GetIsolate());
  if (ok && iso->wasm_pending.size() >= kMaxPending) {
    RefreshWasmMemories(iso);
    if (iso->wasm_pending.size() >= kMaxPending) {
      info.GetIsolate()->ThrowException(
          v8::Exception::RangeError(String::NewFromUtf8Literal(
              info.GetIsolate(),
              "WebAssembly: a sandbox has at most 64 compilations pending")));
      ok = false;
    }
  }
  uint64_t cost = 0;
  if (ok && !args->empty() && !(*args)[0]->IsWasmModuleObject()) {
    cost = WireBytes((*args)[0]) * kModuleFactor;
    ok = Fits(iso, cost);
    if (!ok) return;  // a stop
  }
  Local<Value> result;
  if (ok && CallOrig(info, which, args).ToLocal(&result)) {
    Local<Context> context = info.GetIsolate()->GetCurrentContext();
    Local<Function> track, ignore;
    Local<v8::Promise> derived;
    if (cost > 0 && result->IsPromise() &&
        Function::New(
            context, TrackAsyncModule,
            v8::Number::New(info.GetIsolate(), static_cast<double>(cost)), 1,
            v8::ConstructorBehavior::kThrow)
            .ToLocal(&track) &&
        Function::New(context, IgnoreRejection, Local<Value>(), 1,
                      v8::ConstructorBehavior::kThrow)
            .ToLocal(&ignore))
      // (Its own promise: nothing awaits it; a failure leaves it unseen.)
      derived = result.As<v8::Promise>()
                    ->Then(context, track, ignore)
                    .FromMaybe(Local<v8::Promise>());
    return ReturnCounted(info, result);
  }
  RejectWith(info, try_catch);
}

void Compile(const FunctionCallbackInfo<Value>& info) {
  Isolate* isolate = info.GetIsolate();
  v8::TryCatch try_catch(isolate);
  std::vector<Local<Value>> args = Args(info);
  std::vector<Limits> memories;
  bool ok =
      args.empty() || Source(isolate, args[0], &memories).ToLocal(&args[0]);
  FinishAsync(info, kOrigCompile, ok, &args, &try_catch);
}

void Instantiate(const FunctionCallbackInfo<Value>& info) {
  Isolate* isolate = info.GetIsolate();
  Local<Context> context = isolate->GetCurrentContext();
  v8::TryCatch try_catch(isolate);
  std::vector<Local<Value>> args = Args(info);
  while (args.size() < 2) args.push_back(v8::Undefined(isolate));
  std::vector<std::pair<std::string, Limits>> memories;
  bool ok;
  if (args[0]->IsWasmModuleObject()) {
    ok = MemoryImports(context, Orig(info, kOrigImports).As<Function>(),
                       args[0], &memories);
  } else {
    std::vector<Limits> own;
    ok = Source(isolate, args[0], &own).ToLocal(&args[0]);
    memories = Named(own);
  }
  ok = ok && WithMemories(context, Orig(info, kOrigMemory).As<Function>(),
                          args[1], memories)
                 .ToLocal(&args[1]);
  FinishAsync(info, kOrigInstantiate, ok, &args, &try_catch);
}

void InstanceCtor(const FunctionCallbackInfo<Value>& info) {
  Isolate* isolate = info.GetIsolate();
  if (!info.IsConstructCall()) return ThrowNotConstructed(isolate, "Instance");
  Local<Context> context = isolate->GetCurrentContext();
  std::vector<Local<Value>> args = Args(info);
  while (args.size() < 2) args.push_back(v8::Undefined(isolate));
  std::vector<std::pair<std::string, Limits>> memories;
  if (args[0]->IsWasmModuleObject() &&
      (!MemoryImports(context, Orig(info, kOrigImports).As<Function>(), args[0],
                      &memories) ||
       !WithMemories(context, Orig(info, kOrigMemory).As<Function>(), args[1],
                     memories)
            .ToLocal(&args[1])))
    return;
  Local<Object> instance;
  if (NewOrig(info, kOrigInstance, &args).ToLocal(&instance))
    info.GetReturnValue().Set(instance);
}

// WebAssembly.Module.imports, without the imports the rewrite added.
void Imports(const FunctionCallbackInfo<Value>& info) {
  Isolate* isolate = info.GetIsolate();
  Local<Context> context = isolate->GetCurrentContext();
  std::vector<Local<Value>> args = Args(info);
  Local<Value> list;
  if (!CallOrig(info, kOrigImports, &args).ToLocal(&list)) return;
  if (!list->IsArray()) return info.GetReturnValue().Set(list);
  Local<Array> in = list.As<Array>();
  Local<Array> out = Array::New(isolate);
  uint32_t n = 0;
  for (uint32_t i = 0; i < in->Length(); i++) {
    Local<Value> e, mod, kind;
    if (!in->Get(context, i).ToLocal(&e)) return;
    if (e->IsObject() &&
        e.As<Object>()
            ->Get(context, String::NewFromUtf8Literal(isolate, "module"))
            .ToLocal(&mod) &&
        e.As<Object>()
            ->Get(context, String::NewFromUtf8Literal(isolate, "kind"))
            .ToLocal(&kind) &&
        Utf8(isolate, mod) == kMemoryModule && Utf8(isolate, kind) == "memory")
      continue;
    if (out->Set(context, n++, e).IsNothing()) return;
  }
  info.GetReturnValue().Set(out);
}

bool Replace(Local<Context> context, Local<Object> holder, const char* name,
             v8::FunctionCallback callback, Local<Array> data, int length,
             bool constructor, Local<Value>* original) {
  Isolate* isolate =
      Isolate::GetCurrent();  // (no Context::GetIsolate in V8 14)
  Local<String> key = String::NewFromUtf8(isolate, name).ToLocalChecked();
  Local<Value> orig;
  if (!holder->Get(context, key).ToLocal(&orig) || !orig->IsFunction())
    return false;
  Local<Function> fn;
  if (!Function::New(context, callback, data, length,
                     constructor ? v8::ConstructorBehavior::kAllow
                                 : v8::ConstructorBehavior::kThrow)
           .ToLocal(&fn))
    return false;
  fn->SetName(key);
  if (constructor) {
    // Same prototype object, and its constructor is the wrapper.
    Local<Value> proto;
    if (!orig.As<Object>()
             ->Get(context, String::NewFromUtf8Literal(isolate, "prototype"))
             .ToLocal(&proto) ||
        !proto->IsObject() ||
        !fn->DefineOwnProperty(
               context, String::NewFromUtf8Literal(isolate, "prototype"), proto,
               static_cast<v8::PropertyAttribute>(v8::ReadOnly | v8::DontEnum |
                                                  v8::DontDelete))
             .FromMaybe(false) ||
        !proto.As<Object>()
             ->DefineOwnProperty(
                 context, String::NewFromUtf8Literal(isolate, "constructor"),
                 fn, v8::DontEnum)
             .FromMaybe(false))
      return false;
    // Static methods (Module.imports, exports, customSections).
    Local<Array> names;
    if (!orig.As<Object>()->GetOwnPropertyNames(context).ToLocal(&names))
      return false;
    for (uint32_t i = 0; i < names->Length(); i++) {
      Local<Value> k, v;
      if (!names->Get(context, i).ToLocal(&k)) return false;
      std::string name_of = Utf8(isolate, k);
      if (name_of == "length" || name_of == "name" || name_of == "prototype")
        continue;
      if (!orig.As<Object>()->Get(context, k).ToLocal(&v) ||
          !fn->DefineOwnProperty(context, k.As<String>(), v, v8::DontEnum)
               .FromMaybe(false))
        return false;
    }
  }
  *original = orig;
  return holder->DefineOwnProperty(context, key, fn, v8::DontEnum)
      .FromMaybe(false);
}

}  // namespace

size_t ExternalMemory(cdn_engine_isolate_t* iso, v8::HeapStatistics& hs) {
  size_t own =
      adjust_shown.load() == 0 ? static_cast<size_t>(iso->wasm_bytes) : 0;
  // (Live modules only: a collection may have emptied some handles, and
  // this may run inside one, where nothing may be freed.)
  uint64_t modules = 0;
  for (const auto& m : iso->wasm_modules)
    if (!m.first.IsEmpty()) modules += m.second;
  return hs.external_memory() + own + static_cast<size_t>(modules);
}

bool InstallWasmLimits(cdn_engine_isolate_t* iso, Local<Context> context) {
  Isolate* isolate = iso->isolate;
  if (iso->memory_limit == SIZE_MAX) return true;
  ProbeAdjustShown(isolate);
  Local<Value> wasm;
  if (!context->Global()
           ->Get(context, String::NewFromUtf8Literal(isolate, "WebAssembly"))
           .ToLocal(&wasm))
    return false;
  if (!wasm->IsObject()) return true;  // (--jitless: none)
  Local<Object> ns = wasm.As<Object>();
  Local<Array> data = Array::New(isolate, kOrigCount);
  Local<Value> orig[kOrigCount];
  Local<Value> memory_proto, module_fn;
  if (!Replace(context, ns, "Memory", MemoryCtor, data, 1, true,
               &orig[kOrigMemory]) ||
      !orig[kOrigMemory]
           .As<Object>()
           ->Get(context, String::NewFromUtf8Literal(isolate, "prototype"))
           .ToLocal(&memory_proto) ||
      !memory_proto->IsObject() ||
      !Replace(context, memory_proto.As<Object>(), "grow", MemoryGrow, data, 1,
               false, &orig[kOrigGrow]) ||
      !Replace(context, ns, "Module", ModuleCtor, data, 1, true,
               &orig[kOrigModule]) ||
      !ns->Get(context, String::NewFromUtf8Literal(isolate, "Module"))
           .ToLocal(&module_fn) ||
      !Replace(context, module_fn.As<Object>(), "imports", Imports, data, 1,
               false, &orig[kOrigImports]) ||
      !Replace(context, ns, "compile", Compile, data, 1, false,
               &orig[kOrigCompile]) ||
      !Replace(context, ns, "instantiate", Instantiate, data, 1, false,
               &orig[kOrigInstantiate]) ||
      !Replace(context, ns, "Instance", InstanceCtor, data, 1, true,
               &orig[kOrigInstance]))
    return false;
  for (int i = 0; i < kOrigCount; i++) {
    if (data->Set(context, i, orig[i]).IsNothing()) return false;
  }
  return true;
}

void RefreshWasmMemories(cdn_engine_isolate_t* iso) {
  Refresh(iso);
  HandleScope scope(iso->isolate);
  auto& pending = iso->wasm_pending;
  pending.erase(std::remove_if(pending.begin(), pending.end(),
                               [iso](const auto& p) {
                                 auto link = p.second.lock();
                                 return link == nullptr ||
                                        link->rec == nullptr ||
                                        p.first.Get(iso->isolate)->State() !=
                                            v8::Promise::kPending;
                               }),
                pending.end());
  iso->wasm_async.store(static_cast<int>(pending.size()),
                        std::memory_order_release);
}

void FreeWasmMemories(cdn_engine_isolate_t* iso) {
  for (WasmMemory* m : iso->wasm_memories) delete m;
  all_memories.fetch_sub(iso->wasm_memories.size());
  iso->wasm_memories.clear();
  iso->wasm_count.store(0);
  iso->wasm_pending.clear();
  iso->wasm_async.store(0);
  iso->wasm_modules.clear();
}

}  // namespace cordon

namespace {

void PollInterrupt(Isolate* isolate, void* data) {
  auto* iso = static_cast<cdn_engine_isolate_t*>(data);
  if (iso->disposing) return;
  cordon::StartPoll(iso, cordon::kAsked);
  cordon::Refresh(iso);
  if (!iso->recovering && cordon::OverLimit(iso)) {
    iso->limit_hit.store(true);
    cordon::SettleLimit(iso);
  }
  (void)isolate;
}

}  // namespace

extern "C" int cdn_engine_has_async(cdn_engine_isolate_t* iso) {
  return iso->wasm_async.load(std::memory_order_acquire) > 0;
}

extern "C" int cdn_engine_poll(cdn_engine_isolate_t* iso) {
  // An ask still unanswered means the isolate is idle (or in one long
  // builtin): stop until the interrupt, answered, asks again.
  int s = iso->wasm_poll.load();
  for (;;) {
    bool stop = (s & cordon::kAsked) ||
                iso->wasm_count.load(std::memory_order_relaxed) == 0;
    int next = stop ? s & ~cordon::kPolling : s | cordon::kAsked;
    if (iso->wasm_poll.compare_exchange_weak(s, next)) {
      if (stop) return 0;
      break;
    }
  }
  iso->isolate->RequestInterrupt(PollInterrupt, iso);
  return 1;
}
