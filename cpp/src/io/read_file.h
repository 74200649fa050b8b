// Whole-file reads for the small text files of a checkpoint (config.json, index files).
#pragma once
#include <string>

namespace medrt::io {

// The file's bytes; throws InvalidCheckpoint naming the path when it cannot be read.
std::string read_text_file(const std::string& path);

}  // namespace medrt::io
