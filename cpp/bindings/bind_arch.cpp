// medrt._core.architectures(): the architecture registry (medrt/arch.h) as Python sees it, so
// that Python tells an encoder directory from a decoder one by the same entries the C++
// loaders use instead of repeating their names.
#include <string>

#include "bindings.h"
#include "medrt/arch.h"

namespace py = pybind11;

namespace medrt::bindings {

void bind_arch(py::module_& m) {
  m.def(
      "architectures",
      [] {
        py::list out;
        for (const ArchSpec* a = arch_begin(); a != arch_end(); ++a) {
          py::dict d;
          d["name"] = a->hf_name;
          d["model_type"] = a->model_type;
          d["kind"] = arch_kind_name(a->kind);
          out.append(d);
        }
        return out;
      },
      "The architectures medrt runs: [{'name': 'LlamaForCausalLM', 'model_type': 'llama', "
      "'kind': 'decoder'}, ...], 'kind' being 'decoder' (medrt.LLM) or 'encoder' "
      "(medrt.Embedder).");
}

}  // namespace medrt::bindings
