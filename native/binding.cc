// N-API entry point: storage objects, backend reporting, dtype conversion and the async ops.
// The TypeScript layer validates arguments first with user-facing messages; the checks here are the
// last line that guarantees no input can make a kernel read or write out of bounds.
#include <napi.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <cmath>
#include <functional>
#include <memory>
#include <mutex>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../cuda/common/attention_params.h"
#include "../cuda/common/half_convert.h"
#include "cpu/attention_backward_cpu.h"
#include "cpu/attention_cpu.h"
#include "cpu/attention_lanes_cpu.h"
#include "cpu/convert.h"
#include "cpu/mask_plan_cpu.h"
#include "cpu/gather_rows_cpu.h"
#include "cpu/isa.h"
#include "cpu/sparse_cpu.h"
#include "cpu/stream_merge_cpu.h"
#include "op_queue.h"
#include "storage.h"
#include "thread_pool.h"

#ifdef LK_WITH_CUDA
#include "../cuda/backend.h"
#endif

namespace lk {
namespace {

// ---------------------------------------------------------------- caller memory

// What this addon keeps per JS environment (main thread or worker): which thread runs it, whether
// it is still alive, and references to release on it that were dropped on another thread.
struct EnvState {
  napi_env env;
  std::thread::id thread;
  std::atomic<bool> alive{true};
  std::mutex mutex;
  std::vector<napi_ref> pending;
  void drain() {
    std::vector<napi_ref> refs;
    {
      std::lock_guard<std::mutex> lock(mutex);
      refs.swap(pending);
    }
    for (napi_ref r : refs) napi_delete_reference(env, r);
  }
};
struct EnvStateHolder {
  std::shared_ptr<EnvState> state;
  ~EnvStateHolder() { state->alive = false; }  // the environment is being torn down
};

std::shared_ptr<EnvState> StateOf(napi_env env) {
  return Napi::Env(env).GetInstanceData<EnvStateHolder>()->state;
}

// A caller's typed array used in place (tensor(..., { copy: false })): a strong reference keeps it
// alive for as long as any Buffer on its memory lives, op closures included.
class JsArrayOwner : public ExternalOwner {
 public:
  JsArrayOwner(std::shared_ptr<EnvState> state, napi_ref ref) : state_(std::move(state)), ref_(ref) {}
  ~JsArrayOwner() override {
    if (!state_->alive) return;  // the environment (and the array) are gone already
    if (std::this_thread::get_id() == state_->thread) {
      napi_delete_reference(state_->env, ref_);
    } else {  // only the JS thread may touch references: released at its next call into the addon
      std::lock_guard<std::mutex> lock(state_->mutex);
      state_->pending.push_back(ref_);
    }
  }
  // Called on the JS thread only (BufferOf): a transferred array's memory belongs to someone else.
  bool detached() const override {
    napi_value array, buffer;
    bool is_detached = false;
    if (napi_get_reference_value(state_->env, ref_, &array) != napi_ok || array == nullptr) return true;
    if (napi_get_typedarray_info(state_->env, array, nullptr, nullptr, nullptr, &buffer, nullptr) != napi_ok) return true;
    return napi_is_detached_arraybuffer(state_->env, buffer, &is_detached) != napi_ok || is_detached;
  }

 private:
  std::shared_ptr<EnvState> state_;
  napi_ref ref_;
};

// The bytes of a typed array argument (checked to be one).
void* TypedArrayBytes(const Napi::TypedArray& a) {
  return static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset();
}

// ---------------------------------------------------------------- Storage

// Device memory is written on the device's stream (cuda/runtime.cu), issued right here on the JS
// thread: the data is staged in pinned memory at the call, so the caller's array may change at once,
// and every op using the tensor is issued later on the same stream. An issue error is thrown here.
std::string ZeroOnStream(const BufferRef& buf) {
#ifdef LK_WITH_CUDA
  return cuda::submit("zero-filled tensor", [&] { return cuda::zero_async(buf->ptr, buf->bytes); }, nullptr);
#else
  (void)buf;
  return "CUDA support was not compiled into this build";
#endif
}

std::string UploadOnStream(const BufferRef& buf, const void* host) {
#ifdef LK_WITH_CUDA
  return cuda::submit("tensor upload", [&] { return cuda::upload_async(buf->ptr, host, buf->bytes); }, nullptr);
#else
  (void)buf, (void)host;
  return "CUDA support was not compiled into this build";
#endif
}

// Queues `work` on `device`'s op queue and settles a promise with its outcome (defined below).
using ResultOf = std::function<napi_value(napi_env)>;
Napi::Value Settle(Napi::Env env, Device device, const char* what, std::function<std::string()> work, ResultOf result = nullptr);

class Storage : public Napi::ObjectWrap<Storage> {
 public:
  static Napi::FunctionReference* constructor;

  static Napi::Function Init(Napi::Env env) {
    Napi::Function cls = DefineClass(env, "Storage",
                                     {InstanceMethod("dispose", &Storage::Dispose),
                                      InstanceMethod("write", &Storage::Write),
                                      InstanceMethod("read", &Storage::Read),
                                      InstanceMethod("copyTo", &Storage::CopyTo),
                                      InstanceMethod("share", &Storage::Share),
                                      InstanceMethod("view", &Storage::View),
                                      InstanceMethod("readInto", &Storage::ReadInto),
                                      InstanceMethod("copyFrom", &Storage::CopyFrom),
                                      InstanceMethod("hostView", &Storage::HostView),
                                      InstanceAccessor("external", &Storage::External, nullptr),
                                      InstanceAccessor("bytes", &Storage::Bytes, nullptr),
                                      InstanceAccessor("device", &Storage::DeviceName, nullptr),
                                      InstanceAccessor("disposed", &Storage::Disposed, nullptr)});
    constructor = new Napi::FunctionReference(Napi::Persistent(cls));
    return cls;
  }

  // new Storage(device, bytes, zero?): allocates (zero-filled when asked); memory is reported to V8
  // for as long as JS owns it.
  explicit Storage(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Storage>(info) {
    Napi::Env env = info.Env();
    StateOf(env)->drain();
    if (info.Length() == 1 && info[0].IsExternal()) {  // share() / view() / wrap(): memory counted once, by its owner
      buffer_ = *info[0].As<Napi::External<BufferRef>>().Data();
      counted_ = false;
      return;
    }
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber())
      throw Napi::TypeError::New(env, "Storage(device, bytes): expected a device name and a byte count");
    Device device;
    if (!parse_device(info[0].As<Napi::String>(), &device))
      throw Napi::TypeError::New(env, "device: expected 'cpu' or 'cuda'");
    const double bytes = info[1].As<Napi::Number>().DoubleValue();
    if (!(bytes >= 0) || bytes != std::floor(bytes) || bytes > 1.0e15)
      throw Napi::RangeError::New(env, "bytes: expected a non-negative integer");
    std::string error;
    buffer_ = allocate(device, (size_t)bytes, &error);
    if (!buffer_) throw Napi::Error::New(env, error);
    if (info.Length() > 2 && info[2].ToBoolean().Value()) {
      error = device == Device::kCuda ? ZeroOnStream(buffer_) : zero_bytes(device, buffer_->ptr, buffer_->bytes);
      if (!error.empty()) throw Napi::Error::New(env, error);
    }
    Napi::MemoryManagement::AdjustExternalMemory(env, (int64_t)buffer_->bytes);
  }

  ~Storage() override { Release(); }

  static BufferRef BufferOf(const Napi::Value& v, const char* name) {
    Napi::Env env = v.Env();
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(constructor->Value()))
      throw Napi::TypeError::New(env, std::string(name) + ": expected a tensor storage");
    Storage* s = Napi::ObjectWrap<Storage>::Unwrap(v.As<Napi::Object>());
    if (!s->buffer_) throw Napi::Error::New(env, "tensor is disposed");
    CheckAttached(env, s->buffer_, name);
    return s->buffer_;
  }

  // A Storage object for `buf` (a view or wrapped memory; not counted again).
  static Napi::Object Wrap(Napi::Env env, BufferRef buf) {
    return constructor->New({Napi::External<BufferRef>::New(env, &buf)});
  }

  static void CheckAttached(Napi::Env env, const BufferRef& buf, const char* name) {
    const ExternalOwner* ext = buf->external_owner();
    if (ext && ext->detached())
      throw Napi::TypeError::New(env, std::string(name) + ": the array this tensor wraps (copy: false) was transferred or detached");
  }

 private:
  void Release() {
    if (!buffer_) return;
    if (counted_) Napi::MemoryManagement::AdjustExternalMemory(Env(), -(int64_t)buffer_->bytes);
    buffer_.reset();  // freed now, or when the last async op using it ends
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    Release();
    return info.Env().Undefined();
  }

  Napi::Value Bytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), buffer_ ? (double)buffer_->bytes : 0.0);
  }
  Napi::Value DeviceName(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), buffer_ ? device_name(buffer_->device) : "cpu");
  }
  Napi::Value Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !buffer_); }
  Napi::Value External(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), buffer_ && buffer_->external_owner() != nullptr);
  }

  BufferRef Live(Napi::Env env) {
    if (!buffer_) throw Napi::Error::New(env, "tensor is disposed");
    CheckAttached(env, buffer_, "tensor");
    return buffer_;
  }

  // view(byteOffset, bytes) -> a Storage on bytes [byteOffset, byteOffset + bytes) of this one: no
  // copy; the memory stays alive until this and every view of it are disposed or collected.
  Napi::Value View(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    BufferRef buf = Live(env);
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
      throw Napi::TypeError::New(env, "view(byteOffset, bytes): expected two integers");
    const double off = info[0].As<Napi::Number>().DoubleValue(), len = info[1].As<Napi::Number>().DoubleValue();
    if (!(off >= 0 && len >= 0) || off != std::floor(off) || len != std::floor(len) || off + len > (double)buf->bytes)
      throw Napi::RangeError::New(env, "view: bytes [" + std::to_string(off) + ", +" + std::to_string(len) +
                                           ") lie outside the storage's " + std::to_string(buf->bytes));
    return Wrap(env, view_of(buf, (size_t)off, (size_t)len));
  }

  // hostView() -> an ArrayBuffer on this CPU storage's own memory (no copy), for handing a tensor to
  // onnxruntime-node; it keeps the memory alive until it is collected.
  Napi::Value HostView(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    BufferRef buf = Live(env);
    if (buf->device != Device::kCpu) throw Napi::TypeError::New(env, "tensor: on cuda; only CPU memory can be viewed in place");
    if (buf->bytes == 0) return Napi::ArrayBuffer::New(env, 0);
    auto* keep = new BufferRef(buf);
    return Napi::ArrayBuffer::New(env, buf->ptr, buf->bytes, [](Napi::Env, void*, BufferRef* k) { delete k; }, keep);
  }

  // readInto(typedArray) -> Promise<void>: copies the storage into the caller's array (of exactly
  // its size) off the event loop; the array is referenced until the copy is done.
  Napi::Value ReadInto(const Napi::CallbackInfo& info);

  // copyFrom(storage) -> Promise<void>: this storage's bytes from another of the same size (any devices).
  Napi::Value CopyFrom(const Napi::CallbackInfo& info);

  // write(typedArray): copies exactly `bytes` bytes from the view into the storage.
  Napi::Value Write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    BufferRef buf = Live(env);
    if (info.Length() < 1 || !info[0].IsTypedArray()) throw Napi::TypeError::New(env, "data: expected a typed array");
    Napi::TypedArray src = info[0].As<Napi::TypedArray>();
    if (src.ByteLength() != buf->bytes)
      throw Napi::RangeError::New(env, "data: expected " + std::to_string(buf->bytes) + " bytes, got " +
                                           std::to_string(src.ByteLength()));
    const void* from = static_cast<const uint8_t*>(src.ArrayBuffer().Data()) + src.ByteOffset();
    const std::string err = buf->device == Device::kCuda ? UploadOnStream(buf, from) : copy_bytes(buf->device, buf->ptr, Device::kCpu, from, buf->bytes);
    if (!err.empty()) throw Napi::Error::New(env, err);
    return env.Undefined();
  }

  // share() -> a second Storage on the same memory, which stays alive until every handle is disposed
  // or collected. Ops take one at the call, so a caller may dispose its tensor right after.
  Napi::Value Share(const Napi::CallbackInfo& info) {
    return Wrap(info.Env(), Live(info.Env()));
  }

  // read() -> Promise<ArrayBuffer>: a host copy, made off the event loop.
  Napi::Value Read(const Napi::CallbackInfo& info);

  // copyTo(device) -> Promise<Storage> with the same bytes on that device, copied off the event loop.
  Napi::Value CopyTo(const Napi::CallbackInfo& info);

  BufferRef buffer_;
  bool counted_ = true;  // this handle reported the memory to V8
};

