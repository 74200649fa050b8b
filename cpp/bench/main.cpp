// medrt-bench: llama-bench style throughput rows for one model through the public Engine API.
//
//   medrt-bench -m MODEL_DIR -t 2 -p 512 -n 128 --batched 1,4,16,64 -r 5
//   medrt-bench linear --shape 1536x576 -t 2     (one layer per weight type: linear_bench.h)
//
// Rows: pp<p> (prompt tokens/s, one p-token prompt, one token generated), tg<n> (generated
// tokens/s at batch 1 from a 1-token prompt, as llama-bench's tg), and for each concurrency B
// "pp<bp>+tg<bn> xB": B requests of bp prompt + bn generated tokens queued at once, total
// tokens/s = B * (bp + bn) / wall time (llama-batched-bench's S column). Each figure is the
// median of r repetitions after one warm-up run of the same shape.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "bandwidth.h"
#include "linear_bench.h"
#include "medrt/checkpoint.h"
#include "medrt/engine.h"
#include "medrt/error.h"
#include "medrt/kv_cache.h"
#include "medrt/thread_pool.h"
#include "workloads.h"

namespace {

struct Args {
  std::string model_dir;
  int threads = 0;
  int prompt = 512;
  int gen = 128;
  std::vector<int> batched = {1, 4, 16, 64};
  int batched_prompt = 128;
  int batched_gen = 128;
  int reps = 5;
  int bandwidth_mib = 1024;
  bool json = false;
  uint64_t seed = 1234;
  medrt::ActPrecision act = medrt::ActPrecision::Int8;
  medrt::DType kv_dtype = medrt::DType::F32;
};

const char* kUsage =
    "usage: medrt-bench -m MODEL_DIR [-t THREADS] [-p 512] [-n 128] [--batched 1,4,16,64]\n"
    "                   [--batched-prompt 128] [--batched-gen 128] [-r 5]\n"
    "                   [--bandwidth-mib 1024] [--seed N] [--activations int8|int8x2]\n"
    "                   [--kv-cache-dtype f32|f16] [--json]\n"
    "  -p 0, -n 0, --batched '' or --bandwidth-mib 0 skip that measurement.\n"
    "  --json prints one JSON object per row instead of the markdown table.\n";

[[noreturn]] void usage_error(const std::string& what) {
  std::fprintf(stderr, "medrt-bench: %s\n%s", what.c_str(), kUsage);
  std::exit(2);
}

int parse_int(const std::string& flag, const std::string& v, int min) {
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < min || x > 1 << 30)
    usage_error(flag + " expects an integer >= " + std::to_string(min) + ", got '" + v + "'");
  return int(x);
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    if (f == "-h" || f == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (f == "--json") {
      a.json = true;
      continue;
    }
    if (i + 1 >= argc) usage_error(f + " needs a value");
    std::string v = argv[++i];
    if (f == "-m" || f == "--model") a.model_dir = v;
    else if (f == "-t" || f == "--threads") a.threads = parse_int(f, v, 0);
    else if (f == "-p" || f == "--n-prompt") a.prompt = parse_int(f, v, 0);
    else if (f == "-n" || f == "--n-gen") a.gen = parse_int(f, v, 0);
    else if (f == "-r" || f == "--repetitions") a.reps = parse_int(f, v, 1);
    else if (f == "--batched-prompt") a.batched_prompt = parse_int(f, v, 1);
    else if (f == "--batched-gen") a.batched_gen = parse_int(f, v, 1);
    else if (f == "--bandwidth-mib") a.bandwidth_mib = parse_int(f, v, 0);
    else if (f == "--seed") a.seed = uint64_t(parse_int(f, v, 0));
    else if (f == "--activations") {
      try {
        a.act = medrt::parse_act_precision(v);
      } catch (const medrt::Error& e) {
        usage_error(std::string("--activations: ") + e.what());
      }
    } else if (f == "--kv-cache-dtype") {
      try {
        a.kv_dtype = medrt::parse_kv_cache_dtype(v);
      } catch (const medrt::Error& e) {
        usage_error(std::string("--kv-cache-dtype: ") + e.what());
      }
    }
    else if (f == "--batched") {
      a.batched.clear();
      std::stringstream ss(v);
      for (std::string item; std::getline(ss, item, ',');)
        if (!item.empty()) a.batched.push_back(parse_int(f, item, 1));
    } else {
      usage_error("unknown option " + f);
    }
  }
  if (a.model_dir.empty()) usage_error("-m MODEL_DIR is required");
  return a;
}

int64_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  int64_t pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * int64_t(::sysconf(_SC_PAGESIZE));
}

