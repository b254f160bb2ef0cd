#include "decoder.h"

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/headeronly/version.h>

#include <cmath>
#include <cstring>
#include <map>
#include <mutex>

#include "error.h"
#include "files.h"
#include "manifest.h"
#include "sampling.h"
#include "shape.h"
#include "windows.h"

namespace pid {
namespace {

using Loader = torch::inductor::AOTIModelPackageLoader;

constexpr int STEPS = 4;
constexpr double MAX_LATENT_ABS = 1e4;          // as pid_sdk.inputs.MAX_LATENT_ABS
constexpr int64_t MAX_OUTPUT_BYTES = int64_t(4) * 4096 * 4096 * 3;  // pid_sdk.inputs.MAX_PIXELS of RGB
const std::string TORCH_RELEASE = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR);

struct Space {
  std::string name;
  std::vector<std::string> aliases;
  bool vp;  // SDXL: captures arrive in the Euler frame x0 + s*eps (pid_sdk.latents.LatentSpace.from_capture)
};

const std::vector<Space> SPACES = {
    {"flux1", {"zimage", "zimage-turbo"}, false}, {"sd3", {}, false}, {"sdxl", {}, true},
    {"flux2", {"flux2-klein-4b", "flux2-klein-9b"}, false}, {"qwenimage", {"qwenimage-2512"}, false},
    {"dinov2", {}, false}, {"siglip", {}, false}};

const Space& find_space(const std::string& name) {
  std::string known;
  for (const auto& space : SPACES) {
    if (space.name == name) return space;
    for (const auto& alias : space.aliases)
      if (alias == name) return space;
    known += (known.empty() ? "" : ", ") + space.name;
  }
  throw Error(ErrorKind::input, "Unknown latent space '" + name + "'.", name, known,
              "pass the latent space of the LDM that produced the latent (NULL: the model's own)");
}

at::Device parse_device(const std::string& text) {
  try {
    at::Device device(text);
    if (device.is_cpu() || device.is_cuda()) return device;
  } catch (const c10::Error&) {
  }
  throw Error(ErrorKind::config, "Unknown device.", text, "cpu, cuda or cuda:N", "pass \"cpu\" (or NULL)");
}

struct GraphSet {
  std::unique_ptr<Loader> text, adapter, denoiser;
};

// Each graph's inputs and outputs, by role (as pid_sdk/runtime/signatures.py ROLE_IO).
const std::map<std::string, std::pair<size_t, size_t>> ROLE_IO = {
    {"text", {1, 1}}, {"adapter", {2, 2}}, {"denoiser", {5, 1}}};

// The tensors a pytree call spec describes: its leaves, written {"type": null, ...}.
size_t spec_leaves(const std::string& spec) {
  size_t count = 0;
  for (size_t at = spec.find("\"type\": null"); at != std::string::npos; at = spec.find("\"type\": null", at + 1))
    ++count;
  return count;
}

// The package is what the entry says it is: compiled for the entry's device, with the role's inputs and outputs,
// its constants in the entry's precision (a bf16 package holds bfloat16 constants, an fp32 one none).
void check_package(Loader& loader, const Entry& entry, const std::string& graph) {
  auto metadata = loader.get_metadata();
  std::string device = metadata.count("AOTI_DEVICE_KEY") ? metadata["AOTI_DEVICE_KEY"] : "(none)";
  std::vector<std::string> spec = loader.get_call_spec();
  size_t inputs = spec.size() == 2 ? spec_leaves(spec[0]) : 0, outputs = spec.size() == 2 ? spec_leaves(spec[1]) : 0;
  bool bf16 = false;
  for (const auto& [name, dtype] : loader.get_runner()->getConstantNamesToDtypes())
    bf16 = bf16 || dtype == static_cast<int32_t>(at::kBFloat16);
  auto [want_in, want_out] = ROLE_IO.at(graph);
  if (device != entry.target || inputs != want_in || outputs != want_out || bf16 != (entry.precision == "bf16"))
    throw Error(ErrorKind::checkpoint,
                entry.files.at(graph) + " is not the " + graph + " graph " + entry.key + " says it is.",
                "compiled for " + device + ", " + std::to_string(inputs) + " inputs, " + std::to_string(outputs) +
                    " outputs, " + (bf16 ? "bfloat16" : "no bfloat16") + " constants",
                "compiled for " + entry.target + ", " + std::to_string(want_in) + " inputs, " +
                    std::to_string(want_out) + " outputs, " + (entry.precision == "bf16" ? "bfloat16" : "no bfloat16") +
                    " constants",
                "rebuild the entry (pid-sdk export FOLDER --format aoti); never edit a manifest by hand");
}

}  // namespace

