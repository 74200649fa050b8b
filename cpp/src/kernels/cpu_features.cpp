// Run-time choice of the kernel instruction set.
#include <atomic>
#include <cstdlib>
#include <string>

#include "medrt/error.h"
#include "medrt/kernels.h"

namespace medrt::cpu {
namespace {

bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

Isa initial_isa() {
  Isa best = cpu_has_avx2_fma() ? Isa::Avx2 : Isa::Portable;
  if (const char* env = std::getenv("MEDRT_ISA")) {
    std::string v(env);
    if (v == "portable") return Isa::Portable;
    if (v == "avx2" && best == Isa::Avx2) return Isa::Avx2;
  }
  return best;
}

std::atomic<Isa>& current() {
  static std::atomic<Isa> isa{initial_isa()};
  return isa;
}

}  // namespace

Isa detected_isa() { return initial_isa(); }
Isa active_isa() { return current().load(std::memory_order_relaxed); }

void set_isa(Isa isa) {
  if (isa == Isa::Avx2 && !cpu_has_avx2_fma())
    throw InvalidRequest("this CPU lacks AVX2/FMA/F16C; use the portable kernels");
  current().store(isa);
}

const char* isa_name(Isa isa) { return isa == Isa::Avx2 ? "avx2" : "portable"; }

}  // namespace medrt::cpu
