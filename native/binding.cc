// N-API entry point: storage objects, backend reporting, dtype conversion and the async ops.
// The TypeScript layer validates arguments first with user-facing messages; the checks here are the
// last line that guarantees no input can make a kernel read or write out of bounds.
#include <napi.h>

#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../cuda/common/attention_params.h"
#include "../cuda/common/half_convert.h"
#include "cpu/attention_cpu.h"
#include "cpu/gather_rows_cpu.h"
#include "storage.h"
#include "thread_pool.h"

#ifdef LK_WITH_CUDA
#include "../cuda/backend.h"
#endif

namespace lk {
namespace {

// ---------------------------------------------------------------- Storage

class Storage : public Napi::ObjectWrap<Storage> {
 public:
  static Napi::FunctionReference* constructor;

  static Napi::Function Init(Napi::Env env) {
    Napi::Function cls = DefineClass(env, "Storage",
                                     {InstanceMethod("dispose", &Storage::Dispose),
                                      InstanceMethod("write", &Storage::Write),
                                      InstanceMethod("read", &Storage::Read),
                                      InstanceMethod("copyTo", &Storage::CopyTo),
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
      error = zero_bytes(device, buffer_->ptr, buffer_->bytes);
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
    return s->buffer_;
  }

 private:
  void Release() {
    if (!buffer_) return;
    Napi::MemoryManagement::AdjustExternalMemory(Env(), -(int64_t)buffer_->bytes);
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

  BufferRef Live(Napi::Env env) {
    if (!buffer_) throw Napi::Error::New(env, "tensor is disposed");
    return buffer_;
  }

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
    const std::string err = copy_bytes(buf->device, buf->ptr, Device::kCpu, from, buf->bytes);
    if (!err.empty()) throw Napi::Error::New(env, err);
    return env.Undefined();
  }

  // read() -> Promise<ArrayBuffer>: a host copy, made off the event loop.
  Napi::Value Read(const Napi::CallbackInfo& info);

  // copyTo(device) -> Storage with the same bytes on that device.
  Napi::Value CopyTo(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    BufferRef buf = Live(env);
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "device: expected 'cpu' or 'cuda'");
    Napi::Object out = constructor->New({info[0], Napi::Number::New(env, (double)buf->bytes)});
    BufferRef dst = BufferOf(out, "device");
    const std::string err = copy_bytes(dst->device, dst->ptr, buf->device, buf->ptr, buf->bytes);
    if (!err.empty()) throw Napi::Error::New(env, err);
    return out;
  }

  BufferRef buffer_;
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

Napi::Value Storage::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BufferRef buf = Live(env);
  Napi::ArrayBuffer host = Napi::ArrayBuffer::New(env, buf->bytes);
  auto ref = std::make_shared<Napi::Reference<Napi::ArrayBuffer>>(Napi::Persistent(host));
  void* dst = host.Data();
  auto* worker = new PromiseWorker(
      env, [buf, dst] { return copy_bytes(Device::kCpu, dst, buf->device, buf->ptr, buf->bytes); },
      [ref](Napi::Env) -> Napi::Value { return ref->Value(); });
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

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

// An owned copy of one jagged layout, validated (SPEC §2).
struct OwnedLayout {
  std::vector<int32_t> offsets, segments;
  std::vector<uint8_t> roles;
  bool has_segments = false, has_roles = false;
  int max_len = 0;

  void read(const Napi::Object& o, const char* off, const char* seg, const char* role, int batch, int64_t tokens) {
    Napi::Env env = o.Env();
    CopyTyped<int32_t, napi_int32_array>(o, off, &offsets, false);
    if ((int64_t)offsets.size() != batch + 1 || offsets[0] != 0 || offsets[batch] != tokens)
      throw Napi::RangeError::New(env, std::string(off) + ": expected batch + 1 offsets from 0 to " + std::to_string(tokens));
    for (int b = 0; b < batch; ++b) {
      if (offsets[b + 1] < offsets[b]) throw Napi::RangeError::New(env, std::string(off) + ": offsets must be nondecreasing");
      max_len = std::max(max_len, offsets[b + 1] - offsets[b]);
    }
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
    return LayoutView{offsets.data(), has_segments ? segments.data() : nullptr, has_roles ? roles.data() : nullptr};
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

// maskedAttention(args) -> Promise<void>; writes args.out (and args.lse).
Napi::Value MaskedAttention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "maskedAttention: expected an argument object");
  Napi::Object a = info[0].As<Napi::Object>();
  Napi::Value dev = a.Get("device");
  Device device;
  if (!dev.IsString() || !parse_device(dev.As<Napi::String>(), &device)) throw Napi::TypeError::New(env, "device: expected 'cpu' or 'cuda'");

  auto params = std::make_shared<AttentionParams>();
  AttentionParams& p = *params;
  p.dtype = (DType)IntField(a, "dtype", 0, 2);
  p.batch = (int)IntField(a, "batch", 0, 1 << 30);
  p.tq = IntField(a, "tq", 0, INT32_MAX);
  p.tk = IntField(a, "tk", 0, INT32_MAX);
  p.heads = (int)IntField(a, "heads", 1, 65535);
  p.kv_heads = (int)IntField(a, "kvHeads", 1, 65535);
  p.head_dim = (int)IntField(a, "headDim", 1, 256);
  p.value_dim = (int)IntField(a, "valueDim", 1, 256);
  if (p.heads % p.kv_heads != 0) throw Napi::RangeError::New(env, "kvHeads: must divide heads");
  p.scale = (float)NumberField(a, "scale");
  p.normalize = (Normalize)IntField(a, "normalize", 0, 1);
  p.silu_inv_divisor = (float)NumberField(a, "siluInvDivisor");

  auto q_layout = std::make_shared<OwnedLayout>();
  auto kv_layout = std::make_shared<OwnedLayout>();
  q_layout->read(a, "qOffsets", "qSegments", "qRoles", p.batch, p.tq);
  kv_layout->read(a, "kvOffsets", "kvSegments", "kvRoles", p.batch, p.tk);
  p.max_q_len = q_layout->max_len;
  p.max_k_len = kv_layout->max_len;

  std::vector<uint8_t> rule;
  CopyTyped<uint8_t, napi_uint8_array>(a, "rule", &rule, false);
  if (rule.size() != 2 * kNumRoles * kNumRoles) throw Napi::RangeError::New(env, "rule: expected 18 bytes");
  for (int i = 0; i < kNumRoles * kNumRoles; ++i) {
    if (rule[i] >= kNumSegRelations) throw Napi::RangeError::New(env, "rule: unknown segment relation");
    p.rule.seg[i / kNumRoles][i % kNumRoles] = rule[i];
    p.rule.causal[i / kNumRoles][i % kNumRoles] = rule[kNumRoles * kNumRoles + i] ? 1 : 0;
  }

  const size_t es = DTypeSize(p.dtype);
  BufferRef q = StorageField(a, "q", device, (size_t)p.tq * p.heads * p.head_dim * es, false);
  BufferRef k = StorageField(a, "k", device, (size_t)p.tk * p.kv_heads * p.head_dim * es, false);
  BufferRef v = StorageField(a, "v", device, (size_t)p.tk * p.kv_heads * p.value_dim * es, false);
  BufferRef out = StorageField(a, "out", device, (size_t)p.tq * p.heads * p.value_dim * es, false);
  BufferRef lse = StorageField(a, "lse", device, (size_t)p.tq * p.heads * 4, true);
  p.q = q->ptr; p.k = k->ptr; p.v = v->ptr; p.out = out->ptr;
  p.lse = lse ? static_cast<float*>(lse->ptr) : nullptr;

#ifdef LK_WITH_CUDA
  if (device == Device::kCuda && (!cuda::head_dim_supported(p.head_dim) || !cuda::head_dim_supported(p.value_dim)))
    throw Napi::RangeError::New(env, "headDim/valueDim: the CUDA kernels support 8, 16, 32, 64, 128 and 256");
#endif

  auto* worker = new PromiseWorker(
      env,
      [params, q_layout, kv_layout, q, k, v, out, lse, device]() -> std::string {
        AttentionParams run = *params;
        run.q_layout = q_layout->view();
        run.kv_layout = kv_layout->view();
        if (device == Device::kCpu) {
          cpu::masked_attention(run);
          return std::string();
        }
#ifdef LK_WITH_CUDA
        return cuda::masked_attention(run);
#else
        return "CUDA support was not compiled into this build";
#endif
      },
      nullptr);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// gatherRows(args) -> Promise<void>: the MemoryBank row gather / blend (cuda/common/gather_params.h).
// Every index is checked against its storage here, before any kernel runs.
Napi::Value GatherRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "gatherRows: expected an argument object");
  Napi::Object a = info[0].As<Napi::Object>();
  Napi::Value dev = a.Get("device");
  Device device;
  if (!dev.IsString() || !parse_device(dev.As<Napi::String>(), &device)) throw Napi::TypeError::New(env, "device: expected 'cpu' or 'cuda'");
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

  auto* worker = new PromiseWorker(
      env,
      [params, sel, src_row, dst_row, alpha, has_alpha, keep, device]() -> std::string {
        GatherParams run = *params;
        run.src_sel = sel->data();
        run.src_row = src_row->data();
        run.dst_row = dst_row->data();
        run.alpha = has_alpha ? alpha->data() : nullptr;
        if (device == Device::kCpu) {
          cpu::gather_rows(run);
          return std::string();
        }
#ifdef LK_WITH_CUDA
        return cuda::gather_rows(run);
#else
        return "CUDA support was not compiled into this build";
#endif
      },
      nullptr);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
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

const char* SimdLevel() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
  return "sse2";
}

Napi::Value Backends(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object result = Napi::Object::New(env);
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("threads", ThreadPool::shared().size());
  cpu.Set("simd", SimdLevel());
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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Storage", Storage::Init(env));
  exports.Set("backends", Napi::Function::New(env, Backends));
  exports.Set("maskedAttention", Napi::Function::New(env, MaskedAttention));
  exports.Set("gatherRows", Napi::Function::New(env, GatherRows));
  exports.Set("toFloat32", Napi::Function::New(env, ToFloat32));
  exports.Set("fromFloat32", Napi::Function::New(env, FromFloat32));
  return exports;
}

}  // namespace
}  // namespace lk

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return lk::Init(env, exports); }
NODE_API_MODULE(lifelong_kernels, InitModule)
