// Rotary inverse frequencies against the float32 values transformers 5 computes
// (_compute_llama3_parameters / default RoPE), printed from torch as hex floats.
#include <cmath>
#include <vector>

#include "check.h"
#include "medrt/error.h"
#include "model/rope_freqs.h"

using namespace medrt;

namespace {

ModelConfig config(int head_dim, float theta, int original_max) {
  ModelConfig c;
  c.head_dim = head_dim;
  c.rope_theta = theta;
  c.rope_scaling = RopeScaling{"llama3", 8.0f, 1.0f, 4.0f, original_max};
  return c;
}

// Within one float32 ulp: torch's pow and libm's may round the last bit differently.
void check_close(const std::vector<float>& got, const std::vector<double>& want) {
  CHECK(got.size() == want.size());
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    float w = float(want[i]);
    CHECK_NEAR(got[i], w, std::nextafter(w, 2.0f * w) - w);
  }
}

}  // namespace

// head_dim 16, theta 1e4, original context 64: index 0 keeps its frequency (wavelength < 16),
// 1-2 are interpolated, 3-7 are divided by the factor, so all three bands are exercised.
TEST(llama3_frequencies_match_transformers_in_all_bands) {
  check_close(model::rope_inv_freq(config(16, 10000.0f, 64)),
              {0x1.0000000000000p+0, 0x1.f47fe80000000p-3, 0x1.ab5e600000000p-7,
               0x1.030dc60000000p-8, 0x1.47ae140000000p-10, 0x1.9e7c700000000p-12,
               0x1.0624de0000000p-13, 0x1.4b96c00000000p-15});
}

// Llama 3.1's own parameters (theta 5e5, context 8192) at head_dim 64.
TEST(llama3_frequencies_match_transformers_llama31) {
  check_close(model::rope_inv_freq(config(64, 500000.0f, 8192)),
              {0x1.0000000000000p+0, 0x1.53c38c0000000p-1, 0x1.c2ef780000000p-2,
               0x1.2b3dc60000000p-2, 0x1.8d27600000000p-3, 0x1.078d400000000p-3,
               0x1.5dc95a0000000p-4, 0x1.d03cce0000000p-5, 0x1.3411900000000p-5,
               0x1.98de920000000p-6, 0x1.0f53860000000p-6, 0x1.681ada0000000p-7,
               0x1.ddee9e0000000p-8, 0x1.3d28040000000p-8, 0x1.a4ee400000000p-9,
               0x1.67a23a0000000p-10, 0x1.132ba40000000p-11, 0x1.765ba40000000p-13,
               0x1.46831a0000000p-14, 0x1.b159020000000p-15, 0x1.1f91f00000000p-15,
               0x1.7da9e80000000p-16, 0x1.fa8b860000000p-17, 0x1.5024d60000000p-17,
               0x1.be21880000000p-18, 0x1.280d960000000p-18, 0x1.88ec200000000p-19,
               0x1.04be680000000p-19, 0x1.5a0f4e0000000p-20, 0x1.cb4a9a0000000p-21,
               0x1.30c94e0000000p-21, 0x1.9483600000000p-22});
}

TEST(default_frequencies_are_theta_powers) {
  ModelConfig c;
  c.head_dim = 8;
  c.rope_theta = 10000.0f;
  std::vector<float> inv = model::rope_inv_freq(c);
  CHECK(inv.size() == 4);
  for (size_t i = 0; i < inv.size(); ++i)
    CHECK_NEAR(inv[i], std::pow(10000.0, -double(2 * i) / 8.0), 1e-7 * inv[i]);
}

TEST(odd_head_dim_is_refused) {
  ModelConfig c;
  c.head_dim = 7;
  CHECK_THROWS(InvalidCheckpoint, model::rope_inv_freq(c), "head_dim");
}
