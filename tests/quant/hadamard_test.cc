// Tests of the Hadamard constructions (quant/hadamard.h): GF(p^k) is a field, every base order is a +-1 matrix
// with A A^T = m I exactly, the fast transform equals the dense Kronecker matrix, and H H^T = I in fp64 for the
// hidden size and head_dim of every model config in ../shared/data/configs (plus qs-llama-tiny's 512).
#include "quant/hadamard.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "common/test_util.h"
#include "core/error.h"

namespace qs::quant {
namespace {

using ::testing::HasSubstr;

TEST(GaloisField, IsAField) {
  for (int q : {2, 3, 4, 8, 9, 11, 17, 25, 27, 49}) {
    const GaloisField gf(q);
    int squares = 0;
    for (int a = 0; a < q; ++a) {
      EXPECT_EQ(gf.add(a, 0), a);
      EXPECT_EQ(gf.mul(a, 1), a);
      EXPECT_EQ(gf.sub(a, a), 0);
      squares += gf.chi(a) == 1;
      if (a == 0) continue;
      int inverses = 0;
      for (int b = 1; b < q; ++b) inverses += gf.mul(a, b) == 1;
      EXPECT_EQ(inverses, 1) << "GF(" << q << "): element " << a;
      for (int b = 0; b < q; ++b)
        for (int c = 0; c < q; c += 3) {
          ASSERT_EQ(gf.mul(a, gf.add(b, c)), gf.add(gf.mul(a, b), gf.mul(a, c)));
          ASSERT_EQ(gf.mul(gf.mul(a, b), c), gf.mul(a, gf.mul(b, c)));
        }
    }
    EXPECT_EQ(squares, q % 2 ? (q - 1) / 2 : q - 1) << "GF(" << q << ")";
  }
  EXPECT_THAT([] {
    try {
      GaloisField gf(12);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  }(), HasSubstr("12 is not a prime power"));
}

TEST(HadamardBase, EveryOrderIsHadamard) {
  for (int m : {1, 2, 4, 8, 12, 20, 24, 28, 36, 40, 44, 52, 60, 108, 140}) {
    const std::vector<int8_t> a = hadamard_base(m);
    ASSERT_EQ(a.size(), size_t(m * m));
    for (int8_t v : a) ASSERT_TRUE(v == 1 || v == -1) << "order " << m;
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < m; ++j) {
        int dot = 0;
        for (int t = 0; t < m; ++t) dot += a[size_t(i * m + t)] * a[size_t(j * m + t)];
        ASSERT_EQ(dot, i == j ? m : 0) << "order " << m << " rows " << i << ", " << j;
      }
  }
  // Which construction each order of the paper comes from.
  EXPECT_EQ(paley1_matrix(27).size(), size_t(28 * 28));
  EXPECT_EQ(paley2_matrix(25).size(), size_t(52 * 52));
  EXPECT_EQ(paley2_matrix(17).size(), size_t(36 * 36));
}

TEST(HadamardBase, ChoosesSmallestBase) {
  EXPECT_EQ(hadamard_base_order(4096), 1);
  EXPECT_EQ(hadamard_base_order(5120), 20);  // 40 * 128 == 20 * 256
  EXPECT_EQ(hadamard_base_order(6656), 52);
  EXPECT_EQ(hadamard_base_order(7168), 28);
  EXPECT_EQ(hadamard_base_order(3584), 28);
  EXPECT_EQ(hadamard_base_order(1536), 12);
  EXPECT_EQ(hadamard_base_order(156), 0);  // Williamson orders: not constructed here
  EXPECT_EQ(hadamard_base_order(172), 0);
  EXPECT_EQ(hadamard_base_order(156 * 32), 312);  // ... but a multiple may have another route (Paley I, q = 311)
  EXPECT_EQ(hadamard_base_order(172 * 4), 344);   // Paley I, q = 343 = 7^3
}

std::string error_of_size(int64_t n) {
  try {
    Hadamard h(n);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Hadamard, RejectsUnsupportedSizes) {
  EXPECT_THAT(error_of_size(156), HasSubstr("no Hadamard matrix of order 156"));
  EXPECT_THAT(error_of_size(6), HasSubstr("no Hadamard matrix of order 6"));
  EXPECT_THAT(error_of_size(0), HasSubstr("no Hadamard matrix of order 0"));
  EXPECT_THAT(error_of_size(172), HasSubstr("no Hadamard matrix of order 172"));
}

// Fast transform vs the dense Kronecker matrix; fp64 both ways: error ~ log2(n) * 1e-16 per element.
TEST(Hadamard, FastApplyEqualsDense) {
  for (int64_t n : {1, 2, 12, 40, 96, 112, 208, 288, 480, 512, 864, 1120}) {
    const Hadamard h(n);
    const std::vector<double> d = h.dense();
    const std::vector<float> xf = test::random_normal(size_t(3 * n), uint64_t(n));
    for (bool tr : {false, true}) {
      std::vector<double> x(xf.begin(), xf.end());
      h.apply(x.data(), 3, tr);
      for (int64_t r = 0; r < 3; ++r)
        for (int64_t j = 0; j < n; ++j) {
          double ref = 0;
          for (int64_t i = 0; i < n; ++i) ref += double(xf[size_t(r * n + i)]) * (tr ? d[size_t(j * n + i)] : d[size_t(i * n + j)]);
          ASSERT_NEAR(x[size_t(r * n + j)], ref, 1e-12) << "n " << n << " transpose " << tr << " col " << j;
        }
      // Float path: same in double, then one fp32 rounding.
      std::vector<float> y = xf;
      h.apply(y.data(), 3, tr);
      for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], float(x[i]));
    }
    // apply_columns(a) == H^T a: compare on a [n, 3] matrix with rows of the transposed input.
    std::vector<float> a(static_cast<size_t>(n * 3));
    for (int64_t r = 0; r < 3; ++r)
      for (int64_t i = 0; i < n; ++i) a[size_t(i * 3 + r)] = xf[size_t(r * n + i)];
    h.apply_columns(a.data(), 3);
    std::vector<float> y = xf;
    h.apply(y.data(), 3);
    for (int64_t r = 0; r < 3; ++r)
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(a[size_t(i * 3 + r)], y[size_t(r * n + i)]);
  }
}

// H H^T = I row by row without forming H: h_i = e_i H, then h_i H^T is row i of H H^T.
void expect_orthogonal(int64_t n, int64_t row_stride) {
  const Hadamard h(n);
  std::vector<double> v(static_cast<size_t>(n));
  double worst = 0;
  for (int64_t i = 0; i < n; i += row_stride) {
    std::fill(v.begin(), v.end(), 0.0);
    v[size_t(i)] = 1.0;
    h.apply(v.data(), 1);
    for (double x : v) ASSERT_NEAR(std::fabs(x), 1.0 / std::sqrt(double(n)), 1e-15) << "n " << n;
    h.apply(v.data(), 1, true);
    for (int64_t j = 0; j < n; ++j) worst = std::max(worst, std::fabs(v[size_t(j)] - (i == j ? 1.0 : 0.0)));
  }
  EXPECT_LT(worst, 1e-12) << "n " << n;
}

TEST(Hadamard, OrthogonalForEveryConfigSize) {
  const std::string dir = test::data_path("configs");
  QS_REQUIRE_DATA("configs");
  std::set<int64_t> sizes = {512};  // qs-llama-tiny's hidden size
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() != ".json") continue;
    std::ifstream f(e.path());
    const nlohmann::json c = nlohmann::json::parse(f);
    const int64_t hidden = c.at("hidden_size").get<int64_t>();
    sizes.insert(hidden);
    sizes.insert(c.contains("head_dim") ? c["head_dim"].get<int64_t>()
                                        : hidden / c.at("num_attention_heads").get<int64_t>());
  }
  EXPECT_GE(sizes.size(), 7u);  // 128, 512, 3584, 4096, 5120, 6656, 7168, 8192
  for (int64_t n : sizes) {
    SCOPED_TRACE("n = " + std::to_string(n));
    // Every row up to 4096; above, every 7th row (the block structure repeats with period p = n / m, and 7
    // is coprime to it, so all residues of both the base index and the Walsh index are visited).
    expect_orthogonal(n, n <= 4096 ? 1 : 7);
  }
}

}  // namespace
}  // namespace qs::quant