Napi::FunctionReference* Storage::constructor = nullptr;

// Runs `work` on a libuv worker thread and settles a promise: resolve(result()) or reject(Error).
class PromiseWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<std::string()>;
  using Result = std::function<Napi::Value(Napi::Env)>;
  PromiseWorker(Napi::Env env, Work work, Result result)
      : Napi::AsyncWorker(env, "lifelong-kernels"), deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)), result_(std::move(result)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      const std::string err = work_();
      if (!err.empty()) SetError(err);
    } catch (const std::bad_alloc&) {
      SetError("out of memory");
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(result_ ? result_(Env()) : Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  Result result_;
};

// Copies that touch device memory go through the CUDA op queue and the stream, after every op
// called before; the promise settles when the stream has executed the copy (a copy to the host is
// staged in pinned memory and lands in the destination on the completion thread).
#ifdef LK_WITH_CUDA
std::string CudaCopy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (src_device == Device::kCuda && dst_device == Device::kCuda) return cuda::copy_on_device_async(dst, src, bytes);
  if (dst_device == Device::kCuda) return cuda::upload_async(dst, src, bytes);
  return cuda::download_async(dst, src, bytes);
}
#endif

Napi::Value Storage::CopyTo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BufferRef buf = Live(env);
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "device: expected 'cpu' or 'cuda'");
  Napi::Object out = constructor->New({info[0], Napi::Number::New(env, (double)buf->bytes)});
  BufferRef dst = BufferOf(out, "device");
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out));
  if (buf->device == Device::kCuda || dst->device == Device::kCuda) {
#ifdef LK_WITH_CUDA
    return Settle(env, Device::kCuda, "tensor copy", [buf, dst] { return CudaCopy(dst->ptr, dst->device, buf->ptr, buf->device, buf->bytes); },
                  [ref](napi_env) -> napi_value { return ref->Value(); });
#endif
  }
  auto* worker = new PromiseWorker(
      env, [buf, dst] { return copy_bytes(dst->device, dst->ptr, buf->device, buf->ptr, buf->bytes); },
      [ref](Napi::Env) -> Napi::Value { return ref->Value(); });
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value Storage::ReadInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BufferRef buf = Live(env);
  if (info.Length() < 1 || !info[0].IsTypedArray()) throw Napi::TypeError::New(env, "array: expected a typed array");
  Napi::TypedArray dst = info[0].As<Napi::TypedArray>();
  if (dst.ByteLength() != buf->bytes)
    throw Napi::RangeError::New(env, "array: expected " + std::to_string(buf->bytes) + " bytes, got " + std::to_string(dst.ByteLength()));
  auto ref = std::make_shared<Napi::Reference<Napi::TypedArray>>(Napi::Persistent(dst));
  void* to = TypedArrayBytes(dst);
  if (buf->device == Device::kCuda) {
#ifdef LK_WITH_CUDA
    return Settle(env, Device::kCuda, "tensor read", [buf, to] { return cuda::download_async(to, buf->ptr, buf->bytes); },
                  [ref](napi_env e) -> napi_value { return Napi::Env(e).Undefined(); });
#endif
  }
  auto* worker = new PromiseWorker(
      env, [buf, to] { return copy_bytes(Device::kCpu, to, buf->device, buf->ptr, buf->bytes); },
      [ref](Napi::Env e) -> Napi::Value { return e.Undefined(); });
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value Storage::CopyFrom(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BufferRef dst = Live(env);
  if (info.Length() < 1) throw Napi::TypeError::New(env, "source: expected a tensor storage");
  BufferRef src = BufferOf(info[0], "source");
  if (src->bytes != dst->bytes)
    throw Napi::RangeError::New(env, "source: holds " + std::to_string(src->bytes) + " bytes, expected " + std::to_string(dst->bytes));
  if (src->device == Device::kCuda || dst->device == Device::kCuda) {
#ifdef LK_WITH_CUDA
    return Settle(env, Device::kCuda, "tensor copy", [src, dst] { return CudaCopy(dst->ptr, dst->device, src->ptr, src->device, dst->bytes); });
#endif
  }
  auto* worker = new PromiseWorker(
      env, [src, dst] { return copy_bytes(dst->device, dst->ptr, src->device, src->ptr, dst->bytes); }, nullptr);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value Storage::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BufferRef buf = Live(env);
  Napi::ArrayBuffer host = Napi::ArrayBuffer::New(env, buf->bytes);
  auto ref = std::make_shared<Napi::Reference<Napi::ArrayBuffer>>(Napi::Persistent(host));
  void* dst = host.Data();
  if (buf->device == Device::kCuda) {
#ifdef LK_WITH_CUDA
    return Settle(env, Device::kCuda, "tensor read", [buf, dst] { return cuda::download_async(dst, buf->ptr, buf->bytes); },
                  [ref](napi_env) -> napi_value { return ref->Value(); });
#endif
  }
  auto* worker = new PromiseWorker(
      env, [buf, dst] { return copy_bytes(Device::kCpu, dst, buf->device, buf->ptr, buf->bytes); },
      [ref](Napi::Env) -> Napi::Value { return ref->Value(); });
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// ---------------------------------------------------------------- limits

// The native limits, in one place; the TypeScript layer reads them (`limits()`) for its own checks
// and messages, and the argument readers below enforce them again.
constexpr int kMaxHeads = 65535;        // CUDA grid.y
constexpr int kMaxHeadDim = 256;        // D and Dv
constexpr int kMaxIndexerDim = 4096;
constexpr int kMaxTopK = 1 << 20;       // the CPU selection's k; CUDA's is cuda::topk_capacity()

// ---------------------------------------------------------------- argument helpers


int64_t IntField(const Napi::Object& o, const char* name, int64_t lo, int64_t hi) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string(name) + ": expected an integer");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= (double)lo && d <= (double)hi) || d != std::floor(d))
    throw Napi::RangeError::New(o.Env(), std::string(name) + ": expected an integer in [" + std::to_string(lo) +
                                             ", " + std::to_string(hi) + "], got " + std::to_string(d));
  return (int64_t)d;
}

double NumberField(const Napi::Object& o, const char* name) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string(name) + ": expected a number");
  return v.As<Napi::Number>().DoubleValue();
}

template <typename T, napi_typedarray_type kType>
bool CopyTyped(const Napi::Object& o, const char* name, std::vector<T>* out, bool optional) {
  Napi::Value v = o.Get(name);
  if (optional && (v.IsUndefined() || v.IsNull())) return false;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != kType)
    throw Napi::TypeError::New(o.Env(), std::string(name) + ": expected a " +
                                            (kType == napi_int32_array ? "Int32Array" : "Uint8Array"));
  Napi::TypedArray a = v.As<Napi::TypedArray>();
  const T* src = reinterpret_cast<const T*>(static_cast<const uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset());
  out->assign(src, src + a.ElementLength());
  return true;
}

// Offsets of `batch` sequences over `tokens` rows (validated; an owned copy).
std::shared_ptr<std::vector<int32_t>> ReadOffsets(const Napi::Object& a, const char* name, int64_t tokens, int* batch, int* max_len) {
  auto off = std::make_shared<std::vector<int32_t>>();
  CopyTyped<int32_t, napi_int32_array>(a, name, off.get(), false);
  Napi::Env env = a.Env();
  if (off->empty() || (*off)[0] != 0 || off->back() != tokens)
    throw Napi::RangeError::New(env, std::string(name) + ": expected offsets from 0 to " + std::to_string(tokens));
  *batch = (int)off->size() - 1;
  *max_len = 0;
  for (int b = 0; b < *batch; ++b) {
    if ((*off)[b + 1] < (*off)[b]) throw Napi::RangeError::New(env, std::string(name) + ": offsets must be nondecreasing");
    *max_len = std::max(*max_len, (*off)[b + 1] - (*off)[b]);
  }
  return off;
}

// An owned copy of one jagged layout, validated (SPEC §2).
struct OwnedLayout {
  std::shared_ptr<std::vector<int32_t>> offsets;
  std::vector<int32_t> segments;
  std::vector<uint8_t> roles;
  bool has_segments = false, has_roles = false;
  int max_len = 0;

  void read(const Napi::Object& o, const char* off, const char* seg, const char* role, int batch, int64_t tokens) {
    Napi::Env env = o.Env();
    int found_batch = 0;
    offsets = ReadOffsets(o, off, tokens, &found_batch, &max_len);
    if (found_batch != batch) throw Napi::RangeError::New(env, std::string(off) + ": expected batch + 1 offsets");
    has_segments = CopyTyped<int32_t, napi_int32_array>(o, seg, &segments, true);
    if (has_segments && (int64_t)segments.size() != tokens)
      throw Napi::RangeError::New(env, std::string(seg) + ": expected one segment per token");
    has_roles = CopyTyped<uint8_t, napi_uint8_array>(o, role, &roles, true);
    if (has_roles) {
      if ((int64_t)roles.size() != tokens) throw Napi::RangeError::New(env, std::string(role) + ": expected one role per token");
      for (uint8_t r : roles)
        if (r >= kNumRoles) throw Napi::RangeError::New(env, std::string(role) + ": roles must be 0, 1 or 2");
    }
  }
  LayoutView view() const {
    return LayoutView{offsets->data(), has_segments ? segments.data() : nullptr, has_roles ? roles.data() : nullptr};
  }
};

