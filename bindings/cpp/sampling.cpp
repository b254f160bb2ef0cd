#include "sampling.h"

#include <cmath>

namespace pid {
namespace {

const double STUDENT[] = {0.999, 0.866, 0.634, 0.342, 0.0};

// Drawn by the decode device's own generator, as Python's sampling.noise draws it: one seed, the same image.
at::Tensor noise(at::IntArrayRef shape, at::Generator& generator, const at::Device& device) {
  return at::randn(shape, generator, at::TensorOptions().dtype(at::kFloat).device(device));
}

}  // namespace

std::vector<double> student_sigmas(int steps) {
  if (steps == 1) return {1.0, 0.0};
  std::vector<double> sigmas;
  for (int i = 0; i <= steps; ++i) sigmas.push_back(STUDENT[int(std::nearbyint(4.0 * i / steps))]);  // half to even
  return sigmas;
}

at::Tensor sample_student(const ModelFn& model, at::IntArrayRef shape, int steps, at::Generator& generator,
                          const at::Device& device) {
  std::vector<double> sigmas = student_sigmas(steps);
  at::Tensor x = noise(shape, generator, device);
  for (size_t i = 0; i + 1 < sigmas.size(); ++i) {
    double cur = sigmas[i], next = sigmas[i + 1];
    at::Tensor v = model(x, cur).to(at::kFloat);
    at::Tensor x0 = (x.to(at::kDouble) - v.to(at::kDouble) * cur).to(at::kFloat);
    x = next <= 0 ? x0 : x0 * (1 - next) + noise(x0.sizes(), generator, device) * next;
  }
  return x.clamp(-1, 1);
}

}  // namespace pid
