// A mutation fuzzing driver for compilers without libFuzzer (gcc): runs the harness's
// LLVMFuzzerTestOneInput on mutations of a seed corpus for -max_total_time seconds. It has no
// coverage feedback, so it is weaker than libFuzzer; with sanitizers it still finds the
// crashes random edits of real files reach. A crashing input is written to crash-<harness>
// (the sanitizers' death callback and std::terminate both dump it, and so does a handler for
// SIGILL and SIGFPE: a harness's invariant check is a __builtin_trap, which no sanitizer
// reports).
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" void __sanitizer_set_death_callback(void (*)(void)) __attribute__((weak));

namespace {

std::vector<uint8_t> g_current;
std::string g_crash_path = "crash-input";

// The crashing input from a signal handler: open/write/close only (async-signal-safe), then
// the signal again with its default action, so the process still dies of it.
void dump_on_signal(int sig) {
  const int fd = ::open(g_crash_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    const uint8_t* p = g_current.data();
    for (size_t left = g_current.size(); left > 0;) {
      const ssize_t n = ::write(fd, p, left);
      if (n <= 0) break;
      p += n, left -= size_t(n);
    }
    ::close(fd);
  }
  static const char kMsg[] = "fuzz: crashing input written to ";
  [[maybe_unused]] ssize_t w = ::write(2, kMsg, sizeof kMsg - 1);
  w = ::write(2, g_crash_path.c_str(), std::strlen(g_crash_path.c_str()));
  w = ::write(2, "\n", 1);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

void dump_current() {
  std::ofstream f(g_crash_path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(g_current.data()), std::streamsize(g_current.size()));
  std::fprintf(stderr, "fuzz: crashing input (%zu bytes) written to %s\n", g_current.size(),
               g_crash_path.c_str());
}

// Tokens that steer mutations toward the structures the parsers read.
const char* const kDictionary[] = {
    "{", "}", "[", "]", ",", ":", "\"", "null", "true", "false", "-", "e308", "1e-400",
    "\\u0000", "\\ud800", "\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"F32\"", "\"BF16\"",
    "\"__metadata__\"", "\"vocab_size\"", "\"hidden_size\"", "\"num_hidden_layers\"",
    "\"eos_token_id\"", "\"rope_scaling\"", "\"architectures\"", "9223372036854775807",
    "18446744073709551616", "2147483648", "-1", "0", "4294967295", "\xff\xff\xff\xff"};
const uint64_t kInteresting[] = {0, 1, 7, 8, 0x7f, 0xff, 0x7fff, 0xffff, 0x7fffffff, 0xffffffff,
                                 0x7fffffffffffffffull, 0xffffffffffffffffull, 100ull << 20};

void mutate(std::vector<uint8_t>& d, const std::vector<std::vector<uint8_t>>& corpus,
            std::mt19937_64& rng) {
  auto pick = [&](size_t n) { return n ? size_t(rng() % n) : 0; };
  const int edits = 1 + int(rng() % 4);
  for (int e = 0; e < edits; ++e) {
    switch (rng() % 8) {
      case 0:  // flip a bit
        if (!d.empty()) d[pick(d.size())] ^= uint8_t(1u << (rng() % 8));
        break;
      case 1:  // set a byte
        if (!d.empty()) d[pick(d.size())] = uint8_t(rng());
        break;
      case 2: {  // erase a range
        if (d.empty()) break;
        size_t a = pick(d.size()), n = 1 + pick(std::min<size_t>(16, d.size() - a));
        d.erase(d.begin() + ptrdiff_t(a), d.begin() + ptrdiff_t(std::min(d.size(), a + n)));
        break;
      }
      case 3: {  // insert a dictionary token
        const char* t = kDictionary[pick(std::size(kDictionary))];
        d.insert(d.begin() + ptrdiff_t(pick(d.size() + 1)), t, t + std::strlen(t));
        break;
      }
      case 4: {  // overwrite 1, 2, 4 or 8 bytes with an interesting little-endian integer
        uint64_t v = kInteresting[pick(std::size(kInteresting))];
        size_t w = size_t(1) << (rng() % 4);
        if (d.size() < w) break;
        size_t at = pick(d.size() - w + 1);
        for (size_t i = 0; i < w; ++i) d[at + i] = uint8_t(v >> (8 * i));
        break;
      }
      case 5: {  // splice in part of another corpus input
        const auto& o = corpus[pick(corpus.size())];
        if (o.empty()) break;
        size_t a = pick(o.size()), n = 1 + pick(o.size() - a);
        d.insert(d.begin() + ptrdiff_t(pick(d.size() + 1)), o.begin() + ptrdiff_t(a),
                 o.begin() + ptrdiff_t(a + n));
        break;
      }
      case 6: {  // duplicate a range (deep nesting, long arrays)
        if (d.empty()) break;
        size_t a = pick(d.size()), n = 1 + pick(std::min<size_t>(64, d.size() - a));
        std::vector<uint8_t> part(d.begin() + ptrdiff_t(a), d.begin() + ptrdiff_t(a + n));
        for (int r = 0, k = 1 + int(rng() % 8); r < k; ++r)
          d.insert(d.begin() + ptrdiff_t(a), part.begin(), part.end());
        break;
      }
      default:  // truncate
        if (!d.empty()) d.resize(pick(d.size()));
        break;
    }
  }
  if (d.size() > (1u << 20)) d.resize(1u << 20);
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 60;
  std::vector<std::string> dirs;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("-max_total_time=", 0) == 0) seconds = std::atof(a.c_str() + 16);
    else if (a[0] != '-') dirs.push_back(a);
  }
  g_crash_path = "crash-" + std::filesystem::path(argv[0]).filename().string();
  std::vector<std::vector<uint8_t>> corpus;
  for (const std::string& dir : dirs)
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      std::ifstream f(entry.path(), std::ios::binary);
      corpus.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    }
  if (corpus.empty()) corpus.emplace_back();
  if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(dump_current);
  // Not SIGSEGV or SIGABRT: ASan reports those itself and calls the death callback.
  std::signal(SIGILL, dump_on_signal);
  std::signal(SIGFPE, dump_on_signal);
  std::set_terminate([] {
    dump_current();
    std::abort();
  });

  std::mt19937_64 rng(std::random_device{}());
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  uint64_t runs = 0;
  for (const auto& seed : corpus) {  // every seed as is, first
    g_current = seed;
    LLVMFuzzerTestOneInput(g_current.data(), g_current.size());
    ++runs;
  }
  while (std::chrono::steady_clock::now() < end) {
    for (int batch = 0; batch < 64; ++batch, ++runs) {
      g_current = corpus[size_t(rng() % corpus.size())];
      mutate(g_current, corpus, rng);
      LLVMFuzzerTestOneInput(g_current.data(), g_current.size());
    }
  }
  std::printf("fuzz: %llu runs in %.0f s, no crash (%zu seed inputs)\n",
              static_cast<unsigned long long>(runs), seconds, corpus.size());
  return 0;
}