size_t DTypeSize(int dtype) { return dtype == kFloat16 || dtype == kBFloat16 ? 2 : 4; }

BufferRef StorageField(const Napi::Object& o, const char* name, Device device, size_t min_bytes, bool optional) {
  Napi::Value v = o.Get(name);
  if (optional && (v.IsUndefined() || v.IsNull())) return nullptr;
  BufferRef b = Storage::BufferOf(v, name);
  if (b->device != device) throw Napi::TypeError::New(o.Env(), std::string(name) + ": tensor is on another device");
  if (b->bytes < min_bytes)
    throw Napi::RangeError::New(o.Env(), std::string(name) + ": storage holds " + std::to_string(b->bytes) +
                                             " bytes, the op needs " + std::to_string(min_bytes));
  return b;
}

// ---------------------------------------------------------------- ops

// The argument object of a native op (the TypeScript layer always passes one).
Napi::Object ArgsObject(const Napi::CallbackInfo& info, const char* op) {
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(info.Env(), std::string(op) + ": expected an argument object");
  return info[0].As<Napi::Object>();
}

// One op in the addon's queue: `work` runs on the device's queue thread, then the promise settles
// on the JS thread through a thread-safe function (which also keeps the event loop alive meanwhile).
// A CUDA op's work only issues (copies and launches on the device's stream, cuda/runtime.h); its
// promise settles from the device's completion thread once the stream has executed it, so the
// queue thread goes on to the next op without waiting for the device. The op's captures (the
// buffers it uses) live in `work` until the promise has settled.
struct QueuedOp {
  napi_deferred deferred = nullptr;
  napi_threadsafe_function tsfn = nullptr;
  std::function<std::string()> work;
  ResultOf result;  // what the promise resolves with (undefined when empty), on the JS thread
  std::string error;
};

OpQueue& QueueFor(Device device) {
  // Never destroyed, as the thread pool: a job may still run while the process exits.
  static OpQueue* cpu = new OpQueue();
  static OpQueue* cuda = new OpQueue();
  return device == Device::kCuda ? *cuda : *cpu;
}

void SettleOnJsThread(napi_env env, napi_value, void*, void* data) {
  std::unique_ptr<QueuedOp> op(static_cast<QueuedOp*>(data));
  if (env == nullptr) {  // the environment is going away: nobody awaits the promise
    if (op->result) op.release();  // its references may not be deleted without an environment
    return;
  }
  Napi::HandleScope scope(env);
  StateOf(env)->drain();
  if (op->error.empty()) napi_resolve_deferred(env, op->deferred, op->result ? op->result(env) : Napi::Env(env).Undefined());
  else napi_reject_deferred(env, op->deferred, Napi::Error::New(env, op->error).Value());
}

// The work's error, or the message of any exception inside it (out of memory in a pool task, say).
std::string RunGuarded(const std::function<std::string()>& work) {
  try {
    return work();
  } catch (const std::bad_alloc&) {
    return "out of memory";
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown native error";
  }
}

// Runs `work` after every earlier op on `device` and returns a promise of its outcome (named
// `what` in an execution error of a CUDA op).
Napi::Value Settle(Napi::Env env, Device device, const char* what, std::function<std::string()> work, ResultOf result) {
  auto op = std::make_unique<QueuedOp>();
  napi_value promise;
  if (napi_create_promise(env, &op->deferred, &promise) != napi_ok) throw Napi::Error::New(env, "cannot create a promise");
  if (napi_create_threadsafe_function(env, nullptr, nullptr, Napi::String::New(env, "lifelong-kernels"), 0, 1, nullptr, nullptr,
                                      nullptr, SettleOnJsThread, &op->tsfn) != napi_ok)
    throw Napi::Error::New(env, "cannot create a thread-safe function");
  op->work = std::move(work);
  op->result = std::move(result);
  QueuedOp* raw = op.release();
  auto hand_over = [raw](const std::string& error) {
    raw->error = error;
    const napi_threadsafe_function tsfn = raw->tsfn;  // `raw` belongs to the JS thread once handed over
    if (napi_call_threadsafe_function(tsfn, raw, napi_tsfn_blocking) != napi_ok && !raw->result) delete raw;
    napi_release_threadsafe_function(tsfn, napi_tsfn_release);
  };
#ifdef LK_WITH_CUDA
  if (device == Device::kCuda) {
    QueueFor(device).push([raw, what, hand_over] { cuda::submit(what, [raw] { return RunGuarded(raw->work); }, hand_over); });
    return Napi::Value(env, promise);
  }
#else
  (void)what;
#endif
  QueueFor(device).push([raw, hand_over] { hand_over(RunGuarded(raw->work)); });
  return Napi::Value(env, promise);
}

Device DeviceArg(const Napi::Object& a) {
  Napi::Value dev = a.Get("device");
  Device device;
  if (!dev.IsString() || !parse_device(dev.As<Napi::String>(), &device)) throw Napi::TypeError::New(a.Env(), "device: expected 'cpu' or 'cuda'");
  return device;
}

int MaxTopK(Device device) {
#ifdef LK_WITH_CUDA
  if (device == Device::kCuda) return cuda::topk_capacity();
#endif
  (void)device;
  return kMaxTopK;
}

#ifdef LK_WITH_CUDA
#define LK_ON_DEVICE(device, cpu_call, cuda_call) \
  if ((device) == Device::kCpu) { cpu_call; return std::string(); } \
  return cuda_call;
#else
#define LK_ON_DEVICE(device, cpu_call, cuda_call) \
  if ((device) == Device::kCpu) { cpu_call; return std::string(); } \
  return std::string("CUDA support was not compiled into this build");
#endif


// ---------------------------------------------------------------- mask plans

// The rule's 18 bytes (SPEC §3 encoding of lib/rules.ts), validated.
MaskRule ReadRule(const Napi::Object& a) {
  std::vector<uint8_t> rule;
  CopyTyped<uint8_t, napi_uint8_array>(a, "rule", &rule, false);
  if (rule.size() != 2 * kNumRoles * kNumRoles) throw Napi::RangeError::New(a.Env(), "rule: expected 18 bytes");
  MaskRule out;
  for (int i = 0; i < kNumRoles * kNumRoles; ++i) {
    if (rule[i] >= kNumSegRelations) throw Napi::RangeError::New(a.Env(), "rule: unknown segment relation");
    out.seg[i / kNumRoles][i % kNumRoles] = rule[i];
    out.causal[i / kNumRoles][i % kNumRoles] = rule[kNumRoles * kNumRoles + i] ? 1 : 0;
  }
  return out;
}

// The owned layouts a plan's PlanInputs point into.
struct PlanLayouts {
  OwnedLayout q, kv;
  bool self = false;  // kv is q's layout
};

// A MaskPlan's native half: the PlanState (layouts, rule, geometries built so far) and its device.
// Ops take a reference to the state, so dispose() never frees a plan an op is walking.
class MaskPlanHandle : public Napi::ObjectWrap<MaskPlanHandle> {
 public:
  static Napi::FunctionReference* constructor;

  static Napi::Function Init(Napi::Env env) {
    Napi::Function cls = DefineClass(env, "MaskPlan",
                                     {InstanceMethod("dispose", &MaskPlanHandle::Dispose),
                                      InstanceMethod("prepare", &MaskPlanHandle::Prepare),
                                      InstanceMethod("stats", &MaskPlanHandle::Stats),
                                      InstanceMethod("_lists", &MaskPlanHandle::Lists),
                                      InstanceAccessor("disposed", &MaskPlanHandle::Disposed, nullptr)});
    constructor = new Napi::FunctionReference(Napi::Persistent(cls));
    return cls;
  }

  // new MaskPlan(args): { device, batch, tq, tk, qOffsets, qSegments?, qRoles?, kvOffsets?, kvSegments?,
  // kvRoles?, rule } (no kvOffsets: self-attention). Copies and validates the layouts.
  explicit MaskPlanHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MaskPlanHandle>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "maskPlan: expected an argument object");
    Napi::Object a = info[0].As<Napi::Object>();
    Napi::Value dev = a.Get("device");
    if (!dev.IsString() || !parse_device(dev.As<Napi::String>(), &device_)) throw Napi::TypeError::New(env, "device: expected 'cpu' or 'cuda'");
#ifndef LK_WITH_CUDA
    if (device_ == Device::kCuda) throw Napi::Error::New(env, "CUDA support was not compiled into this build");
#endif
    auto layouts = std::make_shared<PlanLayouts>();
    auto state = std::make_shared<PlanState>();
    PlanInputs& in = state->in;
    in.batch = (int)IntField(a, "batch", 0, 1 << 30);
    in.tq = IntField(a, "tq", 0, INT32_MAX);
    in.tk = IntField(a, "tk", 0, INT32_MAX);
    layouts->q.read(a, "qOffsets", "qSegments", "qRoles", in.batch, in.tq);
    const Napi::Value kv_off = a.Get("kvOffsets");
    layouts->self = kv_off.IsUndefined() || kv_off.IsNull();
    if (layouts->self) {
      if (in.tk != in.tq) throw Napi::RangeError::New(env, "tk: self-attention needs as many keys as queries");
    } else {
      layouts->kv.read(a, "kvOffsets", "kvSegments", "kvRoles", in.batch, in.tk);
    }
    in.rule = ReadRule(a);
    in.q = layouts->q.view();
    in.kv = layouts->self ? in.q : layouts->kv.view();
    state->keep = layouts;
    state->on_cuda = device_ == Device::kCuda;
    state_ = state;
  }

  static std::shared_ptr<PlanState> StateOf(const Napi::Value& v, Device device) {
    Napi::Env env = v.Env();
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(constructor->Value()))
      throw Napi::TypeError::New(env, "plan: expected a MaskPlan");
    MaskPlanHandle* h = Napi::ObjectWrap<MaskPlanHandle>::Unwrap(v.As<Napi::Object>());
    if (!h->state_) throw Napi::Error::New(env, "plan is disposed");
    if (h->device_ != device)
      throw Napi::TypeError::New(env, std::string("plan: built for ") + device_name(h->device_) + ", the tensors are on " + device_name(device));
    return h->state_;
  }

 private:
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    state_.reset();
    return info.Env().Undefined();
  }
  Napi::Value Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !state_); }

  // prepare({ dtype, headDim, valueDim }) -> Promise: builds, on the plan's device, the geometry that
  // maskedAttention with such tensors will walk.
  Napi::Value Prepare(const Napi::CallbackInfo& info);

  // stats() -> [{ blockM, blockN, queryTiles, fullTiles, partialTiles, runs, workItems, splitTiles,
  // splitItems }], one per geometry built so far.
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!state_) throw Napi::Error::New(env, "plan is disposed");
    const std::vector<PlanStats> all = state_->stats();
    Napi::Array out = Napi::Array::New(env, all.size());
    for (size_t i = 0; i < all.size(); ++i) out.Set((uint32_t)i, StatsObject(env, all[i]));
    return out;
  }

  static Napi::Object StatsObject(Napi::Env env, const PlanStats& s) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("blockM", s.block_m);
    o.Set("blockN", s.block_n);
    o.Set("queryTiles", (double)s.query_tiles);
    o.Set("fullTiles", (double)s.full_tiles);
    o.Set("partialTiles", (double)s.partial_tiles);
    o.Set("runs", (double)s.runs);
    o.Set("workItems", (double)s.work_items);
    o.Set("splitTiles", (double)s.split_tiles);
    o.Set("splitItems", (double)s.split_items);
    return o;
  }

  // _lists(blockM, blockN, onDevice) -> Promise<{ work, runs, combine: Int32Array, stats }>: test
  // support (cuda::mask_plan_lists), a CUDA plan's lists built afresh by either builder.
  Napi::Value Lists(const Napi::CallbackInfo& info);

  std::shared_ptr<PlanState> state_;
  Device device_ = Device::kCpu;
};

