#include "bindings.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "medrt's C++ engine (libmedrt). Use the Python API in `medrt`, not this module.";
  medrt::bindings::bind_errors(m);
  medrt::bindings::bind_checkpoint(m);
  medrt::bindings::bind_model(m);
  medrt::bindings::bind_engine(m);
  medrt::bindings::bind_device(m);
  medrt::bindings::bind_encoder(m);
  medrt::bindings::bind_arch(m);
}
