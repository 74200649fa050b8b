// The kernel instruction sets this CPU can run, for tests that check every path.
#pragma once
#include <vector>

#include "medrt/kernels.h"

inline std::vector<medrt::cpu::Isa> isas() {
  using medrt::cpu::Isa;
  std::vector<Isa> v{Isa::Portable};
  if (medrt::cpu::detected_isa() != Isa::Portable) v.push_back(Isa::Avx2);
  if (medrt::cpu::detected_isa() == Isa::Avx512) v.push_back(Isa::Avx512);
  return v;
}
