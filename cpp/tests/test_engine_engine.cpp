// The engine end to end on a tiny checkpoint written by the test: requests added from several
// threads while the loop runs give the tokens each gives alone; preemption and abort give
// every block back. (tests/test_engine.py covers the same ground through Python in depth;
// this one runs under the sanitizers.)
#include <time.h>

#include <chrono>
#include <map>
#include <thread>

#include "check.h"
#include "engine/failpoint.h"
#include "medrt/engine.h"
#include "medrt/error.h"
#include "medrt/thread_pool.h"
#include "tiny_checkpoint.h"

using namespace medrt;

namespace {

struct Request {
  std::vector<int32_t> prompt;
  SamplingParams params;
};

std::vector<Request> requests(int n) {
  std::mt19937 rng(3);
  std::vector<Request> out;
  for (int i = 0; i < n; ++i) {
    Request r;
    for (int t = 0; t < 2 + 5 * i % 37; ++t) r.prompt.push_back(int32_t(3 + rng() % 60));
    r.params.max_tokens = 6 + i % 5;
    r.params.ignore_eos = true;
    r.params.temperature = i % 2 ? 0.0f : 1.0f;
    r.params.top_p = 0.9f;
    r.params.seed = 50 + i;
    out.push_back(r);
  }
  return out;
}

EngineConfig config(const std::string& dir, int64_t num_blocks) {
  EngineConfig c;
  c.model_dir = dir;
  c.block_size = 4;
  c.num_blocks = num_blocks;
  c.max_num_batched_tokens = 16;
  c.num_threads = 2;
  return c;
}

// Bounds every wait in these tests: a hang becomes a failed CHECK, not a stuck CI job.
constexpr auto kTestDeadline = std::chrono::seconds(60);

// id -> tokens, running synchronously until every request finished (at most 10,000 steps).
std::map<uint64_t, std::vector<int32_t>> drain(Engine& e) {
  std::map<uint64_t, std::vector<int32_t>> tokens;
  for (int steps = 0; e.has_unfinished(); ++steps) {
    if (steps == 10000) {
      CHECK(!"requests still unfinished after 10,000 steps");
      break;
    }
    for (const RequestOutput& o : e.step())
      tokens[o.request_id].insert(tokens[o.request_id].end(), o.new_token_ids.begin(),
                                  o.new_token_ids.end());
  }
  return tokens;
}

struct Fixture {
  medrt_test::TempDir dir{"engine"};
  Fixture() {
    medrt_test::TinyCheckpoint ck;
    ck.fill_random(11);
    ck.write(dir.path);
  }
  std::string path() const { return dir.path.string(); }
};

std::vector<std::vector<int32_t>> alone(const std::string& dir, const std::vector<Request>& reqs) {
  std::vector<std::vector<int32_t>> out;
  for (const Request& r : reqs) {
    Engine e(config(dir, 64));
    uint64_t id = e.add_request(r.prompt, r.params);
    out.push_back(drain(e)[id]);
  }
  return out;
}

}  // namespace

TEST(concurrent_clients_get_their_lone_tokens) {
  Fixture f;
  std::vector<Request> reqs = requests(12);
  std::vector<std::vector<int32_t>> want = alone(f.path(), reqs);

  Engine e(config(f.path(), 64));
  e.start();
  std::vector<uint64_t> ids(reqs.size());
  std::vector<std::thread> clients;
  for (size_t c = 0; c < 4; ++c)
    clients.emplace_back([&, c] {
      for (size_t i = c; i < reqs.size(); i += 4) ids[i] = e.add_request(reqs[i].prompt, reqs[i].params);
    });
  for (auto& t : clients) t.join();
  Request big = reqs[0];
  big.params.max_tokens = 200;
  uint64_t victim = e.add_request(big.prompt, big.params);
  e.abort(victim);

  std::map<uint64_t, std::vector<int32_t>> got;
  std::map<uint64_t, FinishReason> reason;
  const auto deadline = std::chrono::steady_clock::now() + kTestDeadline;
  while (reason.size() < reqs.size() + 1 && std::chrono::steady_clock::now() < deadline)
    for (const RequestOutput& o : e.wait_outputs(std::chrono::milliseconds(100))) {
      got[o.request_id].insert(got[o.request_id].end(), o.new_token_ids.begin(), o.new_token_ids.end());
      if (o.finished) reason[o.request_id] = o.finish_reason;
    }
  e.stop();
  CHECK(reason.size() == reqs.size() + 1);
  for (size_t i = 0; i < reqs.size(); ++i) {
    CHECK(got[ids[i]] == want[i]);
    CHECK(reason[ids[i]] == FinishReason::Length);
  }
  CHECK(reason[victim] == FinishReason::Abort);
  CHECK(!e.has_unfinished());
  CHECK(e.stats().free_blocks == 64);
}

TEST(preemption_and_abort_return_every_block) {
  Fixture f;
  std::vector<Request> reqs = requests(8);
  std::vector<std::vector<int32_t>> want = alone(f.path(), reqs);
  Engine e(config(f.path(), 14));
  std::vector<uint64_t> ids;
  for (const Request& r : reqs) ids.push_back(e.add_request(r.prompt, r.params));
  std::map<uint64_t, std::vector<int32_t>> got = drain(e);
  CHECK(e.stats().num_preemptions > 0);
  for (size_t i = 0; i < reqs.size(); ++i) CHECK(got[ids[i]] == want[i]);
  CHECK(e.stats().free_blocks == 14);

  uint64_t id = e.add_request(std::vector<int32_t>(40, 7), reqs[0].params);
  CHECK(e.step().empty());  // a 16-token chunk of 40
  CHECK(e.stats().free_blocks < 14);
  e.abort(id);
  std::vector<RequestOutput> out = e.step();
  CHECK(out.size() == 1 && out[0].finish_reason == FinishReason::Abort);
  CHECK(e.stats().free_blocks == 14);
}

