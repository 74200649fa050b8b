// Safetensors: an 8-byte little-endian header length N, N bytes of JSON
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
// data area that the offsets are relative to.
//
// Tensor data is used in place from a read-only private mapping. Offsets in the format carry no
// alignment guarantee, so a tensor's data may start at any byte; the kernels read weights with
// unaligned loads, so nothing is copied to realign it.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "io/json.h"
#include "medrt/checkpoint.h"
#include "medrt/error.h"

namespace medrt {

namespace {

// The reference implementation refuses larger headers; so do we, before allocating for one.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

struct Span {
  uint64_t begin, end;
  const std::string* name;
};

uint64_t read_u64_le(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto fail = [&](const std::string& what) -> InvalidCheckpoint {
    return InvalidCheckpoint(path + ": " + what);
  };
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw fail(std::string("cannot open: ") + std::strerror(errno));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) throw fail(std::string("cannot stat: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw fail("not a regular file");
  uint64_t file_size = uint64_t(st.st_size);
  if (file_size < 8)
    throw fail("file is " + std::to_string(file_size) +
               " bytes, shorter than the 8-byte safetensors header length");

  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (map == MAP_FAILED) throw fail(std::string("cannot mmap: ") + std::strerror(errno));
  f->map_ = map;
  f->map_size_ = file_size;
  const auto* base = static_cast<const unsigned char*>(map);

  uint64_t header_len = read_u64_le(base);
  if (header_len > file_size - 8)
    throw fail("header length " + std::to_string(header_len) + " runs past the end of the file (" +
               std::to_string(file_size) + " bytes)");
  if (header_len > kMaxHeaderBytes)
    throw fail("header length " + std::to_string(header_len) + " exceeds the 100 MiB limit");
  const unsigned char* data = base + 8 + header_len;
  uint64_t data_size = file_size - 8 - header_len;

  json::Value header;
  try {
    header = json::parse(std::string_view(reinterpret_cast<const char*>(base + 8), header_len));
  } catch (const json::ParseError& e) {
    throw fail(std::string("invalid JSON header: ") + e.what());
  }
  if (header.type != json::Type::Object)
    throw fail(std::string("header is a JSON ") + json::type_name(header.type) +
               ", expected an object");

  std::vector<Span> spans;
  for (const auto& [name, entry] : header.object) {
    if (name == "__metadata__") {
      if (entry.type != json::Type::Object) throw fail("__metadata__ is not an object");
      for (const auto& [k, v] : entry.object) {
        if (v.type != json::Type::String)
          throw fail("__metadata__ value '" + k + "' is not a string");
        f->metadata_[k] = v.string;
      }
      continue;
    }
    auto bad = [&](const std::string& what) { return fail("tensor '" + name + "': " + what); };
    if (entry.type != json::Type::Object) throw bad("header entry is not an object");

    const json::Value* dtype = entry.find("dtype");
    if (!dtype || dtype->type != json::Type::String) throw bad("missing string 'dtype'");
    std::optional<DType> dt = dtype_from_name(dtype->string);
    if (!dt) throw bad("unknown dtype \"" + dtype->string + "\"");

    const json::Value* shape = entry.find("shape");
    if (!shape || shape->type != json::Type::Array) throw bad("missing list 'shape'");
    TensorView t;
    t.dtype = *dt;
    uint64_t numel = 1;
    bool overflow = false;
    for (const json::Value& d : shape->array) {
      if (d.type != json::Type::Number || !d.integer || *d.integer < 0)
        throw bad("shape entries must be non-negative integers");
      t.shape.push_back(*d.integer);
      if (__builtin_mul_overflow(numel, uint64_t(*d.integer), &numel)) overflow = true;
    }
    uint64_t nbytes = 0;
    if (overflow || __builtin_mul_overflow(numel, uint64_t(dtype_size(*dt)), &nbytes))
      throw bad("shape " + t.shape_str() + " is too large");

    const json::Value* offs = entry.find("data_offsets");
    if (!offs || offs->type != json::Type::Array || offs->array.size() != 2)
      throw bad("missing 'data_offsets' [begin, end]");
    for (const json::Value& o : offs->array)
      if (o.type != json::Type::Number || !o.integer || *o.integer < 0)
        throw bad("data_offsets must be non-negative integers");
    uint64_t begin = uint64_t(*offs->array[0].integer);
    uint64_t end = uint64_t(*offs->array[1].integer);
    std::string span_str = std::to_string(begin);  // "[begin, end)"
    span_str.insert(span_str.begin(), '[');
    span_str += ", " + std::to_string(end) + ")";
    if (end < begin) throw bad("data_offsets " + span_str + " end before they begin");
    if (end > data_size)
      throw bad("data_offsets " + span_str + " lie outside the data area (" +
                std::to_string(data_size) + " bytes)");
    if (end - begin != nbytes)
      throw bad("shape " + t.shape_str() + " x " + dtype_name(*dt) + " is " +
                std::to_string(nbytes) + " bytes but data_offsets " + span_str + " span " +
                std::to_string(end - begin));
    t.data = data + begin;
    t.nbytes = size_t(nbytes);
    auto [it, inserted] = f->tensors_.emplace(name, std::move(t));
    if (begin != end) spans.push_back({begin, end, &it->first});
  }

  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].begin < spans[i - 1].end)
      throw fail("tensor '" + *spans[i].name + "': data overlaps tensor '" + *spans[i - 1].name +
                 "'");
  return f;
}

bool SafetensorsFile::release_pages(const TensorView& t) const {
  const auto begin = reinterpret_cast<uintptr_t>(t.data), end = begin + t.nbytes;
  const auto map = reinterpret_cast<uintptr_t>(map_);
  if (!map_ || begin < map || end > map + map_size_) return false;
  const auto page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;
  // Pages shared with a neighbouring tensor stay. The mapping is private and never written, so
  // MADV_DONTNEED only unmaps clean file pages; failure is harmless (they stay resident).
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
  return true;
}

}  // namespace medrt
