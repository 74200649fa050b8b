// The CUDA side of medrt as the rest of the engine sees it: whether a CUDA backend can run
// here (and why not), the backend itself, and graph capture of a step's queued ops. Every
// function exists in every build: built without CUDA (MEDRT_CUDA=OFF) cuda_status() says so,
// cuda_available() is false and the constructors throw InvalidRequest saying why.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "medrt/backend.h"

namespace medrt {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;            // "NVIDIA H200"
  int cc_major = 0, cc_minor = 0;
  int64_t total_memory = 0;    // bytes
  int64_t free_memory = 0;     // bytes, when queried
  int multiprocessors = 0;
};

struct CudaStatus {
  bool built = false;          // this libmedrt has the CUDA backend
  bool available = false;      // built, a driver answers and a device of a built arch exists
  std::string reason;          // why not available (or "ok")
  std::string archs;           // the SM architectures compiled in ("80,90")
  int runtime_version = 0;     // cudaRuntimeGetVersion (13000 = 13.0)
  int driver_version = 0;      // cudaDriverGetVersion; 0: no driver
  std::vector<CudaDeviceInfo> devices;
};

CudaStatus cuda_status();
bool cuda_available();

struct CudaBackendOptions {
  int device = 0;
  // Scratch of the attention split-KV partials (bytes, allocated once at construction): the
  // number of key splits a launch uses shrinks to fit it, never grows it.
  int64_t attention_scratch_bytes = 64ll << 20;
};

// The CUDA backend on one device and one stream (backend/cuda/cuda_backend.h). Throws
// InvalidRequest when !cuda_available() or the device index is out of range.
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options = {});
bool is_cuda_backend(const Backend& b);

// A step captured as a CUDA graph: the ops `enqueue` queues on the backend's stream, replayed
// with the same pointers (so inputs go into persistent buffers before replay()).
class StepGraph {
 public:
  virtual ~StepGraph() = default;
  virtual void replay() = 0;  // queued on the backend's stream, like any op
};

// Captures what `enqueue` queues on `b` (which must be a CUDA backend; InvalidRequest
// otherwise). enqueue must not synchronise or copy from the host (Backend rules).
std::unique_ptr<StepGraph> capture_step_graph(Backend& b, const std::function<void()>& enqueue);

}  // namespace medrt