Napi::FunctionReference* MaskPlanHandle::constructor = nullptr;

Napi::Value MaskPlanHandle::Lists(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!state_) throw Napi::Error::New(env, "plan is disposed");
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsNumber())
    throw Napi::TypeError::New(env, "_lists(blockM, blockN, onDevice): expected tile sizes");
  const int bm = info[0].As<Napi::Number>().Int32Value(), bn = info[1].As<Napi::Number>().Int32Value();
  if (bm < 1 || bm > 1024 || bn < 1 || bn > 1024) throw Napi::RangeError::New(env, "_lists: tile sizes in 1..1024");
#ifdef LK_WITH_CUDA
  if (device_ != Device::kCuda) throw Napi::TypeError::New(env, "_lists: a CUDA plan only");
  const bool on_device = info[2].ToBoolean().Value();
  std::shared_ptr<PlanState> state = state_;
  auto out = std::make_shared<cuda::PlanListsCopy>();
  return Settle(
      env, Device::kCuda, "maskPlan lists",
      [state, bm, bn, on_device, out] { return cuda::mask_plan_lists(*state, bm, bn, on_device, out); },
      [out](napi_env e) -> napi_value {
        Napi::Env env2(e);
        auto ints = [&env2](const void* data, size_t count) {
          Napi::Int32Array a = Napi::Int32Array::New(env2, count);
          if (count) std::memcpy(a.Data(), data, count * 4);
          return a;
        };
        Napi::Object o = Napi::Object::New(env2);
        o.Set("work", ints(out->work.data(), out->work.size() * (sizeof(PlanWork) / 4)));
        o.Set("runs", ints(out->runs.data(), out->runs.size() * (sizeof(KeyRun) / 4)));
        o.Set("combine", ints(out->combine.data(), out->combine.size() * (sizeof(PlanCombine) / 4)));
        o.Set("stats", StatsObject(env2, out->stats));
        return o;
      });
#else
  throw Napi::Error::New(env, "CUDA support was not compiled into this build");
#endif
}

Napi::Value MaskPlanHandle::Prepare(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!state_) throw Napi::Error::New(env, "plan is disposed");
  Napi::Object a = ArgsObject(info, "prepare");
  AttentionParams like{};
  like.dtype = (DType)IntField(a, "dtype", 0, 2);
  like.head_dim = (int)IntField(a, "headDim", 1, kMaxHeadDim);
  like.value_dim = (int)IntField(a, "valueDim", 1, kMaxHeadDim);
  like.heads = like.kv_heads = 1;
  // The tensor-core choice also asks for 16-byte aligned tensors: every storage is (allocations are
  // 256-byte aligned), so any aligned address stands for them here.
  static const uint64_t kAligned[4] = {0, 0, 0, 0};
  like.q = like.k = like.v = like.out = const_cast<uint64_t*>(kAligned);
  std::shared_ptr<PlanState> state = state_;
  const Device device = device_;
  return Settle(env, device, "maskPlan", [state, like, device]() -> std::string {
    (void)like;
    LK_ON_DEVICE(device, cpu::cpu_plan_geometry(*state), cuda::prepare_mask_plan(*state, like))
  });
}


// The arguments of one masked attention (forward or backward), validated, with the host copies its run needs.
struct AttentionArgs {
  std::shared_ptr<AttentionParams> params;
  std::shared_ptr<OwnedLayout> q_layout, kv_layout;
  std::shared_ptr<PlanState> plan;  // a MaskPlan's state (its layouts and rule), or none
  std::vector<BufferRef> keep;
  // The params with layout views into the owned copies or the plan's (valid while this object lives).
  AttentionParams run() const {
    AttentionParams r = *params;
    r.q_layout = plan ? plan->in.q : q_layout->view();
    r.kv_layout = plan ? plan->in.kv : kv_layout->view();
    return r;
  }
};

// plan_allowed: the call may name a MaskPlan (maskedAttention and its backward; multi-stream's streams
// build their own). out_optional: `out` may be absent (the backward of silu needs no forward output).
AttentionArgs ReadAttention(const Napi::Object& a, Device device, bool plan_allowed, bool out_optional = false) {
  Napi::Env env = a.Env();
  AttentionArgs r;
  r.params = std::make_shared<AttentionParams>();
  AttentionParams& p = *r.params;
  p.dtype = (DType)IntField(a, "dtype", 0, 2);
  p.batch = (int)IntField(a, "batch", 0, 1 << 30);
  p.tq = IntField(a, "tq", 0, INT32_MAX);
  p.tk = IntField(a, "tk", 0, INT32_MAX);
  p.heads = (int)IntField(a, "heads", 1, kMaxHeads);
  p.kv_heads = (int)IntField(a, "kvHeads", 1, kMaxHeads);
  p.head_dim = (int)IntField(a, "headDim", 1, kMaxHeadDim);
  p.value_dim = (int)IntField(a, "valueDim", 1, kMaxHeadDim);
  if (p.heads % p.kv_heads != 0) throw Napi::RangeError::New(env, "kvHeads: must divide heads");
  p.scale = (float)NumberField(a, "scale");
  p.normalize = (Normalize)IntField(a, "normalize", 0, 1);
  p.silu_inv_divisor = (float)NumberField(a, "siluInvDivisor");

  // Layouts and rule: a MaskPlan's (checked against the call's sizes), or the call's own.
  r.q_layout = std::make_shared<OwnedLayout>();
  r.kv_layout = std::make_shared<OwnedLayout>();
  const Napi::Value plan_arg = plan_allowed ? a.Get("plan") : env.Undefined();
  if (!plan_arg.IsUndefined() && !plan_arg.IsNull()) {
    r.plan = MaskPlanHandle::StateOf(plan_arg, device);
    const PlanInputs& in = r.plan->in;
    if (in.batch != p.batch || in.tq != p.tq || in.tk != p.tk)
      throw Napi::RangeError::New(env, "plan: built for " + std::to_string(in.tq) + " queries and " + std::to_string(in.tk) +
                                           " keys in " + std::to_string(in.batch) + " sequences, the call has " + std::to_string(p.tq) +
                                           " / " + std::to_string(p.tk) + " / " + std::to_string(p.batch));
    p.rule = in.rule;
    p.max_q_len = p.max_k_len = 0;
    for (int i = 0; i < in.batch; ++i) {
      p.max_q_len = std::max(p.max_q_len, in.q.offsets[i + 1] - in.q.offsets[i]);
      p.max_k_len = std::max(p.max_k_len, in.kv.offsets[i + 1] - in.kv.offsets[i]);
    }
  } else {
    r.q_layout->read(a, "qOffsets", "qSegments", "qRoles", p.batch, p.tq);
    r.kv_layout->read(a, "kvOffsets", "kvSegments", "kvRoles", p.batch, p.tk);
    p.max_q_len = r.q_layout->max_len;
    p.max_k_len = r.kv_layout->max_len;
    p.rule = ReadRule(a);
  }

  const size_t es = DTypeSize(p.dtype);
  BufferRef q = StorageField(a, "q", device, (size_t)p.tq * p.heads * p.head_dim * es, false);
  BufferRef k = StorageField(a, "k", device, (size_t)p.tk * p.kv_heads * p.head_dim * es, false);
  BufferRef v = StorageField(a, "v", device, (size_t)p.tk * p.kv_heads * p.value_dim * es, false);
  BufferRef out = StorageField(a, "out", device, (size_t)p.tq * p.heads * p.value_dim * es, out_optional);
  BufferRef lse = StorageField(a, "lse", device, (size_t)p.tq * p.heads * 4, true);
  p.q = q->ptr; p.k = k->ptr; p.v = v->ptr; p.out = out ? out->ptr : nullptr;
  p.lse = lse ? static_cast<float*>(lse->ptr) : nullptr;
  r.keep = {q, k, v};
  if (out) r.keep.push_back(out);
  if (lse) r.keep.push_back(lse);

#ifdef LK_WITH_CUDA
  if (device == Device::kCuda && (!cuda::head_dim_supported(p.head_dim) || !cuda::head_dim_supported(p.value_dim)))
    throw Napi::RangeError::New(env, "headDim/valueDim: the CUDA kernels do not support D = " + std::to_string(p.head_dim) +
                                         ", Dv = " + std::to_string(p.value_dim) + " (see limits().cuda.headSizes)");
#endif
  return r;
}

// maskedAttention(args) -> Promise<void>; writes args.out (and args.lse).
Napi::Value MaskedAttention(const Napi::CallbackInfo& info) {
  Napi::Object a = ArgsObject(info, "maskedAttention");
  const Device device = DeviceArg(a);
  auto args = std::make_shared<AttentionArgs>(ReadAttention(a, device, true));
  return Settle(info.Env(), device, "maskedAttention", [args, device]() -> std::string {
    const AttentionParams run = args->run();
    LK_ON_DEVICE(device, cpu::masked_attention(run, args->plan.get()), cuda::masked_attention(run, args->plan.get()))
  });
}

// The four tensors of a backward op beyond its forward's: the incoming gradient, then the three
// gradients it writes; each checked against its size, held in `keep`, its address put in `out`.
void GradientFields(const Napi::Object& a, Device device, std::array<const char*, 4> names, std::array<size_t, 4> bytes,
                    const void* out[4], std::vector<BufferRef>* keep) {
  for (int i = 0; i < 4; ++i) {
    BufferRef b = StorageField(a, names[i], device, bytes[i], false);
    out[i] = b->ptr;
    keep->push_back(b);
  }
}

