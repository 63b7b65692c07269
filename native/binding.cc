// N-API entry point: storage objects, backend reporting, dtype conversion and the async ops.
// The TypeScript layer validates arguments first with user-facing messages; the checks here are the
// last line that guarantees no input can make a kernel read or write out of bounds.
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <cmath>
#include <functional>
#include <memory>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../cuda/common/attention_params.h"
#include "../cuda/common/half_convert.h"
#include "cpu/attention_cpu.h"
#include "cpu/mask_plan_cpu.h"
#include "cpu/gather_rows_cpu.h"
#include "cpu/sparse_cpu.h"
#include "op_queue.h"
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
                                      InstanceMethod("share", &Storage::Share),
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
    if (info.Length() == 1 && info[0].IsExternal()) {  // share(): another handle, memory counted once
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

  // share() -> a second Storage on the same memory, which stays alive until every handle is disposed
  // or collected. Ops take one at the call, so a caller may dispose its tensor right after.
  Napi::Value Share(const Napi::CallbackInfo& info) {
    BufferRef buf = Live(info.Env());
    return constructor->New({Napi::External<BufferRef>::New(info.Env(), &buf)});
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

Napi::Value Storage::CopyTo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BufferRef buf = Live(env);
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "device: expected 'cpu' or 'cuda'");
  Napi::Object out = constructor->New({info[0], Napi::Number::New(env, (double)buf->bytes)});
  BufferRef dst = BufferOf(out, "device");
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(out));
  auto* worker = new PromiseWorker(
      env, [buf, dst] { return copy_bytes(dst->device, dst->ptr, buf->device, buf->ptr, buf->bytes); },
      [ref](Napi::Env) -> Napi::Value { return ref->Value(); });
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
struct QueuedOp {
  napi_deferred deferred = nullptr;
  napi_threadsafe_function tsfn = nullptr;
  std::function<std::string()> work;
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
  if (env == nullptr) return;  // the environment is going away: nobody awaits the promise
  Napi::HandleScope scope(env);
  if (op->error.empty()) napi_resolve_deferred(env, op->deferred, Napi::Env(env).Undefined());
  else napi_reject_deferred(env, op->deferred, Napi::Error::New(env, op->error).Value());
}

// Runs `work` after every earlier op on `device` and returns a promise of its outcome. Any
// exception inside the work (out of memory in a pool task, say) rejects the promise.
Napi::Value Settle(Napi::Env env, Device device, std::function<std::string()> work) {
  auto op = std::make_unique<QueuedOp>();
  napi_value promise;
  if (napi_create_promise(env, &op->deferred, &promise) != napi_ok) throw Napi::Error::New(env, "cannot create a promise");
  if (napi_create_threadsafe_function(env, nullptr, nullptr, Napi::String::New(env, "lifelong-kernels"), 0, 1, nullptr, nullptr,
                                      nullptr, SettleOnJsThread, &op->tsfn) != napi_ok)
    throw Napi::Error::New(env, "cannot create a thread-safe function");
  op->work = std::move(work);
  QueuedOp* raw = op.release();
  QueueFor(device).push([raw] {
    try {
      raw->error = raw->work();
    } catch (const std::bad_alloc&) {
      raw->error = "out of memory";
    } catch (const std::exception& e) {
      raw->error = e.what();
    } catch (...) {
      raw->error = "unknown native error";
    }
    const napi_threadsafe_function tsfn = raw->tsfn;  // `raw` belongs to the JS thread once handed over
    if (napi_call_threadsafe_function(tsfn, raw, napi_tsfn_blocking) != napi_ok) delete raw;
    napi_release_threadsafe_function(tsfn, napi_tsfn_release);
  });
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
    for (size_t i = 0; i < all.size(); ++i) {
      const PlanStats& s = all[i];
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
      out.Set((uint32_t)i, o);
    }
    return out;
  }

  std::shared_ptr<PlanState> state_;
  Device device_ = Device::kCpu;
};

Napi::FunctionReference* MaskPlanHandle::constructor = nullptr;

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
  return Settle(env, device, [state, like, device]() -> std::string {
    (void)like;
    LK_ON_DEVICE(device, cpu::cpu_plan_geometry(*state), cuda::prepare_mask_plan(*state, like))
  });
}

