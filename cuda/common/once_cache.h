// A value per key, made on first use under one mutex and kept for the life of the process: what the
// CUDA host code asks once per device (contexts, device facts). Plain C++.
#pragma once
#include <map>
#include <mutex>
#include <utility>

namespace lk::cuda {

template <typename Key, typename Value>
class OnceCache {
 public:
  // The value kept under `key`. On a miss, make(&value) runs under the lock (so a key is made once
  // however many threads ask) and its value is kept when it returns true; when it returns false
  // nothing is kept (the next call tries again) and *out is untouched.
  template <typename Make>
  bool get(const Key& key, Value* out, Make make) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = values_.find(key);
    if (it == values_.end()) {
      Value made{};
      if (!make(&made)) return false;
      it = values_.emplace(key, std::move(made)).first;
    }
    *out = it->second;
    return true;
  }

 private:
  std::mutex mutex_;
  std::map<Key, Value> values_;
};

}  // namespace lk::cuda