// The checked latent (in the frame the gates were trained on) and its noise level, [B] on the host.
struct Input {
  at::Tensor z, sigma;
  int64_t batch;
};

// One entry's graphs with a window's (or the image's) conditioning: the denoiser as a step v(x, sigma).
struct Step {
  GraphSet* graphs;
  const Entry* entry;
  at::Tensor tokens;
  std::vector<at::Tensor> latent_features;

  at::Tensor operator()(const at::Tensor& x, double s, int64_t batch, int& calls) const {
    at::Tensor step_sigma = at::full({batch}, float(s), at::TensorOptions().dtype(at::kFloat).device(x.device()));
    at::Tensor v = graphs->denoiser->run({x, step_sigma, tokens, latent_features[0], latent_features[1]})[0];
    ++calls;
    if (!v.sizes().equals(x.sizes()))  // a package of another size would be read past its end
      throw Error(ErrorKind::checkpoint, "The denoiser of " + entry->key + " returned another shape than its input.",
                  format_shape(v.sizes().vec()), format_shape(x.sizes().vec()),
                  "rebuild the entry (pid-sdk export FOLDER --format aoti)");
    if (!at::isfinite(v).all().item<bool>())
      throw Error(ErrorKind::numerics, "The decode produced NaN or Inf values.",
                  "first non-finite network output at call " + std::to_string(calls), "a finite image",
                  "check the model's weights for Inf / NaN (pid-sdk info MODEL loads them)");
    return v.to(at::kFloat);
  }
};

struct Decoder::Impl {
  std::string folder;
  at::Device device = at::kCPU;
  Manifest manifest;
  std::vector<Entry> entries;  // the AOTInductor entries that run here, the preferred precision first
  std::map<std::string, GraphSet> open;
  std::mutex mutex;

  void select_runnable() {
    std::string reasons;
    std::string type = device.is_cuda() ? "cuda" : "cpu";
    for (const auto& e : manifest.entries) {
      if (e.backend != "aoti") continue;
      if (e.target != type) {
        reasons += "; " + e.key + ": compiled for " + e.target + ", not " + type;
      } else if (e.torch_version.rfind(TORCH_RELEASE + ".", 0) != 0) {
        reasons += "; " + e.key + ": compiled by torch " + e.torch_version + ", this libtorch is " + TORCH_RELEASE;
      } else {
        entries.push_back(e);
      }
    }
    std::string first = device.is_cuda() ? "bf16" : "fp32";  // as the Python backends prefer
    std::stable_partition(entries.begin(), entries.end(), [&](const Entry& e) { return e.precision == first; });
    if (entries.empty())
      throw Error(ErrorKind::config, "No AOTInductor graph set of " + folder + " runs here.",
                  reasons.empty() ? "the folder has no AOTInductor packages" : reasons.substr(2),
                  "packages compiled for " + type + " by torch " + TORCH_RELEASE + ".x",
                  "pid-sdk export " + folder + " --format aoti --device " + type + " (with torch " + TORCH_RELEASE +
                      ")");
  }

  const Entry& entry_for(const std::vector<int64_t>& shape) const {
    std::string accepted;
    for (const auto& e : entries) {
      const auto& want = e.input_shape("adapter", "latent");
      if (want == shape) return e;
      accepted += (accepted.empty() ? "" : ", ") + format_shape(want) + " -> " + std::to_string(e.height) + "x" +
                  std::to_string(e.width);
    }
    const Entry& any = entries.front();
    int64_t factor = any.height / any.input_shape("adapter", "latent")[2];
    std::string size = shape.size() == 4 ? std::to_string(shape[2] * factor) + "x" + std::to_string(shape[3] * factor)
                                         : "HxW";
    throw Error(ErrorKind::input, "No graph set of this engine folder takes a latent of this shape.",
                format_shape(shape), "one of " + accepted,
                "pass a latent of one of these shapes, or export this size: pid-sdk export " + folder +
                    " --format aoti --size " + size + " --batch " + (shape.empty() ? "1" : std::to_string(shape[0])));
  }

