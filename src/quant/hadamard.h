// Normalized Hadamard matrices for QoQ's rotations, constructed rather than pasted: H_n = (A_m (x) S_2^k) / sqrt(n)
// for n = m * 2^k, where S is the Sylvester (Walsh-Hadamard) matrix and A_m a Hadamard matrix of order m built
// by Paley construction I (order q + 1, prime power q = 3 mod 4: 12, 20, 28 = GF(27), 60, 108, 140, ...) or
// Paley construction II (order 2 (q + 1), prime power q = 1 mod 4: 36 = GF(17), 52 = GF(25), ...), over our own
// GF(p^k) arithmetic. The smallest workable m is chosen (40 = 20 * 2 comes out as A_20 (x) S). Orders needing
// other constructions (156, 172: Williamson) are not supported and throw.
//
// Convention: apply() maps each row vector x to x H (or x H^T); H is orthogonal (H H^T = I), and the
// power-of-two factor is applied as an O(n log n) fast Walsh-Hadamard transform, the A_m factor as a dense
// m x m step, all in double precision.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace qs::quant {

// The finite field GF(q), q = p^k a prime power, elements 0..q-1 (base-p digits = polynomial coefficients
// modulo a monic irreducible polynomial of degree k found by search). Tables; meant for small q.
class GaloisField {
 public:
  explicit GaloisField(int q);  // throws if q is not a prime power
  int size() const { return q_; }
  int characteristic() const { return p_; }
  int add(int a, int b) const { return add_[size_t(a * q_ + b)]; }
  int sub(int a, int b) const { return add(a, neg_[size_t(b)]); }
  int mul(int a, int b) const { return mul_[size_t(a * q_ + b)]; }
  // Quadratic character: 0 for 0, +1 for a nonzero square, -1 otherwise.
  int chi(int a) const { return chi_[size_t(a)]; }

 private:
  int q_, p_, k_;
  std::vector<int> add_, mul_, neg_, chi_;
};

// True (and sets p, k) when q = p^k with p prime and k >= 1.
bool prime_power(int q, int* p = nullptr, int* k = nullptr);

// Unnormalized +-1 Hadamard matrices (row-major m x m).
std::vector<int8_t> paley1_matrix(int q);    // order q + 1, q = 3 mod 4
std::vector<int8_t> paley2_matrix(int q);    // order 2 (q + 1), q = 1 mod 4
std::vector<int8_t> sylvester_double(const std::vector<int8_t>& a, int m);  // [[A, A], [A, -A]], order 2m
// A Hadamard matrix of order m (1, 2, or m = 0 mod 4 when Paley I or II applies, or twice such an order);
// throws otherwise.
std::vector<int8_t> hadamard_base(int m);
// The base order this module uses for size n (n = m * 2^k, smallest workable m), or 0 if none.
int hadamard_base_order(int64_t n);

class Hadamard {
 public:
  explicit Hadamard(int64_t n);  // throws "no Hadamard matrix of order n" for unsupported sizes
  int64_t size() const { return n_; }
  int base_order() const { return m_; }

  // Each of `rows` contiguous row vectors x (n values) becomes x H, or x H^T when transpose is set.
  void apply(double* x, int64_t rows, bool transpose = false) const;
  void apply(float* x, int64_t rows, bool transpose = false) const;  // computed in double
  // Each column c of the row-major [n, cols] matrix a becomes (c^T H)^T = H^T c (or H c with transpose):
  // folds a rotation of a linear's output side into its [out, in] weight.
  void apply_columns(float* a, int64_t cols, bool transpose = false) const;
  // The normalized n x n matrix, row-major (for tests and small sizes).
  std::vector<double> dense() const;

 private:
  void apply_row(double* v, double* tmp, bool transpose) const;  // one row in place; tmp: n scratch values
  int64_t n_ = 0, p_ = 0;  // n = m * p, p a power of two
  int m_ = 1;
  std::vector<int8_t> a_;  // m x m base
};

}  // namespace qs::quant
