// medrt._core.cuda_status(): what the CUDA side of this build sees (medrt/cuda.h), as a dict
// for medrt.device and `medrt info`.
#include <pybind11/stl.h>

#include "bindings.h"
#include "medrt/cuda.h"

namespace py = pybind11;

namespace medrt::bindings {

void bind_device(py::module_& m) {
  m.def("cuda_status", [] {
    CudaStatus s;
    {
      py::gil_scoped_release release;
      s = cuda_status();
    }
    py::list devices;
    for (const CudaDeviceInfo& d : s.devices) {
      py::dict e;
      e["index"] = d.index;
      e["name"] = d.name;
      e["compute_capability"] = std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor);
      e["total_memory"] = d.total_memory;
      e["free_memory"] = d.free_memory;
      e["multiprocessors"] = d.multiprocessors;
      devices.append(e);
    }
    py::dict out;
    out["built"] = s.built;
    out["available"] = s.available;
    out["reason"] = s.reason;
    out["archs"] = s.archs;
    out["runtime_version"] = s.runtime_version;
    out["driver_version"] = s.driver_version;
    out["devices"] = devices;
    return out;
  }, "The CUDA backend's build and device status (medrt/cuda.h CudaStatus).");
}

}  // namespace medrt::bindings
