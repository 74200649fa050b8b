// capture_step_graph (medrt/cuda.h): a decode step's ops captured once and replayed. The ops
// never allocate, so every graph of a runner reads and writes the same persistent buffers:
// the graphs of all batch-size buckets share one set of activations (one memory pool).
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "medrt/cuda.h"
#include "medrt/error.h"

namespace medrt {
namespace {

class CudaStepGraph : public StepGraph {
 public:
  CudaStepGraph(cuda::CudaBackend& b, cudaGraphExec_t exec) : b_(b), exec_(exec) {}
  ~CudaStepGraph() override {
    cudaSetDevice(b_.device());
    cudaGraphExecDestroy(exec_);
  }
  void replay() override {
    MEDRT_CUDA_CHECK(cudaSetDevice(b_.device()));
    MEDRT_CUDA_CHECK(cudaGraphLaunch(exec_, b_.stream()));
  }

 private:
  cuda::CudaBackend& b_;
  cudaGraphExec_t exec_;
};

}  // namespace

std::unique_ptr<StepGraph> capture_step_graph(Backend& backend,
                                              const std::function<void()>& enqueue) {
  auto* b = dynamic_cast<cuda::CudaBackend*>(&backend);
  if (!b) throw InvalidRequest("capture_step_graph needs a CUDA backend, got " + backend.name());
  MEDRT_CUDA_CHECK(cudaSetDevice(b->device()));
  MEDRT_CUDA_CHECK(cudaStreamBeginCapture(b->stream(), cudaStreamCaptureModeThreadLocal));
  try {
    enqueue();
  } catch (...) {
    cudaGraph_t broken = nullptr;
    cudaStreamEndCapture(b->stream(), &broken);  // leave the stream usable
    if (broken) cudaGraphDestroy(broken);
    cudaGetLastError();
    throw;
  }
  cudaGraph_t graph = nullptr;
  MEDRT_CUDA_CHECK(cudaStreamEndCapture(b->stream(), &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  MEDRT_CUDA_CHECK(e);
  return std::make_unique<CudaStepGraph>(*b, exec);
}

}  // namespace medrt