int64_t peak_rss_bytes() {
  struct rusage ru;
  ::getrusage(RUSAGE_SELF, &ru);
  return int64_t(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double stddev(const std::vector<double>& v) {
  if (v.size() < 2) return 0.0;
  double mean = 0.0, ss = 0.0;
  for (double x : v) mean += x;
  mean /= double(v.size());
  for (double x : v) ss += (x - mean) * (x - mean);
  return std::sqrt(ss / double(v.size() - 1));
}

std::string model_name(const std::string& dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  size_t slash = d.rfind('/');
  return slash == std::string::npos ? d : d.substr(slash + 1);
}

struct Row {
  std::string test;
  double tps_median = 0.0;
  double tps_stddev = 0.0;
  double seconds_median = 0.0;
};

class Printer {
 public:
  Printer(const Args& a, std::string model, int threads, int64_t weight_bytes)
      : json_(a.json), model_(std::move(model)), threads_(threads), weights_(weight_bytes) {}

  void header() const {
    if (json_) return;
    std::printf("| model | weights | threads | test | t/s |\n");
    std::printf("| ----- | ------: | ------: | ---- | --: |\n");
  }

  void row(const Row& r) const {
    if (json_) {
      std::printf(
          "{\"engine\": \"medrt\", \"model\": \"%s\", \"weight_bytes\": %lld, \"threads\": %d, "
          "\"test\": \"%s\", \"tokens_per_s\": %.3f, \"stddev\": %.3f, \"seconds\": %.6f}\n",
          model_.c_str(), static_cast<long long>(weights_), threads_, r.test.c_str(),
          r.tps_median, r.tps_stddev, r.seconds_median);
    } else {
      std::printf("| %s | %.1f MiB | %d | %s | %.2f ± %.2f |\n", model_.c_str(),
                  double(weights_) / (1 << 20), threads_, r.test.c_str(), r.tps_median,
                  r.tps_stddev);
    }
    std::fflush(stdout);
  }

  void footer(double bandwidth, int64_t rss_after_load, int64_t peak_rss) const {
    if (json_) {
      std::printf(
          "{\"engine\": \"medrt\", \"model\": \"%s\", \"weight_bytes\": %lld, \"threads\": %d, "
          "\"read_bandwidth_bytes_per_s\": %.0f, \"rss_after_load_bytes\": %lld, "
          "\"peak_rss_bytes\": %lld}\n",
          model_.c_str(), static_cast<long long>(weights_), threads_, bandwidth,
          static_cast<long long>(rss_after_load), static_cast<long long>(peak_rss));
      return;
    }
    std::printf("\nweights %.1f MiB, RSS after load %.1f MiB, peak RSS %.1f MiB\n",
                double(weights_) / (1 << 20), double(rss_after_load) / (1 << 20),
                double(peak_rss) / (1 << 20));
    if (bandwidth > 0)
      std::printf("read bandwidth (%d threads) %.2f GB/s: batch-1 decode bound %.1f tokens/s\n",
                  threads_, bandwidth / 1e9, bandwidth / double(weights_));
  }

 private:
  bool json_;
  std::string model_;
  int threads_;
  int64_t weights_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "linear") == 0) {
    try {
      return medrt::bench::linear_main(argc - 1, argv + 1);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "medrt-bench linear: %s\n", e.what());
      return 1;
    }
  }
  Args a = parse_args(argc, argv);
  try {
    int64_t weight_bytes = int64_t(medrt::Checkpoint::open(a.model_dir)->total_bytes());
    int max_batch = a.batched.empty() ? 1 : *std::max_element(a.batched.begin(), a.batched.end());

    medrt::EngineConfig cfg;
    cfg.model_dir = a.model_dir;
    cfg.num_threads = a.threads;
    cfg.activation_precision = a.act;
    cfg.kv_cache_dtype = a.kv_dtype;
    cfg.enable_prefix_caching = false;  // every repetition computes its prompt in full
    cfg.max_num_seqs = std::max(cfg.max_num_seqs, max_batch);
    // A pool that holds every sequence of the largest run at once: preemption would measure
    // the pool size, not the engine.
    int64_t bs = cfg.block_size;
    auto blocks_for = [&](int64_t tokens) { return (tokens + bs - 1) / bs + 1; };
    cfg.num_blocks = std::max({blocks_for(a.prompt + 1), blocks_for(a.gen + 1),
                               max_batch * blocks_for(a.batched_prompt + a.batched_gen)});
    medrt::Engine engine(cfg);
    int64_t rss_after_load = rss_bytes();
    int threads = a.threads > 0 ? a.threads : medrt::ThreadPool::physical_cores();

    medrt::bench::PromptSource prompts(engine.model_config().vocab_size, a.seed);
    Printer out(a, model_name(a.model_dir), threads, weight_bytes);
    out.header();

    auto measure = [&](const std::string& test, int n_seqs, int prompt_len, int gen_len,
                       int64_t counted_tokens) {
      medrt::bench::run_requests(engine, prompts, n_seqs, prompt_len, gen_len);  // warm-up
      std::vector<double> secs, tps;
      for (int r = 0; r < a.reps; ++r) {
        double s = medrt::bench::run_requests(engine, prompts, n_seqs, prompt_len, gen_len);
        secs.push_back(s);
        tps.push_back(double(counted_tokens) / s);
      }
      out.row({test, median(tps), stddev(tps), median(secs)});
    };
    if (a.prompt > 0) measure("pp" + std::to_string(a.prompt), 1, a.prompt, 1, a.prompt);
    if (a.gen > 0) measure("tg" + std::to_string(a.gen), 1, 1, a.gen, a.gen);
    for (int b : a.batched)
      measure("pp" + std::to_string(a.batched_prompt) + "+tg" + std::to_string(a.batched_gen) +
                  " x" + std::to_string(b),
              b, a.batched_prompt, a.batched_gen,
              int64_t(b) * (a.batched_prompt + a.batched_gen));

    int64_t peak_rss = peak_rss_bytes();  // before the bandwidth buffer inflates it
    double bandwidth = a.bandwidth_mib > 0
                           ? medrt::bench::read_bandwidth(size_t(a.bandwidth_mib) << 20, threads, 5)
                           : 0.0;
    out.footer(bandwidth, rss_after_load, peak_rss);
  } catch (const medrt::Error& e) {
    std::fprintf(stderr, "medrt-bench: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "medrt-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
