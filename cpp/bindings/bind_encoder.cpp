// medrt._core.Encoder: the sentence encoder (medrt/encoder.h) over packed token rows. The
// Python side (medrt.embedder) tokenizes; this file only converts arrays and releases the GIL.
#include <pybind11/numpy.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "bindings.h"
#include "medrt/encoder.h"
#include "medrt/error.h"

namespace py = pybind11;

namespace medrt::bindings {
namespace {

std::optional<DType> parse_dtype(const std::string& name) {
  if (name == "auto") return std::nullopt;
  if (auto d = dtype_from_name(name)) return d;
  throw InvalidRequest("encoder weight dtype '" + name + "': expected auto, F32, F16 or BF16");
}

class PyEncoder {
 public:
  // weight_dtype: "auto" or a safetensors float name ("F32", "F16", "BF16").
  PyEncoder(const std::string& dir, int num_threads, const std::string& weight_dtype)
      : enc_(Encoder::open(dir, EncoderOptions{num_threads, parse_dtype(weight_dtype)})) {}

  int dim() const { return enc_->dim(); }
  std::string weight_dtype() const { return dtype_name(enc_->weight_dtype()); }
  int max_tokens() const { return enc_->config().max_position_embeddings; }

  py::array_t<float> embed(
      const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& tokens,
      const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& offsets) {
    if (tokens.ndim() != 1 || offsets.ndim() != 1 || offsets.size() < 1)
      throw InvalidRequest("embed: tokens and offsets must be 1-d, offsets non-empty");
    const int64_t n = int64_t(offsets.size()) - 1;
    const int64_t* off = offsets.data();
    for (int64_t r = 0; r < n; ++r)
      if (off[r + 1] < off[r])
        throw InvalidRequest("embed: offsets must not decrease (row " + std::to_string(r) + ")");
    if (off[n] != int64_t(tokens.size()))
      throw InvalidRequest("embed: offsets end at " + std::to_string(off[n]) + " but there are " +
                           std::to_string(tokens.size()) + " tokens");
    py::array_t<float> out({n, int64_t(dim())});
    float* dst = out.mutable_data();
    const int32_t* tok = tokens.data();
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mu_);  // the encoder's pool takes one call at a time
      enc_->embed(tok, off, n, dst);
    }
    return out;
  }

 private:
  std::unique_ptr<Encoder> enc_;
  std::mutex mu_;
};

}  // namespace

void bind_encoder(py::module_& m) {
  py::class_<PyEncoder>(m, "Encoder", "A BERT sentence encoder: packed token rows -> embeddings.")
      .def(py::init<const std::string&, int, const std::string&>(), py::arg("model_dir"),
           py::arg("num_threads") = 0, py::arg("weight_dtype") = "auto",
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("dim", &PyEncoder::dim)
      .def_property_readonly("weight_dtype", &PyEncoder::weight_dtype,
                             "The type the linear weights are held in: F32, F16 or BF16.")
      .def_property_readonly("max_tokens", &PyEncoder::max_tokens)
      .def("embed", &PyEncoder::embed, py::arg("tokens"), py::arg("offsets"),
           "L2-normalised mean-pooled embeddings [len(offsets) - 1, dim] of the rows "
           "tokens[offsets[i]:offsets[i + 1]].");
}

}  // namespace medrt::bindings
