// The C ABI (bindings/c/pid_sdk.h) over pid::Decoder: every C++ exception is caught here and turned into a status
// code and this thread's last error message.
#include "../c/pid_sdk.h"

#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <unordered_set>

#include "decoder.h"
#include "error.h"
#include "latent_file.h"

struct pid_decoder {
  pid::Decoder decoder;
};

namespace {

thread_local std::string last_error;

// The handles pid_open returned and pid_close has not closed: a closed, double-closed or made-up handle is refused
// with a status instead of being used.
std::mutex registry_mutex;
std::unordered_set<const pid_decoder*> open_handles;

const char* NOT_OPEN = "The handle is not open: closed already, or never returned by pid_open.";

pid_decoder* open_handle(const pid_decoder* handle) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  if (open_handles.count(handle) == 0)
    throw pid::Error(pid::ErrorKind::input, NOT_OPEN, "a closed or unknown handle", "a handle from pid_open",
                     "open the folder again with pid_open");
  return const_cast<pid_decoder*>(handle);
}

template <typename Body>
int guarded(Body body) {
  last_error.clear();
  try {
    body();
    return PID_OK;
  } catch (const pid::Error& exc) {
    last_error = exc.what();
    return static_cast<int>(exc.kind);
  } catch (const std::bad_alloc&) {
    last_error = "Out of memory.\n  fix: decode a smaller batch or size";
  } catch (const std::exception& exc) {  // libtorch (c10::Error) and the standard library
    last_error = std::string("Internal error: ") + std::string(exc.what()).substr(0, 2000) +
                 "\n  fix: re-export the engine folder with this torch release; report the message if it persists";
  } catch (...) {
    last_error = "Internal error of an unknown kind.";
  }
  return PID_ERROR_INTERNAL;
}

void require(const void* pointer, const char* name) {
  if (pointer == nullptr)
    throw pid::Error(pid::ErrorKind::input, std::string(name) + " is NULL.", "NULL", "a valid pointer",
                     std::string("pass ") + name);
}

std::vector<int64_t> shape_of(const int64_t shape[4]) { return {shape[0], shape[1], shape[2], shape[3]}; }

// out_hw = size(decoder, shape): the output size of a whole-image or a windowed decode.
template <typename Size>
int output_size(const pid_decoder* decoder, const int64_t shape[4], int64_t out_hw[2], Size size) {
  return guarded([&] {
    require(decoder, "decoder");
    require(shape, "shape");
    require(out_hw, "out_hw");
    auto [height, width] = size(open_handle(decoder)->decoder, shape_of(shape));
    out_hw[0] = height, out_hw[1] = width;
  });
}

}  // namespace

extern "C" {

int pid_abi_version(void) { return PID_ABI_VERSION; }

int pid_open(const char* folder, const char* device, pid_decoder** out) {
  return guarded([&] {
    require(out, "out (the handle's address)");
    *out = nullptr;
    require(folder, "folder");
    auto* handle = new pid_decoder{pid::Decoder(folder, device ? device : "cpu")};
    std::lock_guard<std::mutex> lock(registry_mutex);
    open_handles.insert(handle);
    *out = handle;
  });
}

int pid_output_size(const pid_decoder* decoder, const int64_t shape[4], int64_t out_hw[2]) {
  return output_size(decoder, shape, out_hw, [](const pid::Decoder& d, const std::vector<int64_t>& s) {
    return d.output_size(s);
  });
}

int pid_decode(pid_decoder* decoder, const float* latent, const int64_t shape[4], const char* latent_space,
               float latent_sigma, int64_t seed, uint8_t* out_rgb8, size_t out_size) {
  return guarded([&] {
    require(decoder, "decoder");
    require(shape, "shape");
    open_handle(decoder)->decoder.decode(latent, shape_of(shape), latent_space ? latent_space : "", latent_sigma,
                                         seed, out_rgb8, out_size);
  });
}

int pid_windowed_output_size(const pid_decoder* decoder, const int64_t shape[4], int64_t out_hw[2]) {
  return output_size(decoder, shape, out_hw, [](const pid::Decoder& d, const std::vector<int64_t>& s) {
    return d.windowed_output_size(s);
  });
}

int pid_decode_windowed(pid_decoder* decoder, const float* latent, const int64_t shape[4], const char* latent_space,
                        float latent_sigma, int64_t seed, const int64_t window_hw[2], int64_t overlap,
                        uint8_t* out_rgb8, size_t out_size) {
  return pid_decode_windowed_blend(decoder, latent, shape, latent_space, latent_sigma, seed, window_hw, overlap,
                                   nullptr, out_rgb8, out_size);
}

int pid_decode_windowed_blend(pid_decoder* decoder, const float* latent, const int64_t shape[4],
                              const char* latent_space, float latent_sigma, int64_t seed, const int64_t window_hw[2],
                              int64_t overlap, const char* blend, uint8_t* out_rgb8, size_t out_size) {
  return guarded([&] {
    require(decoder, "decoder");
    require(shape, "shape");
    require(window_hw, "window_hw");
    pid::Blend ramp = pid::parse_blend(blend);
    open_handle(decoder)->decoder.decode_windowed(latent, shape_of(shape), latent_space ? latent_space : "",
                                                  latent_sigma, seed, {window_hw[0], window_hw[1]}, overlap,
                                                  out_rgb8, out_size, ramp);
  });
}

void pid_close(pid_decoder* decoder) {
  if (decoder == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    if (open_handles.erase(decoder) == 0) {  // closed twice, or never opened: nothing to free
      last_error = std::string(NOT_OPEN) + "\n  fix: close each handle once";
      return;
    }
  }
  delete decoder;
}

const char* pid_last_error(void) { return last_error.c_str(); }

int pid_read_latent(const char* path, float* data, size_t count, int64_t shape[4]) {
  return guarded([&] {
    require(path, "path");
    require(shape, "shape");
    pid::LatentFile header = pid::read_latent_file(path, false);  // judged before any value is read
    for (int i = 0; i < 4; ++i) shape[i] = header.shape[size_t(i)];
    if (data == nullptr) return;
    size_t need = size_t(pid::bounded_count(header.shape));
    if (count < need)
      throw pid::Error(pid::ErrorKind::input, "The latent buffer is too small.", std::to_string(count) + " floats",
                       std::to_string(need) + " floats", "call first with data = NULL to get the shape");
    pid::LatentFile file = pid::read_latent_file(path, true);
    if (file.data.size() > count)  // the file changed between the two reads
      throw pid::Error(pid::ErrorKind::input, "The latent file changed while it was read.", path, "",
                       "read it again");
    std::memcpy(data, file.data.data(), file.data.size() * sizeof(float));
  });
}

}  // extern "C"
