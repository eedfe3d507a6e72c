// Hadamard matrices: GF(p^k) arithmetic, Paley constructions I and II, Sylvester doubling, and the fast
// normalized transform (see hadamard.h).
#include "quant/hadamard.h"

#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"

namespace qs::quant {

bool prime_power(int q, int* p_out, int* k_out) {
  if (q < 2) return false;
  int p = 2;
  while (q % p != 0) ++p;  // smallest prime factor
  int k = 0, r = q;
  while (r % p == 0) {
    r /= p;
    ++k;
  }
  if (r != 1) return false;
  if (p_out) *p_out = p;
  if (k_out) *k_out = k;
  return true;
}

namespace {

// Polynomials over Z_p of degree < k encoded as base-p integers; multiplication modulo the monic polynomial
// x^k + sum_i f[i] x^i.
int poly_mul_mod(int a, int b, int p, int k, const std::vector<int>& f) {
  std::vector<int> ca(static_cast<size_t>(k)), cb(static_cast<size_t>(k)), prod(size_t(2 * k), 0);
  for (int i = 0; i < k; ++i, a /= p, b /= p) {
    ca[size_t(i)] = a % p;
    cb[size_t(i)] = b % p;
  }
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < k; ++j) prod[size_t(i + j)] = (prod[size_t(i + j)] + ca[size_t(i)] * cb[size_t(j)]) % p;
  for (int d = 2 * k - 1; d >= k; --d) {  // x^d = x^(d-k) * x^k = -x^(d-k) * sum f_i x^i
    const int c = prod[size_t(d)];
    if (c == 0) continue;
    prod[size_t(d)] = 0;
    for (int i = 0; i < k; ++i) prod[size_t(d - k + i)] = ((prod[size_t(d - k + i)] - c * f[size_t(i)]) % p + p) % p;
  }
  int r = 0;
  for (int i = k - 1; i >= 0; --i) r = r * p + prod[size_t(i)];
  return r;
}

}  // namespace

GaloisField::GaloisField(int q) : q_(q) {
  QS_CHECK(prime_power(q, &p_, &k_)) << "GF(" << q << "): " << q << " is not a prime power";
  const size_t qq = size_t(q) * size_t(q);
  add_.resize(qq);
  mul_.resize(qq);
  neg_.resize(size_t(q));
  chi_.assign(size_t(q), -1);
  for (int a = 0; a < q; ++a)
    for (int b = 0; b < q; ++b) {
      int r = 0, scale = 1;
      for (int x = a, y = b, i = 0; i < k_; ++i, x /= p_, y /= p_, scale *= p_) r += ((x % p_ + y % p_) % p_) * scale;
      add_[size_t(a * q + b)] = r;
      if (r == 0) neg_[size_t(b)] = a;
    }
  // Search the monic polynomials of degree k for one without zero divisors (then Z_p[x]/f is a field).
  std::vector<int> f(size_t(k_), 0);
  bool found = k_ == 1;  // Z_p itself
  for (int code = 0; code < q && !found; ++code) {
    for (int i = 0, c = code; i < k_; ++i, c /= p_) f[size_t(i)] = c % p_;
    bool field = true;
    for (int a = 1; a < q && field; ++a)
      for (int b = 1; b < q && field; ++b) field = poly_mul_mod(a, b, p_, k_, f) != 0;
    found = field;
  }
  QS_CHECK(found) << "GF(" << q << "): no irreducible polynomial found";
  for (int a = 0; a < q; ++a)
    for (int b = 0; b < q; ++b) mul_[size_t(a * q + b)] = poly_mul_mod(a, b, p_, k_, f);
  chi_[0] = 0;
  for (int a = 1; a < q; ++a) chi_[size_t(mul(a, a))] = 1;
}

