// A whole safetensors file (length prefix, JSON header, data) opened the way a checkpoint is:
// a mapped file or an InvalidCheckpoint, nothing else; every tensor it maps lies inside it.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "medrt/checkpoint.h"
#include "medrt/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // An anonymous in-memory file: no disk traffic per input.
  static int fd = memfd_create("fuzz.safetensors", 0);
  if (fd < 0 || ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != ssize_t(size)) return 0;
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    auto f = medrt::SafetensorsFile::open(path);
    for (const auto& [name, t] : f->tensors()) {
      const auto* p = static_cast<const uint8_t*>(t.data);
      volatile uint8_t sink = 0;
      if (t.nbytes) sink = p[0] ^ p[t.nbytes - 1];  // ASan: in bounds of the mapping
      (void)sink;
    }
  } catch (const medrt::InvalidCheckpoint&) {
  }
  return 0;
}