  Input input(const float* latent, const std::vector<int64_t>& shape, const std::string& latent_space,
              float latent_sigma, int64_t seed, const uint8_t* out);
  Step step(const Entry& entry, const at::Tensor& z, const at::Tensor& sigma);
  int64_t cell() const;
  std::pair<int64_t, int64_t> auto_window(int64_t height, int64_t width) const;

  GraphSet& graphs(const Entry& entry) {
    auto found = open.find(entry.key);
    if (found != open.end()) return found->second;
    verify_entry(folder, entry);
    c10::DeviceIndex index = device.is_cuda() ? device.index() : -1;
    auto load = [&](const std::string& graph) {
      std::unique_ptr<Loader> loader;
      try {
        loader = std::make_unique<Loader>(inside(folder, entry.files.at(graph)), "model", false, 1, index);
      } catch (const c10::Error& exc) {  // not a package, or one of another libtorch
        throw Error(ErrorKind::checkpoint, entry.files.at(graph) + " is not an AOTInductor package this libtorch loads.",
                    std::string(exc.what_without_backtrace()).substr(0, 200), "a .pt2 written by pid-sdk export",
                    "rebuild the entry (pid-sdk export FOLDER --format aoti) with torch " + TORCH_RELEASE);
      }
      check_package(*loader, entry, graph);
      return loader;
    };
    GraphSet set{load("text"), load("adapter"), load("denoiser")};
    return open.emplace(entry.key, std::move(set)).first->second;
  }
};

Decoder::Decoder(const std::string& folder, const std::string& device) : impl_(std::make_unique<Impl>()) {
  impl_->folder = folder;
  impl_->device = parse_device(device);
  if (impl_->device.is_cuda() && !at::hasCUDA())
    throw Error(ErrorKind::config, "This libtorch sees no CUDA GPU.", device, "a CUDA build of torch and a GPU",
                "open the folder with device \"cpu\"");
  impl_->manifest = read_manifest(folder);
  find_space(impl_->manifest.latent_space);
  impl_->select_runnable();
}

Decoder::~Decoder() = default;

const std::string& Decoder::latent_space() const { return impl_->manifest.latent_space; }

std::pair<int64_t, int64_t> Decoder::output_size(const std::vector<int64_t>& shape) const {
  const Entry& e = impl_->entry_for(shape);
  return {e.height, e.width};
}

namespace {

void check_arguments(const float* latent, const std::vector<int64_t>& shape, const Space& space, float sigma,
                     int64_t seed, const uint8_t* out) {
  if (latent == nullptr || out == nullptr)
    throw Error(ErrorKind::input, std::string(latent ? "out_rgb8" : "latent") + " is NULL.", "NULL",
                "a buffer of the caller's", "pass the latent's data and an output buffer (see pid_output_size)");
  if (shape.size() != 4 || bounded_count(shape) > MAX_LATENT_ELEMENTS)
    throw Error(ErrorKind::input, "The latent shape is wrong.", format_shape(shape), "{B, C, h, w}, each >= 1",
                "pass the latent's shape: a 2048x2048 FLUX.1 image's latent is {1, 16, 128, 128}");
  double upper = space.vp ? INFINITY : 1.0;
  if (!std::isfinite(sigma) || sigma < 0 || sigma > upper)
    throw Error(ErrorKind::input, "latent_sigma is out of range.", std::to_string(sigma),
                std::string("a number in [0, ") + (space.vp ? "inf" : "1") + "] (" + space.name + " noise frame)",
                "pass the LDM's noise level at the captured step (0 for a finished latent)");
  if (seed < 0)
    throw Error(ErrorKind::input, "seed must be >= 0.", std::to_string(seed), "0, 1, 2, ...", "pass seed 0");
}

// A generator of the decode device's own kind seeded with `seed`, as torch.Generator(device).manual_seed(seed) in
// Python: the same seed draws the same noise in both, on the CPU and on CUDA.
at::Generator seeded_generator(const at::Device& device, int64_t seed) {
  at::Generator device_default = at::globalContext().defaultGenerator(device);  // a handle: shares the state
  at::Generator generator;
  {
    std::lock_guard<std::mutex> lock(device_default.mutex());
    generator = device_default.clone();
  }
  generator.set_current_seed(uint64_t(seed));
  return generator;
}

void check_values(const at::Tensor& z) {
  at::Tensor finite = at::isfinite(z);
  if (!finite.all().item<bool>())
    throw Error(ErrorKind::input, "The latent contains NaN or Inf values.",
                std::to_string(z.numel() - finite.sum().item<int64_t>()) + " non-finite values", "finite numbers",
                "check the LDM output (fp16 overflow is a common cause)");
  double peak = z.abs().max().item<double>();
  if (peak > MAX_LATENT_ABS)
    throw Error(ErrorKind::input, "The latent holds values no LDM produces.", "max |value| " + std::to_string(peak),
                "|value| <= 1e4 (normalised latents are about N(0, 1))", "pass the latent itself, normalised");
}

}  // namespace

