// How many CPUs this process may use: the affinity mask (taskset, numactl, a container's
// cpuset) and the cgroup CPU quota (docker --cpus, Kubernetes limits), whichever is smaller.
// A pool with more threads than that only time-slices, and every parallel region then waits
// for a descheduled thread.
#include <algorithm>
#include <climits>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "medrt/error.h"
#include "medrt/thread_pool.h"

#if defined(__linux__)
#include <sched.h>
#endif

namespace medrt {
namespace {

int affinity_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1, int(std::thread::hardware_concurrency()));
}

// ceil(quota / period), or INT_MAX for "no limit" or an unreadable file.
int quota_cpus(double quota, double period) {
  if (quota <= 0 || period <= 0) return INT_MAX;
  return std::max(1, int((quota + period - 1) / period));
}

// cgroup v2 writes "max 100000" or "<quota> <period>" into cpu.max; v1 splits them into
// cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us.
int cgroup_dir_cpus(const std::string& dir) {
  std::ifstream v2(dir + "/cpu.max");
  std::string q;
  double period = 0;
  if (v2 >> q >> period) return q == "max" ? INT_MAX : quota_cpus(std::atof(q.c_str()), period);
  std::ifstream quota_f(dir + "/cpu.cfs_quota_us"), period_f(dir + "/cpu.cfs_period_us");
  double quota = 0;
  if (quota_f >> quota && period_f >> period) return quota_cpus(quota, period);
  return INT_MAX;
}

// The smallest quota on the way from this process's cgroup up to the root: a parent's limit
// binds its children too.
int cgroup_cpus() {
  int best = INT_MAX;
  std::ifstream f("/proc/self/cgroup");
  std::string line;
  while (std::getline(f, line)) {
    // "hierarchy-id:controllers:path"; v2 has empty controllers, v1 lists "cpu" among them.
    size_t a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    std::vector<std::string> roots;
    if (controllers.empty()) {
      roots = {"/sys/fs/cgroup"};
    } else {
      std::stringstream ss(controllers);
      std::string c;
      bool cpu = false;
      while (std::getline(ss, c, ',')) cpu |= c == "cpu";
      if (!cpu) continue;
      roots = {"/sys/fs/cgroup/" + controllers, "/sys/fs/cgroup/cpu"};
    }
    for (const std::string& root : roots) {
      for (std::string p = path;; p = p.substr(0, p.rfind('/'))) {
        best = std::min(best, cgroup_dir_cpus(root + p));
        if (p.empty() || p == "/") break;
      }
    }
  }
  return best;
}

}  // namespace

int ThreadPool::usable_cpus() { return std::max(1, std::min(affinity_cpus(), cgroup_cpus())); }

int ThreadPool::resolve_num_threads(int requested) {
  const int usable = usable_cpus();
  if (requested == 0) return std::min(physical_cores(), usable);
  if (requested < 0)
    throw InvalidRequest("num_threads = " + std::to_string(requested) +
                         ": must be 0 (one per physical core) or a positive count");
  if (requested > usable)
    throw InvalidRequest("num_threads = " + std::to_string(requested) +
                         ": this process may run on at most " + std::to_string(usable) +
                         " CPUs (CPU affinity " + std::to_string(affinity_cpus()) +
                         ", cgroup quota " +
                         (cgroup_cpus() == INT_MAX ? std::string("none")
                                                   : std::to_string(cgroup_cpus())) +
                         "); use at most " + std::to_string(usable) + " or 0 for the default");
  return requested;
}

}  // namespace medrt