// maskedAttentionBackward(args) -> Promise<void>: the forward's arguments plus dOut, writing dq / dk
// / dv (SPEC §9). Softmax needs the forward's out and lse.
Napi::Value MaskedAttentionBackward(const Napi::CallbackInfo& info) {
  Napi::Object a = ArgsObject(info, "maskedAttentionBackward");
  const Device device = DeviceArg(a);
  auto args = std::make_shared<AttentionArgs>(ReadAttention(a, device, true, true));
  const AttentionParams& f = *args->params;
  if (f.normalize == kSoftmax && (f.out == nullptr || f.lse == nullptr))
    throw Napi::TypeError::New(info.Env(), "out/lse: softmax backward needs the forward's output and lse");
  const size_t es = DTypeSize(f.dtype);
  auto grads = std::make_shared<AttentionBackwardParams>();
  const void* t[4];
  GradientFields(a, device, {"dOut", "dq", "dk", "dv"},
                 {(size_t)f.tq * f.heads * f.value_dim * es, (size_t)f.tq * f.heads * f.head_dim * es,
                  (size_t)f.tk * f.kv_heads * f.head_dim * es, (size_t)f.tk * f.kv_heads * f.value_dim * es}, t, &args->keep);
  grads->d_out = t[0]; grads->dq = const_cast<void*>(t[1]); grads->dk = const_cast<void*>(t[2]); grads->dv = const_cast<void*>(t[3]);
  return Settle(info.Env(), device, "maskedAttentionBackward", [args, grads, device]() -> std::string {
    AttentionBackwardParams run = *grads;
    run.fwd = args->run();
    LK_ON_DEVICE(device, cpu::masked_attention_backward(run), cuda::masked_attention_backward(run))
  });
}

// gatherRows(args) -> Promise<void>: the MemoryBank row gather / blend (cuda/common/gather_params.h).
// Every index is checked against its storage here, before any kernel runs.
Napi::Value GatherRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object a = ArgsObject(info, "gatherRows");
  const Device device = DeviceArg(a);
  auto params = std::make_shared<GatherParams>();
  GatherParams& p = *params;
  p.dtype = (DType)IntField(a, "dtype", 0, 2);
  p.width = IntField(a, "width", 1, INT32_MAX);
  const size_t row_bytes = (size_t)p.width * DTypeSize(p.dtype);

  Napi::Value srcs = a.Get("sources");
  if (!srcs.IsArray()) throw Napi::TypeError::New(env, "sources: expected an array of storages");
  Napi::Array list = srcs.As<Napi::Array>();
  if (list.Length() < 1 || list.Length() > kMaxGatherSources) throw Napi::RangeError::New(env, "sources: expected 1 to 3 storages");
  std::vector<BufferRef> keep;
  for (uint32_t s = 0; s < kMaxGatherSources; ++s) {
    p.sources[s] = nullptr;
    p.source_rows[s] = 0;
    if (s >= list.Length()) continue;
    BufferRef b = Storage::BufferOf(list.Get(s), "sources");
    if (b->device != device) throw Napi::TypeError::New(env, "sources: tensor is on another device");
    p.sources[s] = b->ptr;
    p.source_rows[s] = (int64_t)(b->bytes / row_bytes);
    keep.push_back(b);
  }
  BufferRef dst = StorageField(a, "dst", device, 0, false);
  p.dst = dst->ptr;
  p.dst_rows = (int64_t)(dst->bytes / row_bytes);
  keep.push_back(dst);

  auto sel = std::make_shared<std::vector<uint8_t>>();
  auto src_row = std::make_shared<std::vector<int32_t>>();
  auto dst_row = std::make_shared<std::vector<int32_t>>();
  auto alpha = std::make_shared<std::vector<float>>();
  CopyTyped<uint8_t, napi_uint8_array>(a, "srcSel", sel.get(), false);
  CopyTyped<int32_t, napi_int32_array>(a, "srcRow", src_row.get(), false);
  CopyTyped<int32_t, napi_int32_array>(a, "dstRow", dst_row.get(), false);
  Napi::Value al = a.Get("alpha");
  const bool has_alpha = !al.IsUndefined() && !al.IsNull();
  if (has_alpha) {
    if (!al.IsTypedArray() || al.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw Napi::TypeError::New(env, "alpha: expected a Float32Array");
    Napi::Float32Array f = al.As<Napi::Float32Array>();
    alpha->assign(f.Data(), f.Data() + f.ElementLength());
  }
  p.rows = (int64_t)sel->size();
  if ((int64_t)src_row->size() != p.rows || (int64_t)dst_row->size() != p.rows || (has_alpha && (int64_t)alpha->size() != p.rows))
    throw Napi::RangeError::New(env, "srcSel/srcRow/dstRow/alpha: expected equal lengths");
  for (int64_t i = 0; i < p.rows; ++i) {
    const uint8_t s = (*sel)[i];
    if (s >= list.Length()) throw Napi::RangeError::New(env, "srcSel: source index out of range");
    if ((*src_row)[i] < 0 || (*src_row)[i] >= p.source_rows[s]) throw Napi::RangeError::New(env, "srcRow: row out of range");
    if ((*dst_row)[i] < 0 || (*dst_row)[i] >= p.dst_rows) throw Napi::RangeError::New(env, "dstRow: row out of range");
  }

  return Settle(env, device, "memory bank gather", [params, sel, src_row, dst_row, alpha, has_alpha, keep, device]() -> std::string {
    GatherParams run = *params;
    run.src_sel = sel->data();
    run.src_row = src_row->data();
    run.dst_row = dst_row->data();
    run.alpha = has_alpha ? alpha->data() : nullptr;
    LK_ON_DEVICE(device, cpu::gather_rows(run), cuda::gather_rows(run))
  });
}

struct IndexerArgs {
  IndexerParams p;
  std::shared_ptr<std::vector<int32_t>> q_off, k_off;
  std::vector<BufferRef> keep;
};

IndexerArgs ReadIndexer(const Napi::Object& a, Device device) {
  IndexerArgs r;
  IndexerParams& p = r.p;
  p.dtype = (DType)IntField(a, "dtype", 0, 2);
  p.nq = IntField(a, "nq", 0, INT32_MAX);
  p.tk = IntField(a, "tk", 0, INT32_MAX);
  p.heads = (int)IntField(a, "indexerHeads", 1, kMaxHeads);
  p.dim = (int)IntField(a, "indexerDim", 1, kMaxIndexerDim);
#ifdef LK_WITH_CUDA
  if (device == Device::kCuda && !cuda::indexer_fits(p.heads, p.dim))
    throw Napi::RangeError::New(a.Env(), "indexerHeads x indexerDim: the CUDA indexer holds at most " + std::to_string(cuda::indexer_max_heads()) +
                                             " heads and " + std::to_string(cuda::indexer_max_elements()) + " elements per query");
#endif
  int qb, kb, qmax;
  r.q_off = ReadOffsets(a, "qOffsets", p.nq, &qb, &qmax);
  r.k_off = ReadOffsets(a, "kOffsets", p.tk, &kb, &p.max_len);
  if (qb != kb) throw Napi::RangeError::New(a.Env(), "kOffsets: batch differs from qOffsets'");
  p.batch = qb;
  const size_t es = DTypeSize(p.dtype);
  BufferRef q = StorageField(a, "qI", device, (size_t)p.nq * p.heads * p.dim * es, false);
  BufferRef k = StorageField(a, "kI", device, (size_t)p.tk * p.dim * es, false);
  BufferRef w = StorageField(a, "w", device, (size_t)p.nq * p.heads * es, false);
  p.q = q->ptr; p.k = k->ptr; p.w = w->ptr;
  p.q_offsets = r.q_off->data();
  p.k_offsets = r.k_off->data();
  p.scores = nullptr;
  r.keep = {q, k, w};
  return r;
}

struct SparseArgs {
  SparseParams p;
  std::shared_ptr<std::vector<int32_t>> q_off, k_off;
  std::vector<BufferRef> keep;
};

SparseArgs ReadSparse(const Napi::Object& a, Device device) {
  SparseArgs r;
  SparseParams& p = r.p;
  p.dtype = (DType)IntField(a, "dtype", 0, 2);
  p.nq = IntField(a, "nq", 0, INT32_MAX);
  p.tk = IntField(a, "tk", 0, INT32_MAX);
  p.heads = (int)IntField(a, "heads", 1, kMaxHeads);
  p.kv_heads = (int)IntField(a, "kvHeads", 1, kMaxHeads);
  p.head_dim = (int)IntField(a, "headDim", 1, kMaxHeadDim);
  p.value_dim = (int)IntField(a, "valueDim", 1, kMaxHeadDim);
  p.top_k = (int)IntField(a, "topK", 1, MaxTopK(device));
  if (p.heads % p.kv_heads != 0) throw Napi::RangeError::New(a.Env(), "kvHeads: must divide heads");
  p.scale = (float)NumberField(a, "scale");
  int qb, kb, qmax, kmax;
  r.q_off = ReadOffsets(a, "qOffsets", p.nq, &qb, &qmax);
  r.k_off = ReadOffsets(a, "kOffsets", p.tk, &kb, &kmax);
  if (qb != kb) throw Napi::RangeError::New(a.Env(), "kOffsets: batch differs from qOffsets'");
  p.batch = qb;
  const size_t es = DTypeSize(p.dtype);
  BufferRef q = StorageField(a, "q", device, (size_t)p.nq * p.heads * p.head_dim * es, false);
  BufferRef k = StorageField(a, "k", device, (size_t)p.tk * p.kv_heads * p.head_dim * es, false);
  BufferRef v = StorageField(a, "v", device, (size_t)p.tk * p.kv_heads * p.value_dim * es, false);
  BufferRef out = StorageField(a, "out", device, (size_t)p.nq * p.heads * p.value_dim * es, false);
  BufferRef lse = StorageField(a, "lse", device, (size_t)p.nq * p.heads * 4, true);
  p.q = q->ptr; p.k = k->ptr; p.v = v->ptr; p.out = out->ptr;
  p.lse = lse ? static_cast<float*>(lse->ptr) : nullptr;
  p.q_offsets = r.q_off->data();
  p.k_offsets = r.k_off->data();
  p.indices = nullptr;
  r.keep = {q, k, v, out};
  if (lse) r.keep.push_back(lse);
  return r;
}

// indexerScores(args) -> Promise<void>, writing args.scores [nq, maxLen].
Napi::Value IndexerScores(const Napi::CallbackInfo& info) {
  Napi::Object a = ArgsObject(info, "indexerScores");
  const Device device = DeviceArg(a);
  auto args = std::make_shared<IndexerArgs>(ReadIndexer(a, device));
  BufferRef scores = StorageField(a, "scores", device, (size_t)args->p.nq * args->p.max_len * 4, false);
  args->p.scores = static_cast<float*>(scores->ptr);
  return Settle(info.Env(), device, "indexerScores", [args, scores, device]() -> std::string {
    LK_ON_DEVICE(device, cpu::indexer_scores(args->p), cuda::indexer_scores(args->p))
  });
}

