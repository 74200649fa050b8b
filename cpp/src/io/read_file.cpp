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
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InvalidCheckpoint(path + ": cannot open: " + std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw InvalidCheckpoint(path + ": read error");
  return ss.str();
}

}  // namespace medrt::io
