// The distilled student's sampler, as pid_sdk/sampling.py runs it: the same sigmas, the same float64 x0 and the same
// order of noise draws, so one CPU generator seed gives the Python decoder's noise.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <vector>

namespace pid {

// Sigma list of the student for `steps` network calls (steps 4: 0.999, 0.866, 0.634, 0.342, 0).
std::vector<double> student_sigmas(int steps);

// v = model(x, sigma) for a float32 x of `shape`.
using ModelFn = std::function<at::Tensor(const at::Tensor& x, double sigma)>;

// The sde student: x0 = x - sigma v (float64), then re-noise to the next sigma with fresh noise. Noise is drawn by
// `generator` on the CPU and moved to `device`. Returns the image in [-1, 1], float32 [B, 3, H, W].
at::Tensor sample_student(const ModelFn& model, at::IntArrayRef shape, int steps, at::Generator& generator,
                          const at::Device& device);

}  // namespace pid
