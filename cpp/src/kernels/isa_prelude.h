// Force-included (-include) into every *_avx2.cpp and *_avx512.cpp file, ahead of its code.
//
// Why: a standard-library template used in an ISA file (std::vector<float>'s destructor, say)
// is compiled there with -mavx2 and emitted as a weak symbol; the linker keeps one copy of a
// weak symbol for the whole program and may keep that one, so portable code would then run
// AVX instructions and die with SIGILL on an older CPU. The explicit instantiation
// declarations below stop ISA files from emitting these templates at all (the compiler may
// still inline them); isa_std_instances.cpp, built without ISA flags, holds the one copy.
//
// scripts/check_isa.py guards it in CI: an ISA object may define no global or weak symbol
// outside medrt::cpu::avx2 / medrt::cpu::avx512, and no function outside those namespaces may
// hold a VEX/EVEX instruction. When it names a new std template, declare it here and
// instantiate it in isa_std_instances.cpp.
#pragma once
#include <vector>

extern template class std::vector<float>;
