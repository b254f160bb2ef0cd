// pid::Error: the C++ twin of pid_sdk.errors.PiDError. The message says what was received, what was expected and
// how to fix it; `kind` becomes the C ABI's status code.
#pragma once

#include <stdexcept>
#include <string>

namespace pid {

enum class ErrorKind { input = 1, checkpoint = 2, config = 3, numerics = 4, internal = 5 };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& what, const std::string& received = "", const std::string& expected = "",
        const std::string& fix = "")
      : std::runtime_error(format(what, received, expected, fix)), kind(kind) {}

  ErrorKind kind;

 private:
  static std::string format(const std::string& what, const std::string& received, const std::string& expected,
                            const std::string& fix) {
    std::string text = what;
    if (!received.empty()) text += "\n  received: " + received;
    if (!expected.empty()) text += "\n  expected: " + expected;
    if (!fix.empty()) text += "\n  fix: " + fix;
    return text;
  }
};

}  // namespace pid
