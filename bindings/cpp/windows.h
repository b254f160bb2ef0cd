// Windowed decoding as pid_sdk/windows.py plans and blends it: the same windows, in the same order, with weights
// computed in float64 the same way for each blend, so a windowed decode equals Python's on the CPU.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace pid {

struct Window {
  int64_t top, left, height, width;  // output pixels

  at::Tensor crop(const at::Tensor& t, int64_t cell = 1) const {  // [..., H, W] -> this window's part (a view)
    return t.slice(-2, top / cell, (top + height) / cell).slice(-1, left / cell, (left + width) / cell);
  }
};

// The window and overlap to use, judged as check_window judges them: whole latent cells of `cell` pixels, the
// window cut to the output, the overlap (-1: the default, a quarter of the shorter side) smaller than the window.
std::pair<std::pair<int64_t, int64_t>, int64_t> check_window(std::pair<int64_t, int64_t> window, int64_t overlap,
                                                             int64_t height, int64_t width, int64_t cell);

// Windows covering the output row by row, the last of a row or column flush with the far edge.
std::vector<Window> plan_windows(int64_t height, int64_t width, std::pair<int64_t, int64_t> window, int64_t overlap);

// The ramp's shape across an overlap (pid_sdk.windows.BLENDS): linear, cosine (flat at both ends), or flat (none:
// the overlap is the windows' plain mean).
enum class Blend { linear, cosine, flat };

// "linear", "cosine" or "flat" (NULL or "": linear); anything else is an INPUT error naming the three.
Blend parse_blend(const char* name);

// Per window, float32 [H_w, W_w] weights ramping across the overlaps, summing to one at every pixel.
std::vector<at::Tensor> blend_weights(const std::vector<Window>& windows, int64_t height, int64_t width,
                                      Blend blend = Blend::linear);

}  // namespace pid