Input Decoder::Impl::input(const float* latent, const std::vector<int64_t>& shape, const std::string& latent_space,
                           float latent_sigma, int64_t seed, const uint8_t* out) {
  const Space& model_space = find_space(manifest.latent_space);
  const Space& space = find_space(latent_space.empty() ? model_space.name : latent_space);
  if (space.name != model_space.name)
    throw Error(ErrorKind::input, "This engine folder decodes " + model_space.name + " latents.",
                "latent_space " + latent_space, model_space.name,
                "pass latent_space \"" + model_space.name + "\" (or NULL), or open a folder exported for " +
                    space.name);
  check_arguments(latent, shape, space, latent_sigma, seed, out);
  at::Tensor z = at::from_blob(const_cast<float*>(latent), shape, at::kFloat).clone();  // never keep their pointer
  check_values(z);
  at::Tensor sigma = at::full({shape[0]}, latent_sigma, at::kFloat);
  if (space.vp) {  // the Euler-frame capture -> the frame the gates were trained on
    at::Tensor norm = at::sqrt(sigma.to(at::kDouble).pow(2) + 1).to(at::kFloat);
    z = z / norm.view({-1, 1, 1, 1});
    sigma = sigma / norm;
  }
  return {z, sigma, shape[0]};
}

namespace {

size_t output_bytes(int64_t batch, int64_t height, int64_t width, size_t out_size) {
  size_t need = size_t(bounded_product({batch, height, width, 3}, MAX_OUTPUT_BYTES));
  if (need > size_t(MAX_OUTPUT_BYTES))
    throw Error(ErrorKind::input, "The batch asks for more output than one call may write.",
                std::to_string(batch) + " x " + std::to_string(height) + "x" + std::to_string(width),
                "at most " + std::to_string(MAX_OUTPUT_BYTES) + " bytes of RGB", "decode the batch in smaller parts");
  if (out_size < need)
    throw Error(ErrorKind::input, "The output buffer is too small.", std::to_string(out_size) + " bytes",
                std::to_string(need) + " bytes (B x H x W x 3)", "allocate B*H*W*3 bytes (see pid_output_size)");
  return need;
}

void write_rgb(const at::Tensor& image, uint8_t* out, size_t need) {
  at::Tensor rgb = ((image.clamp(-1, 1) + 1) * 127.5).round().to(at::kByte).permute({0, 2, 3, 1}).contiguous();
  std::memcpy(out, rgb.cpu().data_ptr<uint8_t>(), need);
}

}  // namespace

Step Decoder::Impl::step(const Entry& entry, const at::Tensor& z, const at::Tensor& sigma) {
  GraphSet& g = graphs(entry);
  at::Tensor text = at::zeros(entry.input_shape("text", "text"), at::kFloat).to(device);  // no caption
  at::Tensor tokens = g.text->run({text})[0];
  return {&g, &entry, tokens, g.adapter->run({z.contiguous().to(device), sigma.to(device)})};
}

