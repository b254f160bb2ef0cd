#include "sha256.h"

#include <openssl/evp.h>

#include <memory>
#include <vector>

#include "error.h"
#include "files.h"

namespace pid {

std::string sha256_file(const std::string& path, int64_t max_bytes) {
  ReadFile file(path, "engine file", max_bytes, ErrorKind::checkpoint);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
    throw Error(ErrorKind::internal, "OpenSSL could not start a SHA-256 digest.");
  std::vector<char> chunk(size_t(1) << 22);
  for (int64_t offset = 0; offset < file.size(); offset += int64_t(chunk.size())) {
    size_t take = size_t(std::min<int64_t>(int64_t(chunk.size()), file.size() - offset));
    file.read_at(offset, chunk.data(), take);
    if (EVP_DigestUpdate(ctx.get(), chunk.data(), take) != 1)
      throw Error(ErrorKind::internal, "OpenSSL could not hash " + path + ".");
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest, &length) != 1)
    throw Error(ErrorKind::internal, "OpenSSL could not finish the SHA-256 digest of " + path + ".");
  static const char* HEX = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) hex += {HEX[digest[i] >> 4], HEX[digest[i] & 15]};
  return hex;
}

}  // namespace pid