// topK(args) -> Promise<void>, writing args.indices / args.values [rows, k].
Napi::Value TopK(const Napi::CallbackInfo& info) {
  Napi::Object a = ArgsObject(info, "topK");
  const Device device = DeviceArg(a);
  auto p = std::make_shared<TopKParams>();
  p->rows = IntField(a, "rows", 0, INT32_MAX);
  p->cols = (int)IntField(a, "cols", 0, INT32_MAX);
  p->k = (int)IntField(a, "k", 1, MaxTopK(device));
  BufferRef scores = StorageField(a, "scores", device, (size_t)p->rows * p->cols * 4, false);
  BufferRef indices = StorageField(a, "indices", device, (size_t)p->rows * p->k * 4, false);
  BufferRef values = StorageField(a, "values", device, (size_t)p->rows * p->k * 4, false);
  auto lengths = std::make_shared<std::vector<int32_t>>();
  const bool has_lengths = CopyTyped<int32_t, napi_int32_array>(a, "lengths", lengths.get(), true);
  if (has_lengths && (int64_t)lengths->size() != p->rows) throw Napi::RangeError::New(info.Env(), "lengths: expected one entry per row");
  p->scores = static_cast<const float*>(scores->ptr);
  p->indices = static_cast<int32_t*>(indices->ptr);
  p->values = static_cast<float*>(values->ptr);
  return Settle(info.Env(), device, "topK", [p, lengths, has_lengths, scores, indices, values, device]() -> std::string {
    TopKParams run = *p;
    run.lengths = has_lengths ? lengths->data() : nullptr;
    LK_ON_DEVICE(device, cpu::top_k(run), cuda::top_k(run))
  });
}

// Checks every index against its query's key count before any kernel runs (SPEC §5).
void CheckIndices(Napi::Env env, const std::vector<int32_t>& idx, const SparseParams& p) {
  int b = 0;  // queries are in batch order: one walk over both (O(nq + batch), not O(nq x batch))
  for (int64_t i = 0; i < p.nq; ++i) {
    while (b + 1 < p.batch && p.q_offsets[b + 1] <= i) ++b;
    const int len = p.k_offsets[b + 1] - p.k_offsets[b];
    for (int j = 0; j < p.top_k; ++j) {
      const int32_t x = idx[(size_t)i * p.top_k + j];
      if (x < -1 || x >= len)
        throw Napi::RangeError::New(env, "indices: entry [" + std::to_string(i) + ", " + std::to_string(j) + "] = " + std::to_string(x) +
                                             " is outside [-1, " + std::to_string(len) + ") for its query's key sequence");
    }
  }
}

// sparseAttention(args) -> Promise<void>; args.indices is an Int32Array [nq, topK] on the host.
Napi::Value SparseAttention(const Napi::CallbackInfo& info) {
  Napi::Object a = ArgsObject(info, "sparseAttention");
  const Device device = DeviceArg(a);
  auto args = std::make_shared<SparseArgs>(ReadSparse(a, device));
  auto idx = std::make_shared<std::vector<int32_t>>();
  CopyTyped<int32_t, napi_int32_array>(a, "indices", idx.get(), false);
  if ((int64_t)idx->size() != args->p.nq * args->p.top_k) throw Napi::RangeError::New(info.Env(), "indices: expected nq x topK entries");
  CheckIndices(info.Env(), *idx, args->p);
  return Settle(info.Env(), device, "sparseAttention", [args, idx, device]() -> std::string {
    SparseParams run = args->p;
    run.indices = idx->data();
    LK_ON_DEVICE(device, cpu::sparse_attention(run), cuda::sparse_attention(run))
  });
}

// The arguments of one indexer + top-k + sparse attention, validated.
struct IndexedArgs {
  std::shared_ptr<IndexerArgs> indexer;
  std::shared_ptr<SparseArgs> sparse;
  std::shared_ptr<TopKParams> top_k;
  std::vector<BufferRef> keep;  // indices, values
};

IndexedArgs ReadIndexed(const Napi::Object& a, Device device) {
  IndexedArgs r;
  r.indexer = std::make_shared<IndexerArgs>(ReadIndexer(a, device));
  r.sparse = std::make_shared<SparseArgs>(ReadSparse(a, device));
  if (r.indexer->p.nq != r.sparse->p.nq || r.indexer->p.tk != r.sparse->p.tk)
    throw Napi::RangeError::New(a.Env(), "indexer: q / k rows must match the attention's");
  auto tp = r.top_k = std::make_shared<TopKParams>();
  tp->rows = r.sparse->p.nq;
  tp->cols = r.indexer->p.max_len;
  tp->k = r.sparse->p.top_k;
  tp->lengths = nullptr;
  tp->scores = nullptr;
  BufferRef indices = StorageField(a, "indices", device, (size_t)tp->rows * tp->k * 4, false);
  BufferRef values = StorageField(a, "values", device, (size_t)tp->rows * tp->k * 4, false);
  tp->indices = static_cast<int32_t*>(indices->ptr);
  tp->values = static_cast<float*>(values->ptr);
  r.keep = {indices, values};
  return r;
}

// indexedCrossAttention(args) -> Promise<void>: indexer + top-k + sparse attention in one call,
// writing args.out (and args.indices / args.values of the choice).
Napi::Value IndexedCrossAttention(const Napi::CallbackInfo& info) {
  Napi::Object a = ArgsObject(info, "indexedCrossAttention");
  const Device device = DeviceArg(a);
  auto r = std::make_shared<IndexedArgs>(ReadIndexed(a, device));
  return Settle(info.Env(), device, "indexedCrossAttention", [r, device]() -> std::string {
    LK_ON_DEVICE(device, cpu::indexed_cross_attention(r->indexer->p, *r->top_k, r->sparse->p),
                 cuda::indexed_cross_attention(r->indexer->p, *r->top_k, r->sparse->p))
  });
}

// multiStreamAttention(args) -> Promise<void> (SPEC §12): args.streams is an array of 1 to 3
// argument objects, each a maskedAttention's (kind 'dense') or an indexedCrossAttention's (kind
// 'indexed'), writing its own output (and lse); then args.outs / args.lses are merged into args.out
// (and args.lse for fusion 1, 'union'). One queued job: on CUDA the streams and the merge are
// queued back to back and synchronized once.
Napi::Value MultiStreamAttention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object a = ArgsObject(info, "multiStreamAttention");
  const Device device = DeviceArg(a);
  Napi::Value list_value = a.Get("streams");
  if (!list_value.IsArray()) throw Napi::TypeError::New(env, "streams: expected an array");
  Napi::Array list = list_value.As<Napi::Array>();
  const int n = (int)list.Length();
  if (n < 1 || n > kMaxStreams) throw Napi::RangeError::New(env, "streams: expected 1 to 3 streams");

  auto merge = std::make_shared<MergeParams>();
  merge->dtype = (DType)IntField(a, "dtype", 0, 2);
  merge->streams = n;
  merge->fusion = (int)IntField(a, "fusion", 0, 1);
  merge->rows = IntField(a, "rows", 0, INT64_MAX / kMaxHeadDim);
  merge->value_dim = (int)IntField(a, "valueDim", 1, kMaxHeadDim);
  const size_t es = DTypeSize(merge->dtype);
  const size_t out_bytes = (size_t)merge->rows * merge->value_dim * es, lse_bytes = (size_t)merge->rows * 4;
  const bool with_lse = merge->fusion == kFusionUnion;

  auto dense = std::make_shared<std::vector<AttentionArgs>>();
  auto indexed = std::make_shared<std::vector<IndexedArgs>>();
  std::vector<int> which(n);  // stream s: index into dense (>= 0) or indexed (-1 - i)
  std::vector<BufferRef> keep;
  for (int s = 0; s < n; ++s) {
    Napi::Value item = list.Get((uint32_t)s);
    if (!item.IsObject()) throw Napi::TypeError::New(env, "streams: expected argument objects");
    Napi::Object o = item.As<Napi::Object>();
    Napi::Value kind = o.Get("kind");
    const std::string k = kind.IsString() ? kind.As<Napi::String>().Utf8Value() : std::string();
    BufferRef out, lse;
    if (k == "dense") {
      dense->push_back(ReadAttention(o, device, false));
      const AttentionParams& p = *dense->back().params;
      if ((int64_t)p.tq * p.heads != merge->rows || p.value_dim != merge->value_dim || p.dtype != merge->dtype || (with_lse && !p.lse))
        throw Napi::RangeError::New(env, "streams: every stream must have rows x heads = rows, valueDim, dtype (and lse for union)");
      which[s] = (int)dense->size() - 1;
      merge->outs[s] = p.out;
      merge->lses[s] = p.lse;
    } else if (k == "indexed") {
      indexed->push_back(ReadIndexed(o, device));
      const SparseParams& p = indexed->back().sparse->p;
      if ((int64_t)p.nq * p.heads != merge->rows || p.value_dim != merge->value_dim || p.dtype != merge->dtype || (with_lse && !p.lse))
        throw Napi::RangeError::New(env, "streams: every stream must have rows x heads = rows, valueDim, dtype (and lse for union)");
      which[s] = -1 - ((int)indexed->size() - 1);
      merge->outs[s] = p.out;
      merge->lses[s] = p.lse;
    } else {
      throw Napi::TypeError::New(env, "streams: kind must be 'dense' or 'indexed'");
    }
  }
  BufferRef out = StorageField(a, "out", device, out_bytes, false);
  BufferRef lse = StorageField(a, "lse", device, lse_bytes, !with_lse);
  merge->out = out->ptr;
  merge->lse = with_lse ? static_cast<float*>(lse->ptr) : nullptr;
  for (int s = n; s < kMaxStreams; ++s) { merge->outs[s] = nullptr; merge->lses[s] = nullptr; }
  keep = {out};
  if (lse) keep.push_back(lse);

  return Settle(env, device, "multiStreamAttention", [dense, indexed, which, merge, keep, device]() -> std::string {
    const int n = merge->streams;
#ifdef LK_WITH_CUDA
    if (device == Device::kCuda) {
      cuda::StreamCall calls[kMaxStreams];
      for (int s = 0; s < n; ++s) {
        if (which[s] >= 0) {
          calls[s].dense = (*dense)[which[s]].run();
        } else {
          const IndexedArgs& r = (*indexed)[-1 - which[s]];
          calls[s].indexed = true;
          calls[s].indexer = r.indexer->p;
          calls[s].top_k = *r.top_k;
          calls[s].sparse = r.sparse->p;
        }
      }
      return cuda::multi_stream_attention(calls, n, *merge);
    }
#endif
    if (device != Device::kCpu) return std::string("CUDA support was not compiled into this build");
    for (int s = 0; s < n; ++s) {
      if (which[s] >= 0) {
        cpu::masked_attention((*dense)[which[s]].run());
      } else {
        const IndexedArgs& r = (*indexed)[-1 - which[s]];
        cpu::indexed_cross_attention(r.indexer->p, *r.top_k, r.sparse->p);
      }
    }
    cpu::merge_streams(*merge);
    return std::string();
  });
}

