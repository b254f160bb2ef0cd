// Fuzzes the C++ readers of untrusted bytes under AddressSanitizer and UBSan: the latent file reader (what
// pid_read_latent runs) and the engine manifest reader with its entry check (what pid_open runs). Every input must
// end in a result or a pid::Error with a message; a crash, a leak, an out-of-bounds access or undefined behaviour
// stops the run with the sanitizer's report.
//
//   bash bindings/fuzz/build.sh && bindings/build-fuzz/fuzz_readers ITERATIONS SEED
//   bindings/build-fuzz/fuzz_readers --canary      an out-of-bounds read on purpose: the sanitizer must stop it
//
// Inputs are mutations of valid files: bytes flipped, cut or repeated, numbers in the JSON replaced by hostile
// ones (0, -1, 2^28, 2^63, 400-digit, 1e400), the 8-byte header length replaced, arrays nested deep. Built with
// clang's -fsanitize=fuzzer, the same check is a libFuzzer target (LLVMFuzzerTestOneInput).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "error.h"
#include "latent_file.h"
#include "manifest.h"

namespace fs = std::filesystem;

namespace {

struct Tally {
  long read[2] = {0, 0}, refused[2] = {0, 0};  // [manifest, latent file]
};

const fs::path& work_dir() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("pid-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(d / "engines" / "aoti");
    std::ofstream(d / "engines" / "aoti" / "text.pt2") << "not a package";  // a file a manifest may name
    return d;
  }();
  return dir;
}

void write(const fs::path& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
}

// One input: its first byte picks the reader, the rest is the file. Returns false when a refusal has no message.
bool check_one(const uint8_t* data, size_t size, Tally& tally) {
  if (size == 0) return true;
  const fs::path& dir = work_dir();
  int reader = data[0] & 1;
  try {
    if (data[0] & 1) {
      write(dir / "latent.safetensors", data + 1, size - 1);
      pid::LatentFile file = pid::read_latent_file((dir / "latent.safetensors").string(), (data[0] & 2) != 0);
      if (!file.data.empty() && file.data.size() != size_t(pid::bounded_count(file.shape))) std::abort();
    } else {
      write(dir / "engines" / "manifest.json", data + 1, size - 1);
      pid::Manifest manifest = pid::read_manifest((dir / "engines").string());
      for (const auto& entry : manifest.entries) pid::verify_entry((dir / "engines").string(), entry);
    }
    ++tally.read[reader];
  } catch (const pid::Error& exc) {
    ++tally.refused[reader];
    return std::strlen(exc.what()) > 0;
  }
  return true;
}

// --- seeds and mutations ------------------------------------------------------------------------------------------
std::string header_file(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t length = header.size();
  std::memcpy(out.data(), &length, 8);
  return out + header + std::string(data_bytes, '\1');
}

std::vector<std::string> seeds() {
  std::string manifest =
      R"({"format": "pid-sdk-engines", "format_version": 1, "preset": "demo-flux1", "config": {"latent_space": )"
      R"("flux1"}, "entries": [{"backend": "aoti", "target": "cpu", "precision": "fp32", "torch_version": "2.13.0", )"
      R"("bucket": [512, 512], "batch": 1, "files": {"text": "aoti/text.pt2", "adapter": "aoti/text.pt2", )"
      R"("denoiser": "aoti/text.pt2"}, "sha256": {"aoti/text.pt2": )"
      R"("e948b2079b482fd6391d51c959f1ecfe54b266caf42ca42f70b726fc5e270043"}, "io": {"adapter": {"inputs": [{"name": )"
      R"("latent", "shape": [1, 16, 16, 16]}]}}}]})";
  return {
      "\1" + header_file(R"({"latent": {"dtype": "F32", "shape": [1, 16, 2, 2], "data_offsets": [0, 256]}})", 256),
      "\3" + header_file(R"({"latent": {"dtype": "F16", "shape": [16, 2, 2], "data_offsets": [0, 128]}})", 128),
      "\3" + header_file(R"({"a": {"dtype": "BF16", "shape": [1, 4, 2, 2], "data_offsets": [0, 32]},)"
                         R"( "__metadata__": {"k": "v"}})", 32),
      "\1" + header_file(R"({"latent": {"dtype": "F32", "shape": [268435456, 268435456, 268435456, 16],)"
                         R"( "data_offsets": [0, 0]}})", 0),
      std::string("\0", 1) + manifest,
  };
}

const char* HOSTILE_NUMBERS[] = {"0", "-1", "268435456", "9223372036854775807", "18446744073709551615",
                                 "1e400", "-0", "65537", "4294967296", "1.5",
                                 "1234567890123456789012345678901234567890123456789012345678901234567890"};

std::string mutate(std::string s, std::mt19937_64& rng) {
  auto pick = [&](size_t n) { return n == 0 ? size_t(0) : size_t(rng() % n); };
  int rounds = 1 + int(pick(4));
  for (int r = 0; r < rounds && s.size() > 1; ++r) {
    switch (pick(7)) {
      case 0:  // flip bytes
        for (int i = 0; i < 1 + int(pick(8)); ++i) s[1 + pick(s.size() - 1)] = char(rng());
        break;
      case 1:  // cut
        s.resize(1 + pick(s.size()));
        break;
      case 2: {  // replace a number with a hostile one
        size_t at = s.find_first_of("0123456789", 1 + pick(s.size() - 1));
        if (at == std::string::npos) break;
        size_t end = s.find_first_not_of("0123456789", at);
        const char* number = HOSTILE_NUMBERS[pick(std::size(HOSTILE_NUMBERS))];
        s.replace(at, (end == std::string::npos ? s.size() : end) - at, number);
        break;
      }
      case 3:  // replace the safetensors header length
        if (s.size() > 9) {
          uint64_t length = rng() >> pick(64);
          std::memcpy(&s[1], &length, 8);
        }
        break;
      case 4: {  // nest deep
        size_t at = 1 + pick(s.size() - 1);
        size_t depth = 1 + pick(5000);
        s.insert(at, std::string(depth, '['));
        break;
      }
      case 5: {  // repeat a slice
        size_t at = 1 + pick(s.size() - 1), len = pick(std::min<size_t>(64, s.size() - at));
        s.insert(at, s.substr(at, len));
        break;
      }
      default:  // switch reader
        s[0] = char(rng());
    }
  }
  return s;
}

int canary() {
  std::vector<int> values(4, 1);
  volatile int* p = values.data();
  std::printf("%d\n", p[int(values.size())]);  // one past the end: AddressSanitizer must stop here
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Tally tally;
  if (!check_one(data, size, tally)) std::abort();
  return 0;
}

#ifndef PID_LIBFUZZER
int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--canary") return canary();
  long iterations = argc > 1 ? std::atol(argv[1]) : 10000;
  std::mt19937_64 rng(argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 0);
  std::vector<std::string> pool = seeds();
  Tally tally;
  long silent = 0;
  for (long i = 0; i < iterations; ++i) {
    std::string input = i < long(pool.size()) ? pool[size_t(i)] : mutate(pool[rng() % pool.size()], rng);
    silent += !check_one(reinterpret_cast<const uint8_t*>(input.data()), input.size(), tally);
  }
  fs::remove_all(work_dir());
  std::printf("%ld inputs: latent files %ld read, %ld refused; manifests %ld read, %ld refused; %ld refused without "
              "a message\n", iterations, tally.read[1], tally.refused[1], tally.read[0], tally.refused[0], silent);
  return silent == 0 ? 0 : 1;
}
#endif