TEST(rejects_bad_requests) {
  Fixture f;
  Engine e(config(f.path(), 8));
  SamplingParams p;
  CHECK_THROWS(InvalidRequest, e.add_request({}, p), "prompt");
  CHECK_THROWS(InvalidRequest, e.add_request({1, 64}, p), "prompt[1]");
  p.top_p = 0.0f;
  CHECK_THROWS(InvalidRequest, e.add_request({1, 2}, p), "top_p");
  p = SamplingParams{};
  p.max_tokens = 40;
  CHECK_THROWS(CapacityError, e.add_request({1, 2}, p), "KV blocks");
  CHECK(!e.has_unfinished());
}

TEST(thread_count_must_fit_the_machine) {
  Fixture f;
  EngineConfig c = config(f.path(), 8);
  c.num_threads = ThreadPool::usable_cpus() + 1;
  CHECK_THROWS(InvalidRequest, Engine{c}, "CPUs");
  c.num_threads = -3;
  CHECK_THROWS(InvalidRequest, Engine{c}, "num_threads = -3");
}

TEST(idle_engine_uses_no_cpu) {
  // The loop thread waits on a condition variable and the pool's workers block once their
  // short spin ends: a started engine with nothing to do stays below 1% of one core.
  Fixture f;
  EngineConfig c = config(f.path(), 16);
  c.num_threads = ThreadPool::usable_cpus();
  Engine e(c);
  e.start();
  SamplingParams p;
  p.max_tokens = 4;
  uint64_t id = e.add_request({1, 2, 3}, p);
  bool done = false;
  const auto deadline = std::chrono::steady_clock::now() + kTestDeadline;
  while (!done && std::chrono::steady_clock::now() < deadline)
    for (const RequestOutput& o : e.wait_outputs(std::chrono::milliseconds(100)))
      done |= o.request_id == id && o.finished;
  CHECK(done);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto cpu = [] {
    timespec t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
  };
  const double c0 = cpu();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const double used = cpu() - c0;
  std::printf("idle engine (%d threads): %.3f ms CPU in 1 s\n", c.num_threads, used * 1e3);
  CHECK(used < 0.01);
  e.stop();
}

TEST(failed_step_ends_its_requests_with_error) {
  Fixture f;
  Engine e(config(f.path(), 16));
  std::vector<Request> reqs = requests(2);
  std::vector<uint64_t> ids;
  for (const Request& r : reqs) ids.push_back(e.add_request(r.prompt, r.params));
  e.step();
  engine::failpoint::failing_steps = 1;
  CHECK_THROWS(Error, e.step(), "injected");
  CHECK(!e.has_unfinished());  // nobody waits for a step that will never come
  std::vector<RequestOutput> out = e.step();
  CHECK(out.size() == 2);
  for (const RequestOutput& o : out)
    CHECK(o.finished && o.finish_reason == FinishReason::Error &&
          std::string(finish_reason_name(o.finish_reason)) == "error");
  CHECK(e.stats().free_blocks == 16);
  // The engine goes on serving new requests.
  uint64_t id = e.add_request(reqs[0].prompt, reqs[0].params);
  CHECK(int(drain(e)[id].size()) == reqs[0].params.max_tokens);
}

TEST(failed_background_step_reports_error_then_outputs) {
  Fixture f;
  Engine e(config(f.path(), 16));
  e.start();
  engine::failpoint::failing_steps = 1;
  std::vector<Request> reqs = requests(1);
  uint64_t id = e.add_request(reqs[0].prompt, reqs[0].params);
  bool thrown = false, ended = false;
  const auto deadline = std::chrono::steady_clock::now() + kTestDeadline;
  while (!ended && std::chrono::steady_clock::now() < deadline) {
    try {
      for (const RequestOutput& o : e.wait_outputs(std::chrono::milliseconds(100)))
        ended |= o.request_id == id && o.finished && o.finish_reason == FinishReason::Error;
    } catch (const Error& err) {
      thrown = std::string(err.what()).find("injected") != std::string::npos;
    }
  }
  CHECK(thrown && ended);
  CHECK(!e.has_unfinished());
  e.stop();
}

TEST(stop_and_destructor_from_several_threads_while_the_loop_runs) {
  Fixture f;
  for (int rep = 0; rep < 5; ++rep) {
    auto e = std::make_unique<Engine>(config(f.path(), 64));
    e->start();
    for (const Request& r : requests(24)) {  // far more work than the stop leaves time for
      SamplingParams p = r.params;
      p.max_tokens = 200;
      e->add_request(r.prompt, p);
    }
    std::vector<std::thread> stoppers;
    for (int t = 0; t < 4; ++t)
      stoppers.emplace_back([&, t] {
        if (t % 2) e->start();  // start racing stop must not leave a thread unjoined
        e->stop();
      });
    for (auto& t : stoppers) t.join();
    // Every thread ended with stop(): the loop is stopped and steps no more.
    const int64_t steps = e->stats().steps;
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    CHECK(e->stats().steps == steps);
    CHECK(e->has_unfinished());
    e->start();
    e.reset();  // the destructor stops a running loop
  }
}
