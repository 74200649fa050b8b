// The single, portable copy of the standard-library templates the ISA kernel files use
// (isa_prelude.h declares them extern there). Compiled without ISA flags on purpose.
#include <vector>

template class std::vector<float>;