void Decoder::decode(const float* latent, const std::vector<int64_t>& shape, const std::string& latent_space,
                     float latent_sigma, int64_t seed, uint8_t* out, size_t out_size) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  Input in = impl_->input(latent, shape, latent_space, latent_sigma, seed, out);
  const Entry& entry = impl_->entry_for(shape);
  size_t need = output_bytes(in.batch, entry.height, entry.width, out_size);
  Step step = impl_->step(entry, in.z, in.sigma);
  int calls = 0;
  ModelFn model = [&](const at::Tensor& x, double s) { return step(x, s, in.batch, calls); };
  at::Generator generator = seeded_generator(impl_->device, seed);
  write_rgb(sample_student(model, {in.batch, 3, entry.height, entry.width}, STEPS, generator, impl_->device), out,
            need);
}

int64_t Decoder::Impl::cell() const {
  const Entry& any = entries.front();
  return any.height / any.input_shape("adapter", "latent")[2];
}

std::pair<int64_t, int64_t> Decoder::windowed_output_size(const std::vector<int64_t>& shape) const {
  if (shape.size() != 4 || bounded_count(shape) > MAX_LATENT_ELEMENTS)
    throw Error(ErrorKind::input, "The latent shape is wrong.", format_shape(shape), "{B, C, h, w}, each >= 1",
                "pass the latent's shape: a 2048x2048 FLUX.1 image's latent is {1, 16, 128, 128}");
  return {shape[2] * impl_->cell(), shape[3] * impl_->cell()};
}

// {0, 0}: the largest entry that fits inside the output (the output itself where an entry has its size).
std::pair<int64_t, int64_t> Decoder::Impl::auto_window(int64_t height, int64_t width) const {
  std::pair<int64_t, int64_t> best{0, 0};
  for (const auto& e : entries) {
    if (e.height == height && e.width == width) return {height, width};
    if (e.height <= height && e.width <= width && e.height * e.width > best.first * best.second)
      best = {e.height, e.width};
  }
  if (best.first == 0)
    throw Error(ErrorKind::input, "No entry of " + folder + " fits inside the output.",
                std::to_string(height) + "x" + std::to_string(width), "an output at least one entry's size",
                "decode a larger latent, or export a smaller size: pid-sdk export " + folder +
                    " --format aoti --size HxW");
  return best;
}

void Decoder::decode_windowed(const float* latent, const std::vector<int64_t>& shape, const std::string& latent_space,
                              float latent_sigma, int64_t seed, std::pair<int64_t, int64_t> window, int64_t overlap,
                              uint8_t* out, size_t out_size, Blend blend) {
  auto [height, width] = windowed_output_size(shape);
  size_t need = output_bytes(shape[0], height, width, out_size);  // bounds the output before windows are planned
  if (window == std::pair<int64_t, int64_t>{0, 0}) window = impl_->auto_window(height, width);
  int64_t cell = impl_->cell();
  auto [size, shared] = check_window(window, overlap, height, width, cell);
  std::vector<Window> windows = plan_windows(height, width, size, shared);
  if (windows.size() == 1)  // the window is the image: the whole-image decode itself
    return decode(latent, shape, latent_space, latent_sigma, seed, out, out_size);
  std::lock_guard<std::mutex> lock(impl_->mutex);
  Input in = impl_->input(latent, shape, latent_space, latent_sigma, seed, out);
  const Entry& entry = impl_->entry_for({in.batch, shape[1], size.first / cell, size.second / cell});
  std::vector<at::Tensor> weights = blend_weights(windows, height, width, blend);
  for (auto& weight : weights) weight = weight.to(impl_->device);
  int calls = 0;
  ModelFn model = [&](const at::Tensor& x, double s) {
    at::Tensor v = at::zeros_like(x);
    for (size_t i = 0; i < windows.size(); ++i) {  // a window's conditioning made at each step: one in memory
      Step step = impl_->step(entry, windows[i].crop(in.z, cell), in.sigma);
      windows[i].crop(v).add_(step(windows[i].crop(x).contiguous(), s, in.batch, calls) * weights[i]);
    }
    return v;
  };
  at::Generator generator = seeded_generator(impl_->device, seed);
  write_rgb(sample_student(model, {in.batch, 3, height, width}, STEPS, generator, impl_->device), out, need);
}

}  // namespace pid
