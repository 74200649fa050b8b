// Checkpoint inspection from Python: what a safetensors file or model directory holds, after
// the same validation the engine applies when it loads one.
#include <pybind11/stl.h>

#include "bindings.h"
#include "medrt/checkpoint.h"

namespace py = pybind11;

namespace medrt::bindings {

namespace {
py::tuple describe(const TensorView& t) { return py::make_tuple(dtype_name(t.dtype), t.shape); }
}  // namespace

void bind_checkpoint(py::module_& m) {
  m.def(
      "open_safetensors",
      [](const std::string& path) {
        std::unique_ptr<SafetensorsFile> f;
        {
          py::gil_scoped_release nogil;
          f = SafetensorsFile::open(path);
        }
        py::dict out;
        for (const auto& [name, t] : f->tensors()) out[py::str(name)] = describe(t);
        return out;
      },
      py::arg("path"),
      "Validates a .safetensors file; returns {name: (dtype, shape)}. Raises "
      "medrt.errors.InvalidCheckpoint naming the file and tensor.");
  m.def(
      "open_checkpoint",
      [](const std::string& dir) {
        std::unique_ptr<Checkpoint> ck;
        {
          py::gil_scoped_release nogil;
          ck = Checkpoint::open(dir);
        }
        py::dict tensors;
        for (const std::string& name : ck->names())
          tensors[py::str(name)] = describe(*ck->find(name));
        py::dict out;
        out["config"] = model_config_dict(ck->config());
        out["tensors"] = tensors;
        return out;
      },
      py::arg("dir"),
      "Validates a model directory (config.json and its safetensors); returns {'config': {...}, "
      "'tensors': {name: (dtype, shape)}}.");
}

}  // namespace medrt::bindings
