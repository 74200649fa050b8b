// A minimal test harness for the C++ unit tests: CHECK-style assertions that count failures
// and a main() that runs every TEST. Each test_*.cpp is one ctest executable.
#pragma once
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace medrt_test {
struct Case {
  const char* name;
  std::function<void()> fn;
};
inline std::vector<Case>& cases() {
  static std::vector<Case> c;
  return c;
}
inline int& failures() {
  static int f = 0;
  return f;
}
struct Register {
  Register(const char* n, std::function<void()> f) { cases().push_back({n, std::move(f)}); }
};
}  // namespace medrt_test

#define TEST(name)                                                     \
  static void name();                                                  \
  static medrt_test::Register reg_##name(#name, name);                 \
  static void name()

#define CHECK(cond)                                                                    \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);    \
      ++medrt_test::failures();                                                        \
    }                                                                                  \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                                 \
  do {                                                                                        \
    double va_ = (a), vb_ = (b);                                                              \
    if (!(std::fabs(va_ - vb_) <= (tol))) {                                                   \
      std::fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s=%g %s=%g tol=%g\n", __FILE__,         \
                   __LINE__, #a, va_, #b, vb_, double(tol));                                  \
      ++medrt_test::failures();                                                               \
    }                                                                                         \
  } while (0)

// Passes when `expr` throws ExcType whose message contains `needle`.
#define CHECK_THROWS(ExcType, expr, needle)                                                  \
  do {                                                                                       \
    bool thrown_ = false;                                                                    \
    try {                                                                                    \
      expr;                                                                                  \
    } catch (const ExcType& e_) {                                                            \
      thrown_ = std::string(e_.what()).find(needle) != std::string::npos;                    \
      if (!thrown_)                                                                          \
        std::fprintf(stderr, "%s:%d: message '%s' lacks '%s'\n", __FILE__, __LINE__,         \
                     e_.what(), std::string(needle).c_str());                                \
    }                                                                                        \
    if (!thrown_) {                                                                          \
      std::fprintf(stderr, "%s:%d: expected %s from %s\n", __FILE__, __LINE__, #ExcType,      \
                   #expr);                                                                   \
      ++medrt_test::failures();                                                              \
    }                                                                                        \
  } while (0)

int main() {
  for (auto& c : medrt_test::cases()) {
    int before = medrt_test::failures();
    c.fn();
    std::printf("%s %s\n", medrt_test::failures() == before ? "PASS" : "FAIL", c.name);
  }
  return medrt_test::failures() == 0 ? 0 : 1;
}
