// Latent shapes as the runtime judges them: the element count bounded before anything is allocated, and the
// printed form error messages use.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pid {

constexpr int64_t MAX_LATENT_ELEMENTS = int64_t(1) << 28;  // as pid_sdk.latent_files.MAX_ELEMENTS

// The product of `values`, or limit + 1 when a value is < 1 or the product passes `limit` (checked before each
// multiplication, so no product can overflow whatever the values).
inline int64_t bounded_product(const std::vector<int64_t>& values, int64_t limit) {
  int64_t product = 1;
  for (int64_t v : values) {
    if (v < 1 || v > limit / product) return limit + 1;
    product *= v;
  }
  return product;
}

// The number of elements, or MAX_LATENT_ELEMENTS + 1 when a dimension is < 1 or the count passes the bound.
inline int64_t bounded_count(const std::vector<int64_t>& shape) { return bounded_product(shape, MAX_LATENT_ELEMENTS); }

// "[1, 16, 16, 16]"
inline std::string format_shape(const std::vector<int64_t>& shape) {
  std::string text;
  for (int64_t d : shape) text += (text.empty() ? "" : ", ") + std::to_string(d);
  return "[" + text + "]";
}

}  // namespace pid
