// Errors that cross the API: every failure caused by user input is one of these, never an
// abort. The Python bindings map each class to medrt.errors.<same name>.
#pragma once
#include <stdexcept>
#include <string>

namespace medrt {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A checkpoint directory or file is malformed; the message names the file and the tensor.
class InvalidCheckpoint : public Error {
 public:
  using Error::Error;
};

// A request (prompt, sampling parameters) cannot be served as given.
class InvalidRequest : public Error {
 public:
  using Error::Error;
};

// Out of a bounded resource (KV blocks, queue slots) in a way that waiting cannot fix.
class CapacityError : public Error {
 public:
  using Error::Error;
};

// The request was aborted by its client.
class Cancelled : public Error {
 public:
  using Error::Error;
};

}  // namespace medrt
