// The CUDA entry points on a build or machine without CUDA: they say why and refuse with
// InvalidRequest, and the graph runner falls back to eager steps on a CPU backend.
#include "check.h"
#include "engine/cuda_graphs.h"
#include "medrt/cuda.h"
#include "medrt/error.h"

using namespace medrt;

TEST(status_says_why_cuda_cannot_run) {
  const CudaStatus s = cuda_status();
  if (s.available) return;  // a GPU machine: test_cuda_* cover it
  CHECK(!cuda_available());
  CHECK(!s.reason.empty() && s.reason != "ok");
#ifndef MEDRT_HAVE_CUDA
  CHECK(!s.built);
  CHECK(s.reason.find("-DMEDRT_CUDA=ON") != std::string::npos);
#else
  CHECK(s.built);
  CHECK(!s.archs.empty());
#endif
  CHECK_THROWS(InvalidRequest, make_cuda_backend(), s.reason.substr(0, 20));
}

TEST(graphs_need_a_cuda_backend_and_fall_back_to_eager) {
  ThreadPool pool(1);
  auto cpu = make_cpu_backend(pool);
  CHECK(!is_cuda_backend(*cpu));
  CHECK_THROWS(InvalidRequest, capture_step_graph(*cpu, [] {}), "CUDA");
  engine::DecodeGraphs graphs(*cpu, 16, /*enforce_eager=*/false);
  CHECK(!graphs.enabled());
  int staged = 0;
  const engine::DecodeGraphs::Hooks hooks{[&](int) { ++staged; }, [&](int) { ++staged; }};
  graphs.warm_up(hooks);
  CHECK(graphs.run(3, hooks) == 0);  // the caller runs the step eagerly
  CHECK(staged == 0 && graphs.replays() == 0);
}
