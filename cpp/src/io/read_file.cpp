#include "io/read_file.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "medrt/error.h"

namespace medrt::io {

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw InvalidCheckpoint(path + ": no such file");
  // config.json and index files are kilobytes; a huge one is not a checkpoint file.
  constexpr uintmax_t kMaxTextBytes = 64ull << 20;
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (!ec && size > kMaxTextBytes)
    throw InvalidCheckpoint(path + ": " + std::to_string(size) +
                            " bytes is more than the 64 MiB a JSON checkpoint file may take");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InvalidCheckpoint(path + ": cannot open: " + std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw InvalidCheckpoint(path + ": read error");
  return ss.str();
}

}  // namespace medrt::io
