// Each concept binds itself in its own file; module.cpp calls them in dependency order.
#pragma once
#include <pybind11/pybind11.h>

#include "medrt/config.h"

namespace medrt::bindings {
void bind_errors(pybind11::module_& m);      // bind_errors.cpp: C++ exceptions -> medrt.errors
void bind_checkpoint(pybind11::module_& m);  // bind_checkpoint.cpp: safetensors / checkpoint
void bind_model(pybind11::module_& m);       // bind_model.cpp: Model.forward for parity tests
void bind_engine(pybind11::module_& m);      // bind_engine.cpp: Engine, SamplingParams, outputs
void bind_device(pybind11::module_& m);      // bind_device.cpp: cuda_status()
void bind_encoder(pybind11::module_& m);     // bind_encoder.cpp: the sentence encoder
void bind_arch(pybind11::module_& m);        // bind_arch.cpp: the architecture registry

// The config as a Python dict (the keys BINDINGS.md lists); defined in bind_model.cpp, shared by
// Model.config and Engine.model_config so both spell the fields alike.
pybind11::dict model_config_dict(const ModelConfig& config);
}  // namespace medrt::bindings