// sparseAttentionBackward(args) -> Promise<void>: sparseAttention's arguments (out and lse
// required) plus dOut, writing dq and the full-size, scatter-added dk / dv (SPEC §9).
Napi::Value SparseAttentionBackward(const Napi::CallbackInfo& info) {
  Napi::Object a = ArgsObject(info, "sparseAttentionBackward");
  const Device device = DeviceArg(a);
  auto args = std::make_shared<SparseArgs>(ReadSparse(a, device));
  const SparseParams& f = args->p;
  if (f.lse == nullptr) throw Napi::TypeError::New(info.Env(), "lse: the backward needs the forward's lse");
  auto idx = std::make_shared<std::vector<int32_t>>();
  CopyTyped<int32_t, napi_int32_array>(a, "indices", idx.get(), false);
  if ((int64_t)idx->size() != f.nq * f.top_k) throw Napi::RangeError::New(info.Env(), "indices: expected nq x topK entries");
  CheckIndices(info.Env(), *idx, f);
  const size_t es = DTypeSize(f.dtype);
  auto grads = std::make_shared<SparseBackwardParams>();
  const void* t[4];
  GradientFields(a, device, {"dOut", "dq", "dk", "dv"},
                 {(size_t)f.nq * f.heads * f.value_dim * es, (size_t)f.nq * f.heads * f.head_dim * es,
                  (size_t)f.tk * f.kv_heads * f.head_dim * es, (size_t)f.tk * f.kv_heads * f.value_dim * es}, t, &args->keep);
  grads->d_out = t[0]; grads->dq = const_cast<void*>(t[1]); grads->dk = const_cast<void*>(t[2]); grads->dv = const_cast<void*>(t[3]);
  return Settle(info.Env(), device, "sparseAttentionBackward", [args, grads, idx, device]() -> std::string {
    SparseBackwardParams run = *grads;
    run.fwd = args->p;
    run.fwd.indices = idx->data();
    LK_ON_DEVICE(device, cpu::sparse_attention_backward(run), cuda::sparse_attention_backward(run))
  });
}

// indexerScoresBackward(args) -> Promise<void>: indexerScores' arguments plus dScores (float32
// [nq, maxLen]), writing dqI / dkI / dw (SPEC §9).
Napi::Value IndexerScoresBackward(const Napi::CallbackInfo& info) {
  Napi::Object a = ArgsObject(info, "indexerScoresBackward");
  const Device device = DeviceArg(a);
  auto args = std::make_shared<IndexerArgs>(ReadIndexer(a, device));
  const IndexerParams& f = args->p;
  const size_t es = DTypeSize(f.dtype);
  auto grads = std::make_shared<IndexerBackwardParams>();
  const void* t[4];
  GradientFields(a, device, {"dScores", "dqI", "dkI", "dw"},
                 {(size_t)f.nq * f.max_len * 4, (size_t)f.nq * f.heads * f.dim * es, (size_t)f.tk * f.dim * es, (size_t)f.nq * f.heads * es},
                 t, &args->keep);
  grads->d_scores = static_cast<const float*>(t[0]); grads->dq = const_cast<void*>(t[1]); grads->dk = const_cast<void*>(t[2]); grads->dw = const_cast<void*>(t[3]);
  return Settle(info.Env(), device, "indexerScoresBackward", [args, grads, device]() -> std::string {
    IndexerBackwardParams run = *grads;
    run.fwd = args->p;
    LK_ON_DEVICE(device, cpu::indexer_scores_backward(run), cuda::indexer_scores_backward(run))
  });
}

// ---------------------------------------------------------------- conversions, backends

// toFloat32(Uint16Array bits, dtype) -> Float32Array
Napi::Value ToFloat32(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint16_array)
    throw Napi::TypeError::New(env, "bits: expected a Uint16Array");
  Napi::Uint16Array src = info[0].As<Napi::Uint16Array>();
  const bool half = info[1].As<Napi::Number>().Int32Value() == kFloat16;
  Napi::Float32Array dst = Napi::Float32Array::New(env, src.ElementLength());
  for (size_t i = 0; i < src.ElementLength(); ++i) dst[i] = half ? half_to_float(src[i]) : bfloat16_to_float(src[i]);
  return dst;
}

// fromFloat32(Float32Array, dtype) -> Uint16Array (round to nearest even)
Napi::Value FromFloat32(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw Napi::TypeError::New(env, "values: expected a Float32Array");
  Napi::Float32Array src = info[0].As<Napi::Float32Array>();
  const bool half = info[1].As<Napi::Number>().Int32Value() == kFloat16;
  Napi::Uint16Array dst = Napi::Uint16Array::New(env, src.ElementLength());
  for (size_t i = 0; i < src.ElementLength(); ++i) dst[i] = half ? float_to_half(src[i]) : float_to_bfloat16(src[i]);
  return dst;
}

// _cpuExp(Float32Array) -> Float32Array: test support, the CPU kernels' exp on the active ISA path
// (its accuracy and NaN / Inf semantics are checked by test/cpu-exp.test.ts).
Napi::Value CpuExp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw Napi::TypeError::New(env, "values: expected a Float32Array");
  Napi::Float32Array src = info[0].As<Napi::Float32Array>();
  Napi::Float32Array dst = Napi::Float32Array::New(env, src.ElementLength());
  cpu::exp_lanes(src.Data(), dst.Data(), (int64_t)src.ElementLength());
  return dst;
}

// _cpuNarrowRow(Float32Array, dtype) -> Uint16Array: test support, the CPU kernels' float32 ->
// float16 / bfloat16 narrowing (native/cpu/convert.h narrow_row) on the active ISA path, which
// test/cpu-narrow.test.ts holds bit-identical to fromFloat32's scalar rounding.
Napi::Value CpuNarrowRow(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw Napi::TypeError::New(env, "values: expected a Float32Array");
  if (info.Length() < 2 || !info[1].IsNumber()) throw Napi::TypeError::New(env, "dtype: expected a number");
  const int dtype = info[1].As<Napi::Number>().Int32Value();
  if (dtype != kFloat16 && dtype != kBFloat16) throw Napi::RangeError::New(env, "dtype: expected float16 or bfloat16");
  Napi::Float32Array src = info[0].As<Napi::Float32Array>();
  Napi::Uint16Array dst = Napi::Uint16Array::New(env, src.ElementLength());
  cpu::narrow_row(src.Data(), (DType)dtype, dst.Data(), (int64_t)src.ElementLength());
  return dst;
}

// _setCpuIsa(name): test support, forces the CPU kernels' instruction set (native/cpu/isa.h) for
// calls that start from now on. RangeError when unknown or not runnable here.
Napi::Value SetCpuIsa(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "isa: expected a string");
  const std::string name = info[0].As<Napi::String>().Utf8Value();
  cpu::Isa isa;
  if (!cpu::parse_isa(name.c_str(), &isa)) throw Napi::RangeError::New(env, "isa: unknown instruction set '" + name + "'");
  if (!cpu::set_active_isa(isa)) throw Napi::RangeError::New(env, "isa: this CPU or build cannot run '" + name + "'");
  return env.Undefined();
}

// _cpuSparseDenseDispatches() -> number: test support, how many CPU sparse / indexed attention calls
// ran as dense attention because every query took all of its user's keys (native/cpu/sparse_cpu.h).
Napi::Value CpuSparseDenseDispatches(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), (double)cpu::sparse_dense_dispatches());
}

// _cpuHeadsLanesCalls() -> number: test support, how many CPU maskedAttention calls ran on the
// heads-in-lanes kernel (native/cpu/attention_lanes_cpu.h).
Napi::Value CpuHeadsLanesCalls(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), (double)cpu::heads_lanes_calls());
}

// _cpuBf16NativeBlocks() -> number: test support, key blocks (per head group) of CPU attention whose
// GEMMs ran natively on bfloat16 (native/cpu/attention_cpu.h).
Napi::Value CpuBf16NativeBlocks(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), (double)cpu::bf16_native_block_count());
}

Napi::Value Backends(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object result = Napi::Object::New(env);
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("threads", ThreadPool::shared().size());
  cpu.Set("simd", cpu::isa_name(cpu::active_isa()));
  Napi::Array paths = Napi::Array::New(env);
  for (int i = 0; i < cpu::kIsaCount; ++i)
    if (cpu::isa_supported((cpu::Isa)i)) paths.Set(paths.Length(), cpu::isa_name((cpu::Isa)i));
  cpu.Set("isaPaths", paths);
  result.Set("cpu", cpu);
  Napi::Object cuda_info = Napi::Object::New(env);
  Napi::Array devices = Napi::Array::New(env);
#ifdef LK_WITH_CUDA
  std::string reason;
  std::vector<cuda::DeviceInfo> found;
  const bool ok = cuda::available(&reason, &found);
  for (size_t i = 0; i < found.size(); ++i) {
    Napi::Object d = Napi::Object::New(env);
    d.Set("name", found[i].name);
    d.Set("computeCapability", found[i].compute_capability);
    d.Set("totalMemory", (double)found[i].total_memory);
    devices.Set((uint32_t)i, d);
  }
  cuda_info.Set("available", ok);
  cuda_info.Set("compiled", true);
  cuda_info.Set("emulated", cuda::emulated());
#ifdef LK_CUDA_EMULATE
  cuda::EmulatorCounters counters;
  if (cuda::emulated() && cuda::emulator_counters(&counters)) {
    Napi::Object emulator = Napi::Object::New(env);
    emulator.Set("launches", (double)counters.launches);
    emulator.Set("mma", (double)counters.mma);
    emulator.Set("ldmatrix", (double)counters.ldmatrix);
    emulator.Set("cpAsync", (double)counters.cp_async);
    cuda_info.Set("emulator", emulator);
  }
#endif
  if (!ok) cuda_info.Set("reason", reason);
#else
  cuda_info.Set("available", false);
  cuda_info.Set("compiled", false);
  cuda_info.Set("emulated", false);
  cuda_info.Set("reason", "this build has no CUDA kernels (nvcc was not found when it was compiled)");
#endif
  cuda_info.Set("devices", devices);
  result.Set("cuda", cuda_info);
  return result;
}

// liveMemory() -> { buffers, bytes } of native storage alive now (tensors, banks, ops' scratch outputs).
Napi::Value LiveMemoryJs(const Napi::CallbackInfo& info) {
  const LiveMemory m = live_memory();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("buffers", (double)m.buffers);
  o.Set("bytes", (double)m.bytes);
  return o;
}

