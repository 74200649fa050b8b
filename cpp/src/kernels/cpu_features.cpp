// Run-time choice of the kernel instruction set.
#include <atomic>
#include <cstdlib>
#include <string>

#include "kernels/quant_kernels.h"
#include "medrt/error.h"
#include "medrt/kernels.h"

namespace medrt::cpu {
namespace {

bool cpu_supports(Isa isa) {
  if (isa == Isa::Portable) return true;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (isa == Isa::Avx2) return avx2;
  return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

Isa initial_isa() {
  Isa best = cpu_supports(Isa::Avx512) ? Isa::Avx512
             : cpu_supports(Isa::Avx2) ? Isa::Avx2
                                       : Isa::Portable;
  if (const char* env = std::getenv("MEDRT_ISA")) {
    // The variable caps the choice: it never selects an ISA the CPU lacks.
    const std::string v(env);
    if (v == "portable") return Isa::Portable;
    if (v == "avx2" && best != Isa::Portable) return Isa::Avx2;
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
  if (!cpu_supports(isa))
    throw InvalidRequest(std::string("this CPU lacks the ") + isa_name(isa) +
                         " instructions; use a lower instruction set");
  current().store(isa);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    case Isa::Portable: break;
  }
  return "portable";
}

namespace quant {

// AVX512-VNNI (vpdpbusd) on top of the Avx512 set: the quantized kernels' int8 dot product.
bool cpu_has_avx512_vnni() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    __builtin_cpu_init();
    return cpu_supports(Isa::Avx512) && __builtin_cpu_supports("avx512vnni");
  }();
  return has;
#else
  return false;
#endif
}

}  // namespace quant
}  // namespace medrt::cpu
