#include "windows.h"

#include <algorithm>
#include <string>

#include "error.h"

namespace pid {
namespace {

int64_t default_overlap(int64_t wh, int64_t ww, int64_t cell) {
  return std::max(cell, std::min(wh, ww) / 4 / cell * cell);
}

std::vector<int64_t> starts(int64_t size, int64_t window, int64_t overlap) {
  if (window >= size) return {0};
  std::vector<int64_t> out;
  for (int64_t s = 0; s < size - window; s += window - overlap) out.push_back(s);
  out.push_back(size - window);
  return out;
}

constexpr double kPi = 3.141592653589793;  // math.pi

// 1 inside, rising from near 0 over half the window on a side another window covers.
at::Tensor ramp(int64_t length, int64_t start, int64_t size, Blend blend) {
  at::Tensor r = at::ones({length}, at::kDouble);
  if (blend == Blend::flat) return r;
  int64_t span = std::max<int64_t>(1, length / 2);
  at::Tensor rising = (at::arange(span, at::kDouble) + 0.5) / double(span);
  if (blend == Blend::cosine) rising = at::sin(rising * kPi / 2).pow(2);  // as Python: sin(r * pi / 2) ** 2
  if (start > 0) r.slice(0, 0, span).copy_(at::minimum(r.slice(0, 0, span), rising));
  if (start + length < size) {
    at::Tensor tail = r.slice(0, length - span, length);
    tail.copy_(at::minimum(tail, rising.flip(0)));
  }
  return r;
}

}  // namespace

std::pair<std::pair<int64_t, int64_t>, int64_t> check_window(std::pair<int64_t, int64_t> window, int64_t overlap,
                                                             int64_t height, int64_t width, int64_t cell) {
  auto [h, w] = window;
  if (h <= 0 || w <= 0 || h % cell || w % cell)
    throw Error(ErrorKind::input, "The window takes (height, width) in output pixels, whole latent cells.",
                std::to_string(h) + "x" + std::to_string(w),
                "two positive multiples of " + std::to_string(cell) + " (one latent cell of this model)",
                "pass a window of an entry's size (or {0, 0}: the largest entry that fits the output)");
  int64_t wh = std::min(h, height), ww = std::min(w, width);
  int64_t fallback = default_overlap(wh, ww, cell);
  if (overlap == -1) overlap = fallback;
  bool whole = wh == height && ww == width;
  if (overlap < 0 || overlap % cell || (overlap >= std::min(wh, ww) && !whole))
    throw Error(ErrorKind::input, "The overlap takes output pixels shared by neighbouring windows, whole latent cells.",
                std::to_string(overlap),
                "a multiple of " + std::to_string(cell) + " in [0, " + std::to_string(std::min(wh, ww)) + ")",
                "pass overlap " + std::to_string(fallback) + " (the default for this window), or -1");
  return {{wh, ww}, overlap};
}

std::vector<Window> plan_windows(int64_t height, int64_t width, std::pair<int64_t, int64_t> window, int64_t overlap) {
  std::vector<Window> out;
  for (int64_t top : starts(height, window.first, overlap))
    for (int64_t left : starts(width, window.second, overlap)) out.push_back({top, left, window.first, window.second});
  return out;
}

Blend parse_blend(const char* name) {
  std::string text = name ? name : "";
  if (text.empty() || text == "linear") return Blend::linear;
  if (text == "cosine") return Blend::cosine;
  if (text == "flat") return Blend::flat;
  throw Error(ErrorKind::input, "Unknown blend.", text.substr(0, 80), "linear, cosine or flat",
              "pass \"linear\" (the default: docs/guide.md, Large images), or NULL");
}

std::vector<at::Tensor> blend_weights(const std::vector<Window>& windows, int64_t height, int64_t width,
                                      Blend blend) {
  std::vector<at::Tensor> raw;
  at::Tensor total = at::zeros({height, width}, at::kDouble);
  for (const auto& w : windows) {
    raw.push_back(ramp(w.height, w.top, height, blend).unsqueeze(1) *
                  ramp(w.width, w.left, width, blend).unsqueeze(0));
    w.crop(total).add_(raw.back());
  }
  std::vector<at::Tensor> weights;
  for (size_t i = 0; i < windows.size(); ++i) weights.push_back((raw[i] / windows[i].crop(total)).to(at::kFloat));
  return weights;
}

}  // namespace pid
