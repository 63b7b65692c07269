// Host-only helpers of the GPU check: sizes, dtype conversion, SPEC §7 comparison, JSON strings.
#include <cmath>
#include <cstdio>

#include "../../cuda/common/half_convert.h"
#include "check.h"

namespace lk::check {

Size size_named(const std::string& name) {
  if (name == "large") return Size{"large", 1200, 16, 3};
  if (name == "medium") return Size{"medium", 300, 8, 2};
  return Size{"small", 70, 5, 1};
}

size_t dtype_size(DType d) { return d == kFloat32 || d == kInt32 ? 4 : 2; }
const char* dtype_name(DType d) {
  switch (d) {
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    case kInt32: return "int32";
    default: return "float32";
  }
}

std::vector<unsigned char> encode(const std::vector<float>& x, DType dtype) {
  std::vector<unsigned char> out(x.size() * dtype_size(dtype));
  if (dtype == kFloat32) {
    if (!x.empty()) std::memcpy(out.data(), x.data(), out.size());
    return out;
  }
  for (size_t i = 0; i < x.size(); ++i) {
    const uint16_t b = dtype == kFloat16 ? float_to_half(x[i]) : float_to_bfloat16(x[i]);
    std::memcpy(out.data() + 2 * i, &b, 2);
  }
  return out;
}

std::vector<float> decode(const void* bytes, size_t count, DType dtype) {
  std::vector<float> out(count);
  if (dtype == kFloat32) {
    if (count) std::memcpy(out.data(), bytes, count * 4);
    return out;
  }
  const unsigned char* p = static_cast<const unsigned char*>(bytes);
  for (size_t i = 0; i < count; ++i) {
    uint16_t b;
    std::memcpy(&b, p + 2 * i, 2);
    out[i] = dtype == kFloat16 ? half_to_float(b) : bfloat16_to_float(b);
  }
  return out;
}

std::vector<float> random_floats(Rng& rng, size_t n, float amp) {
  std::vector<float> x(n);
  for (auto& v : x) v = (float)((rng.uniform() * 2.0 - 1.0) * amp);
  return x;
}

float tolerance(DType d) { return d == kFloat16 ? 2e-3f : d == kBFloat16 ? 1.6e-2f : 1e-5f; }

Agreement agree(const std::vector<float>& got, const std::vector<float>& ref, float tol, const char* what) {
  Agreement a;
  char buf[256];
  if (got.size() != ref.size()) {
    a.ok = false;
    std::snprintf(buf, sizeof buf, "%s: %zu elements, reference %zu", what, got.size(), ref.size());
    a.detail = buf;
    return a;
  }
  size_t worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const float r = ref[i], g = got[i];
    const bool rn = std::isnan(r), gn = std::isnan(g);
    if (rn || gn || std::isinf(r) || std::isinf(g)) {
      if ((rn && gn) || (!rn && !gn && r == g)) continue;
      if (a.ok) {
        std::snprintf(buf, sizeof buf, "%s[%zu]: got %g, reference %g (NaN / Inf at different places; NaN also = never written)", what, i, g, r);
        a.detail = buf;
      }
      a.ok = false;
      continue;
    }
    a.max_ref = std::fmax(a.max_ref, std::fabs((double)r));
    const double e = std::fabs((double)g - (double)r);
    if (e > a.max_error) { a.max_error = e; worst = i; }
  }
  a.tol = tol * (1.0 + a.max_ref);
  if (a.max_error > a.tol) {
    if (a.ok) {
      std::snprintf(buf, sizeof buf, "%s: max error %.3g at %zu (got %.8g, reference %.8g) exceeds %.3g", what, a.max_error, worst,
                    (double)got[worst], (double)ref[worst], a.tol);
      a.detail = buf;
    }
    a.ok = false;
  }
  return a;
}

std::string json_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size() + 2);
  for (const unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\t': o += "\\t"; break;
      case '\r': o += "\\r"; break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          o += b;
        } else {
          o += (char)c;
        }
    }
  }
  return o;
}

}  // namespace lk::check
