// medrt::Error subclasses -> the Python classes of the same names in medrt.errors (MedrtError
// for the base), carrying the C++ message.
#include <exception>

#include "bindings.h"
#include "medrt/error.h"

namespace py = pybind11;

namespace medrt::bindings {

namespace {
// Owned references for the life of the process: the translator may run while the interpreter
// shuts down, after module objects have been cleared.
struct ErrorClasses {
  PyObject* base;
  PyObject* invalid_checkpoint;
  PyObject* invalid_request;
  PyObject* capacity;
  PyObject* cancelled;
};
ErrorClasses* classes = nullptr;

PyObject* owned_class(const py::module_& errors, const char* name) {
  return py::object(errors.attr(name)).release().ptr();
}
}  // namespace

void bind_errors(py::module_& m) {
  (void)m;
  py::module_ errors = py::module_::import("medrt.errors");
  classes = new ErrorClasses{
      owned_class(errors, "MedrtError"),
      owned_class(errors, "InvalidCheckpoint"),
      owned_class(errors, "InvalidRequest"),
      owned_class(errors, "CapacityError"),
      owned_class(errors, "Cancelled"),
  };
  py::register_exception_translator([](std::exception_ptr p) {
    if (!p) return;
    try {
      std::rethrow_exception(p);
    } catch (const InvalidCheckpoint& e) {
      PyErr_SetString(classes->invalid_checkpoint, e.what());
    } catch (const InvalidRequest& e) {
      PyErr_SetString(classes->invalid_request, e.what());
    } catch (const CapacityError& e) {
      PyErr_SetString(classes->capacity, e.what());
    } catch (const Cancelled& e) {
      PyErr_SetString(classes->cancelled, e.what());
    } catch (const Error& e) {
      PyErr_SetString(classes->base, e.what());
    }
  });
}

}  // namespace medrt::bindings