// maskedAttention(args) -> Promise<void>; writes args.out (and args.lse).
Napi::Value MaskedAttention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object a = ArgsObject(info, "maskedAttention");
  const Device device = DeviceArg(a);

  auto params = std::make_shared<AttentionParams>();
  AttentionParams& p = *params;
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
  std::shared_ptr<PlanState> plan;
  const Napi::Value plan_arg = a.Get("plan");
  auto q_layout = std::make_shared<OwnedLayout>();
  auto kv_layout = std::make_shared<OwnedLayout>();
  if (!plan_arg.IsUndefined() && !plan_arg.IsNull()) {
    plan = MaskPlanHandle::StateOf(plan_arg, device);
    if (plan->in.batch != p.batch || plan->in.tq != p.tq || plan->in.tk != p.tk)
      throw Napi::RangeError::New(env, "plan: built for " + std::to_string(plan->in.tq) + " queries and " + std::to_string(plan->in.tk) +
                                           " keys in " + std::to_string(plan->in.batch) + " sequences, the call has " + std::to_string(p.tq) +
                                           " / " + std::to_string(p.tk) + " / " + std::to_string(p.batch));
    p.rule = plan->in.rule;
  } else {
    q_layout->read(a, "qOffsets", "qSegments", "qRoles", p.batch, p.tq);
    kv_layout->read(a, "kvOffsets", "kvSegments", "kvRoles", p.batch, p.tk);
    p.rule = ReadRule(a);
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

  return Settle(env, device, [params, plan, q_layout, kv_layout, q, k, v, out, lse, device]() -> std::string {
    AttentionParams run = *params;
    run.q_layout = plan ? plan->in.q : q_layout->view();
    run.kv_layout = plan ? plan->in.kv : kv_layout->view();
    LK_ON_DEVICE(device, cpu::masked_attention(run, plan.get()), cuda::masked_attention(run, plan.get()))
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

  return Settle(env, device, [params, sel, src_row, dst_row, alpha, has_alpha, keep, device]() -> std::string {
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
  return Settle(info.Env(), device, [args, scores, device]() -> std::string {
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
  return Settle(info.Env(), device, [p, lengths, has_lengths, scores, indices, values, device]() -> std::string {
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
  return Settle(info.Env(), device, [args, idx, device]() -> std::string {
    SparseParams run = args->p;
    run.indices = idx->data();
    LK_ON_DEVICE(device, cpu::sparse_attention(run), cuda::sparse_attention(run))
  });
}

// indexedCrossAttention(args) -> Promise<void>: indexer + top-k + sparse attention in one call,
// writing args.out (and args.indices / args.values of the choice).
Napi::Value IndexedCrossAttention(const Napi::CallbackInfo& info) {
  Napi::Object a = ArgsObject(info, "indexedCrossAttention");
  const Device device = DeviceArg(a);
  auto ia = std::make_shared<IndexerArgs>(ReadIndexer(a, device));
  auto sa = std::make_shared<SparseArgs>(ReadSparse(a, device));
  if (ia->p.nq != sa->p.nq || ia->p.tk != sa->p.tk) throw Napi::RangeError::New(info.Env(), "indexer: q / k rows must match the attention's");
  auto tp = std::make_shared<TopKParams>();
  tp->rows = sa->p.nq;
  tp->cols = ia->p.max_len;
  tp->k = sa->p.top_k;
  tp->lengths = nullptr;
  tp->scores = nullptr;
  BufferRef indices = StorageField(a, "indices", device, (size_t)tp->rows * tp->k * 4, false);
  BufferRef values = StorageField(a, "values", device, (size_t)tp->rows * tp->k * 4, false);
  tp->indices = static_cast<int32_t*>(indices->ptr);
  tp->values = static_cast<float*>(values->ptr);
  return Settle(info.Env(), device, [ia, sa, tp, indices, values, device]() -> std::string {
    LK_ON_DEVICE(device, cpu::indexed_cross_attention(ia->p, *tp, sa->p), cuda::indexed_cross_attention(ia->p, *tp, sa->p))
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

// _failInPoolTask(tasks, failAt) -> Promise: a parallel_for of `tasks` on the CPU pool whose task
// `failAt` throws. Lets the tests prove that a throwing task rejects its call and leaves the pool
// (and the process) healthy; no kernel path exposes a deterministic way to throw.
Napi::Value FailInPoolTask(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) throw Napi::TypeError::New(env, "tasks, failAt: expected numbers");
  const int64_t tasks = info[0].As<Napi::Number>().Int64Value(), fail_at = info[1].As<Napi::Number>().Int64Value();
  return Settle(env, Device::kCpu, [tasks, fail_at]() -> std::string {
    std::atomic<int64_t> done{0};
    ThreadPool::shared().parallel_for(tasks, [&](int64_t t, int) {
      if (t == fail_at) throw std::runtime_error("task " + std::to_string(t) + " failed on purpose");
      std::this_thread::sleep_for(std::chrono::microseconds(200));  // keep the other workers inside their tasks
      done.fetch_add(1);
    });
    return std::string();
  });
}

// externalMemory() -> the external-memory total V8 holds for this isolate (what storages report).
Napi::Value ExternalMemory(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), (double)Napi::MemoryManagement::AdjustExternalMemory(info.Env(), 0));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Storage", Storage::Init(env));
  exports.Set("backends", Napi::Function::New(env, Backends));
  exports.Set("maskedAttention", Napi::Function::New(env, MaskedAttention));
  exports.Set("MaskPlan", MaskPlanHandle::Init(env));
  exports.Set("gatherRows", Napi::Function::New(env, GatherRows));
  exports.Set("indexerScores", Napi::Function::New(env, IndexerScores));
  exports.Set("topK", Napi::Function::New(env, TopK));
  exports.Set("sparseAttention", Napi::Function::New(env, SparseAttention));
  exports.Set("indexedCrossAttention", Napi::Function::New(env, IndexedCrossAttention));
  exports.Set("externalMemory", Napi::Function::New(env, ExternalMemory));
  exports.Set("limits", Napi::Function::New(env, Limits));
  exports.Set("liveMemory", Napi::Function::New(env, LiveMemoryJs));
  exports.Set("_failInPoolTask", Napi::Function::New(env, FailInPoolTask));
  exports.Set("toFloat32", Napi::Function::New(env, ToFloat32));
  exports.Set("fromFloat32", Napi::Function::New(env, FromFloat32));
  return exports;
}

}  // namespace
}  // namespace lk

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return lk::Init(env, exports); }
NODE_API_MODULE(lifelong_kernels, InitModule)