std::vector<int8_t> paley1_matrix(int q) {
  QS_CHECK(prime_power(q) && q % 4 == 3) << "Paley I needs a prime power q = 3 mod 4, got " << q;
  const GaloisField gf(q);
  const int n = q + 1;
  std::vector<int8_t> h(size_t(n) * size_t(n));
  // H = I + S, S = [[0, 1^T], [-1, Q]], Q[i][j] = chi(a_i - a_j) (skew-symmetric since chi(-1) = -1).
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      int s;
      if (i == 0) s = j == 0 ? 0 : 1;
      else if (j == 0) s = -1;
      else s = gf.chi(gf.sub(i - 1, j - 1));
      h[size_t(i * n + j)] = int8_t((i == j ? 1 : 0) + s);
    }
  return h;
}

std::vector<int8_t> paley2_matrix(int q) {
  QS_CHECK(prime_power(q) && q % 4 == 1) << "Paley II needs a prime power q = 1 mod 4, got " << q;
  const GaloisField gf(q);
  const int c = q + 1, n = 2 * c;
  // Symmetric conference matrix C = [[0, 1^T], [1, Q]]; H = C (x) [[1, 1], [1, -1]] + I (x) [[1, -1], [-1, -1]].
  std::vector<int8_t> h(size_t(n) * size_t(n));
  for (int i = 0; i < c; ++i)
    for (int j = 0; j < c; ++j) {
      int cij;
      if (i == 0 || j == 0) cij = (i == j) ? 0 : 1;
      else cij = gf.chi(gf.sub(i - 1, j - 1));
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) {
          const int v = i == j ? ((a == 0 && b == 0) ? 1 : -1) : cij * ((a == 1 && b == 1) ? -1 : 1);
          h[size_t((2 * i + a) * n + 2 * j + b)] = int8_t(v);
        }
    }
  return h;
}

std::vector<int8_t> sylvester_double(const std::vector<int8_t>& a, int m) {
  QS_CHECK(a.size() == size_t(m) * size_t(m)) << "sylvester_double: matrix is not " << m << " x " << m;
  const int n = 2 * m;
  std::vector<int8_t> h(size_t(n) * size_t(n));
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      const int8_t v = a[size_t((i % m) * m + j % m)];
      h[size_t(i * n + j)] = (i >= m && j >= m) ? int8_t(-v) : v;
    }
  return h;
}

namespace {

// Which direct construction gives order m: 1 trivial (m = 1, 2), 2 Paley I, 3 Paley II, 0 none.
int direct_construction(int64_t m) {
  if (m == 1 || m == 2) return 1;
  if (m % 4 != 0 || m > (1 << 20)) return 0;
  if (prime_power(int(m - 1)) && (m - 1) % 4 == 3) return 2;
  if (prime_power(int(m / 2 - 1)) && (m / 2 - 1) % 4 == 1) return 3;
  return 0;
}

// Builds a base matrix of order m directly (no doubling); empty if neither Paley construction applies.
std::vector<int8_t> paley_any(int m) {
  switch (direct_construction(m)) {
    case 1: return m == 1 ? std::vector<int8_t>{1} : std::vector<int8_t>{1, 1, 1, -1};
    case 2: return paley1_matrix(m - 1);
    case 3: return paley2_matrix(m / 2 - 1);
    default: return {};
  }
}

}  // namespace

std::vector<int8_t> hadamard_base(int m) {
  QS_CHECK(m >= 1) << "no Hadamard matrix of order " << m;
  std::vector<int8_t> h = paley_any(m);
  if (!h.empty()) return h;
  if (m % 2 == 0) {
    h = hadamard_base(m / 2);
    return sylvester_double(h, m / 2);
  }
  QS_FAIL() << "no Hadamard matrix of order " << m << " (neither Paley I, Paley II nor a doubling applies)";
  return {};
}

int hadamard_base_order(int64_t n) {
  if (n < 1) return 0;
  int64_t p = 1;
  while (n % (2 * p) == 0) p *= 2;
  // Smallest m = n / 2^j that a Paley construction (or the trivial 1) gives directly.
  for (int64_t q = p; q >= 1; q /= 2)
    if (direct_construction(n / q) != 0) return int(n / q);
  return 0;
}

