#include "bindings.h"

namespace medrt::bindings {
void bind_engine(pybind11::module_& m) { (void)m; }  // TODO(owner): fill in
}  // namespace medrt::bindings