// limits() -> the native limits the TypeScript layer checks against (see "limits" above).
Napi::Value Limits(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("maxHeads", kMaxHeads);
  o.Set("maxHeadDim", kMaxHeadDim);
  o.Set("maxIndexerDim", kMaxIndexerDim);
  o.Set("maxTopK", kMaxTopK);
  o.Set("maxGatherSources", kMaxGatherSources);
  Napi::Object c = Napi::Object::New(env);
  Napi::Array sizes = Napi::Array::New(env);
  uint32_t n = 0;
#ifdef LK_WITH_CUDA
  for (int d = 1; d <= kMaxHeadDim; ++d)
    if (cuda::head_dim_supported(d)) sizes.Set(n++, d);
  c.Set("maxTopK", cuda::topk_capacity());
  c.Set("indexerMaxElements", cuda::indexer_max_elements());
  c.Set("indexerMaxHeads", cuda::indexer_max_heads());
#endif
  (void)n;
  c.Set("headSizes", sizes);
  o.Set("cuda", c);
  return o;
}

// codes() -> the numeric codes the kernels read (attention_params.h, mask_rules.h): dtype, role and
// segment-relation names to codes, and each dtype's element size. The TypeScript layer encodes with these.
Napi::Value Codes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  Napi::Object dtype = Napi::Object::New(env), bytes = Napi::Object::New(env);
  const std::pair<const char*, DType> dtypes[] = {{"float32", kFloat32}, {"float16", kFloat16}, {"bfloat16", kBFloat16}, {"int32", kInt32}};
  for (const auto& [name, code] : dtypes) {
    dtype.Set(name, (int)code);
    bytes.Set(name, (double)DTypeSize(code));
  }
  o.Set("dtype", dtype);
  o.Set("dtypeBytes", bytes);
  Napi::Object role = Napi::Object::New(env);
  role.Set("item", (int)kRoleItem);
  role.Set("memory", (int)kRoleMemory);
  role.Set("target", (int)kRoleTarget);
  o.Set("role", role);
  o.Set("roleCount", (int)kNumRoles);
  Napi::Object seg = Napi::Object::New(env);
  const std::pair<const char*, SegRelation> rels[] = {{"none", kSegNone}, {"self", kSegSelf}, {"same", kSegSame},
                                                      {"earlier", kSegEarlier}, {"same-or-earlier", kSegSameOrEarlier}, {"any", kSegAny}};
  for (const auto& [name, code] : rels) seg.Set(name, (int)code);
  o.Set("segRelation", seg);
  Napi::Object norm = Napi::Object::New(env);
  norm.Set("softmax", (int)kSoftmax);
  norm.Set("silu", (int)kSilu);
  o.Set("normalize", norm);
  return o;
}

// wrapHost(typedArray) -> a CPU Storage on the array's own memory (tensor(..., { copy: false })).
Napi::Value WrapHost(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray()) throw Napi::TypeError::New(env, "data: expected a typed array");
  Napi::TypedArray a = info[0].As<Napi::TypedArray>();
  napi_ref ref;
  if (napi_create_reference(env, a, 1, &ref) != napi_ok) throw Napi::Error::New(env, "cannot reference the array");
  auto owner = std::make_shared<JsArrayOwner>(StateOf(env), ref);
  return Storage::Wrap(env, wrap_external(TypedArrayBytes(a), a.ByteLength(), owner));
}

// _failInPoolTask(tasks, failAt) -> Promise: a parallel_for of `tasks` on the CPU pool whose task
// `failAt` throws. Lets the tests prove that a throwing task rejects its call and leaves the pool
// (and the process) healthy; no kernel path exposes a deterministic way to throw.
Napi::Value FailInPoolTask(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) throw Napi::TypeError::New(env, "tasks, failAt: expected numbers");
  const int64_t tasks = info[0].As<Napi::Number>().Int64Value(), fail_at = info[1].As<Napi::Number>().Int64Value();
  return Settle(env, Device::kCpu, "pool test", [tasks, fail_at]() -> std::string {
    std::atomic<int64_t> done{0};
    ThreadPool::shared().parallel_for(tasks, [&](int64_t t, int) {
      if (t == fail_at) throw std::runtime_error("task " + std::to_string(t) + " failed on purpose");
      std::this_thread::sleep_for(std::chrono::microseconds(200));  // keep the other workers inside their tasks
      done.fetch_add(1);
    });
    return std::string();
  });
}

// _hostCache() -> the host caching allocator's counters (storage.h HostCacheStats).
Napi::Value HostCache(const Napi::CallbackInfo& info) {
  const HostCacheStats s = host_cache_stats();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("hits", (double)s.hits);
  o.Set("misses", (double)s.misses);
  o.Set("blocks", (double)s.blocks);
  o.Set("cachedBytes", (double)s.cached_bytes);
  o.Set("limit", (double)s.limit);
  return o;
}

// _hostCacheSetLimit(bytes): test support (set_host_cache_limit); 0 empties the cache.
Napi::Value HostCacheSetLimit(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber() || !(info[0].As<Napi::Number>().DoubleValue() >= 0))
    throw Napi::TypeError::New(info.Env(), "bytes: expected a non-negative number");
  set_host_cache_limit((size_t)info[0].As<Napi::Number>().DoubleValue());
  return info.Env().Undefined();
}

#ifdef LK_WITH_CUDA
// _cudaHostPath() -> what the CUDA host path has done since load (cuda::HostPathStats): ops
// submitted / completed / in flight, waits for the device by issuing threads (none in the addon's
// own ops) and by the completion thread, the caching allocator's and the pinned pool's counters.
Napi::Value CudaHostPath(const Napi::CallbackInfo& info) {
  const cuda::HostPathStats s = cuda::host_path_stats();
  Napi::Object o = Napi::Object::New(info.Env());
  const std::pair<const char*, unsigned long long> fields[] = {
      {"submitted", s.submitted}, {"completed", s.completed}, {"inFlight", s.in_flight}, {"issuerWaits", s.issuer_waits},
      {"completionWaits", s.completion_waits}, {"deviceMallocs", s.device_mallocs}, {"deviceFrees", s.device_frees},
      {"cacheHits", s.cache_hits}, {"trims", s.trims}, {"allocRetries", s.alloc_retries}, {"cachedBytes", s.cached_bytes},
      {"reservedBytes", s.reserved_bytes}, {"cacheLimit", s.cache_limit}, {"pinnedMallocs", s.pinned_mallocs},
      {"pinnedHits", s.pinned_hits}, {"pinnedCachedBytes", s.pinned_cached_bytes}};
  for (const auto& f : fields) o.Set(f.first, (double)f.second);
  return o;
}

// _cudaHoldCompletions(hold): test support (cuda::hold_completions).
Napi::Value CudaHoldCompletions(const Napi::CallbackInfo& info) {
  cuda::hold_completions(info.Length() > 0 && info[0].ToBoolean().Value());
  return info.Env().Undefined();
}

// _cudaSetCacheLimit(bytes): test support (cuda::set_cache_limit).
Napi::Value CudaSetCacheLimit(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "bytes: expected a number");
  cuda::set_cache_limit((size_t)info[0].As<Napi::Number>().DoubleValue());
  return info.Env().Undefined();
}

// _cudaFaultOp(mode) -> Promise: a queued CUDA op that fails when its kernel runs (mode 0, __trap)
// or when it is issued (mode 1, a refused launch), so tests can check that the error is that op's.
Napi::Value CudaFaultOp(const Napi::CallbackInfo& info) {
  const int mode = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 0;
  return Settle(info.Env(), Device::kCuda, "fault op", [mode] { return cuda::fault_op(mode); });
}
#endif

// externalMemory() -> the external-memory total V8 holds for this isolate (what storages report).
Napi::Value ExternalMemory(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), (double)Napi::MemoryManagement::AdjustExternalMemory(info.Env(), 0));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  if (const char* bad = cpu::isa_env_error()) throw Napi::Error::New(env, bad);
  auto state = std::make_shared<EnvState>();
  state->env = env;
  state->thread = std::this_thread::get_id();
  env.SetInstanceData(new EnvStateHolder{state});
  exports.Set("Storage", Storage::Init(env));
  exports.Set("backends", Napi::Function::New(env, Backends));
  exports.Set("maskedAttention", Napi::Function::New(env, MaskedAttention));
  exports.Set("MaskPlan", MaskPlanHandle::Init(env));
  exports.Set("gatherRows", Napi::Function::New(env, GatherRows));
  exports.Set("indexerScores", Napi::Function::New(env, IndexerScores));
  exports.Set("topK", Napi::Function::New(env, TopK));
  exports.Set("sparseAttention", Napi::Function::New(env, SparseAttention));
  exports.Set("indexedCrossAttention", Napi::Function::New(env, IndexedCrossAttention));
  exports.Set("multiStreamAttention", Napi::Function::New(env, MultiStreamAttention));
  exports.Set("maskedAttentionBackward", Napi::Function::New(env, MaskedAttentionBackward));
  exports.Set("sparseAttentionBackward", Napi::Function::New(env, SparseAttentionBackward));
  exports.Set("indexerScoresBackward", Napi::Function::New(env, IndexerScoresBackward));
  exports.Set("externalMemory", Napi::Function::New(env, ExternalMemory));
  exports.Set("limits", Napi::Function::New(env, Limits));
  exports.Set("codes", Napi::Function::New(env, Codes));
  exports.Set("wrapHost", Napi::Function::New(env, WrapHost));
  exports.Set("liveMemory", Napi::Function::New(env, LiveMemoryJs));
  exports.Set("_failInPoolTask", Napi::Function::New(env, FailInPoolTask));
  exports.Set("_setCpuIsa", Napi::Function::New(env, SetCpuIsa));
  exports.Set("_cpuExp", Napi::Function::New(env, CpuExp));
  exports.Set("_cpuNarrowRow", Napi::Function::New(env, CpuNarrowRow));
  exports.Set("_cpuSparseDenseDispatches", Napi::Function::New(env, CpuSparseDenseDispatches));
  exports.Set("_cpuHeadsLanesCalls", Napi::Function::New(env, CpuHeadsLanesCalls));
  exports.Set("_cpuBf16NativeBlocks", Napi::Function::New(env, CpuBf16NativeBlocks));
  exports.Set("_hostCache", Napi::Function::New(env, HostCache));
  exports.Set("_hostCacheSetLimit", Napi::Function::New(env, HostCacheSetLimit));
#ifdef LK_WITH_CUDA
  exports.Set("_cudaHostPath", Napi::Function::New(env, CudaHostPath));
  exports.Set("_cudaHoldCompletions", Napi::Function::New(env, CudaHoldCompletions));
  exports.Set("_cudaFaultOp", Napi::Function::New(env, CudaFaultOp));
  exports.Set("_cudaSetCacheLimit", Napi::Function::New(env, CudaSetCacheLimit));
#endif
  exports.Set("toFloat32", Napi::Function::New(env, ToFloat32));
  exports.Set("fromFloat32", Napi::Function::New(env, FromFloat32));
  return exports;
}

}  // namespace
}  // namespace lk

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return lk::Init(env, exports); }
NODE_API_MODULE(lifelong_kernels, InitModule)