Hadamard::Hadamard(int64_t n) : n_(n) {
  m_ = hadamard_base_order(n);
  QS_CHECK(m_ > 0) << "no Hadamard matrix of order " << n << ": need n = m * 2^k with m = 1, 2 or a Paley order "
                   << "(q + 1 for a prime power q = 3 mod 4, 2 (q + 1) for q = 1 mod 4)";
  p_ = n / m_;
  a_ = paley_any(m_);
}

namespace {

void fwht(double* x, int64_t n) {  // unnormalized, in place, x S (S symmetric)
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const double a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
}

}  // namespace

void Hadamard::apply_row(double* v, double* tmp, bool transpose) const {
  const double norm = 1.0 / std::sqrt(double(n_));
  // v viewed as [m, p]: v (A (x) S) = (S on each row), then rows mixed by A (A^T for the transpose).
  for (int64_t i = 0; i < m_; ++i) fwht(v + i * p_, p_);
  if (m_ == 1) {
    for (int64_t j = 0; j < n_; ++j) v[j] *= norm;
    return;
  }
  for (int64_t ja = 0; ja < m_; ++ja) {
    double* out = tmp + ja * p_;
    for (int64_t j = 0; j < p_; ++j) out[j] = 0.0;
    for (int64_t ia = 0; ia < m_; ++ia) {
      const int c = transpose ? a_[size_t(ja * m_ + ia)] : a_[size_t(ia * m_ + ja)];
      const double* in = v + ia * p_;
      if (c > 0)
        for (int64_t j = 0; j < p_; ++j) out[j] += in[j];
      else
        for (int64_t j = 0; j < p_; ++j) out[j] -= in[j];
    }
  }
  for (int64_t j = 0; j < n_; ++j) v[j] = tmp[j] * norm;
}

void Hadamard::apply(double* x, int64_t rows, bool transpose) const {
  parallel_for(rows, [&](int64_t b, int64_t e) {
    std::vector<double> tmp(static_cast<size_t>(n_));
    for (int64_t r = b; r < e; ++r) apply_row(x + r * n_, tmp.data(), transpose);
  });
}

void Hadamard::apply(float* x, int64_t rows, bool transpose) const {
  parallel_for(rows, [&](int64_t b, int64_t e) {
    std::vector<double> v(static_cast<size_t>(n_)), tmp(static_cast<size_t>(n_));
    for (int64_t r = b; r < e; ++r) {
      for (int64_t j = 0; j < n_; ++j) v[size_t(j)] = x[r * n_ + j];
      apply_row(v.data(), tmp.data(), transpose);
      for (int64_t j = 0; j < n_; ++j) x[r * n_ + j] = float(v[size_t(j)]);
    }
  });
}

void Hadamard::apply_columns(float* a, int64_t cols, bool transpose) const {
  parallel_for(cols, [&](int64_t b, int64_t e) {
    std::vector<double> v(static_cast<size_t>(n_)), tmp(static_cast<size_t>(n_));
    for (int64_t c = b; c < e; ++c) {
      for (int64_t i = 0; i < n_; ++i) v[size_t(i)] = a[i * cols + c];
      apply_row(v.data(), tmp.data(), transpose);
      for (int64_t i = 0; i < n_; ++i) a[i * cols + c] = float(v[size_t(i)]);
    }
  });
}

std::vector<double> Hadamard::dense() const {
  const double norm = 1.0 / std::sqrt(double(n_));
  std::vector<double> h(static_cast<size_t>(n_ * n_));
  for (int64_t i = 0; i < n_; ++i)
    for (int64_t j = 0; j < n_; ++j) {
      const int64_t ia = i / p_, ib = i % p_, ja = j / p_, jb = j % p_;
      const int s = (__builtin_popcountll(uint64_t(ib & jb)) & 1) ? -1 : 1;
      h[size_t(i * n_ + j)] = a_[size_t(ia * m_ + ja)] * s * norm;
    }
  return h;
}

}  // namespace qs::quant
