// The Newton kernel body. Included by newton_avx2.cc and newton_generic.cc, each time inside its own
// namespace and under its own `#pragma GCC target`, after every system header (so that no inline
// library function is compiled for the ISA of this file). Only builtins and the functions below are
// used here. See newton_common.h for the layout and lljax/solve/newton.py for the algorithm it mirrors:
//
//   setup: the penalty 1/2 t^T A t - b^T t + c from the prior, l2 and delta (lljax.solve.objective.make_penalty)
//   start: theta0 (masked prior mean), m = X theta0 + offset, f, g, status_after(f, g, 0)
//   step:  H = X^T diag(c) X + A; mu = sqrt(eps) max diag H + eps; L D L^T = sym(H) + mu I (L unit lower);
//          p = -L^-T D^-1 L^-1 g (NaN if H is non-finite or not positive definite); Armijo backtracking
//          t = 2^-k with slack 16 eps (1 + |f|), at most max_backtracks halvings; accept, gradient,
//          status_after(f, g, iteration, stalled = !accepted)
//   end:   the precision (X^T diag(c) X + A at the final margin: full or diagonal), and the finish (lljax.solve.iteration.finish): a
//          non-finite precision fails the lane; a failed lane returns theta0 and its prior precision.
// Every lane (entity) follows exactly this sequence; lanes that stopped are frozen while the others of
// their group go on.

#define LLJAX_LANES _Pragma("omp simd") for (int l = 0; l < W; l++)
// Keeps vector v in a register at this point. Without it GCC folds the loads of a block's operands into
// each FMA that uses them (a second load of the same vector), and the loop becomes bound by loads.
#ifdef LLJAX_REGISTER_BARRIER
#define LLJAX_IN_REGISTER(v) asm("" : "+x"(v))
#else
#define LLJAX_IN_REGISTER(v) (void)0
#endif
#ifdef LLJAX_PROFILE
#define LLJAX_HOT __attribute__((noinline))
#else
#define LLJAX_HOT
#endif

static inline double vexp(double x) { return exp(x); }
static inline float vexp(float x) { return expf(x); }

// log1p(x) for x in [0, 1] (and NaN), vectorizable, within 2 ulp: fdlibm's reduction and polynomial
// (e_log.c / e_logf.c). 1 + x is reduced to 1 + f with 1 + f in [sqrt(2)/2, sqrt(2)]: f = x, or
// f = (x - 1) / 2 and log(2) added; then log(1 + f) = 2 atanh(s), s = f / (2 + f), by a minimax
// polynomial in s^2. The logistic loss needs it for exp(-|z|) in [0, 1]; replaces glibc's log of
// 1 + x, which cost 12% of the kernel (perf, headline case).
template <typename T>
struct Log1pCoefficients;
template <>
struct Log1pCoefficients<double> {
  static constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  static constexpr double c1 = 6.666666666666735130e-01, c2 = 3.999999999940941908e-01,
                          c3 = 2.857142874366239149e-01, c4 = 2.222219843214978396e-01,
                          c5 = 1.818357216161805012e-01, c6 = 1.531383769920937332e-01,
                          c7 = 1.479819860511658591e-01;
};
template <>
struct Log1pCoefficients<float> {
  static constexpr float ln2_hi = 6.9313812256e-01f, ln2_lo = 9.0580006145e-06f;
  static constexpr float c1 = 6.6666662693e-01f, c2 = 4.0000972152e-01f, c3 = 2.8498786688e-01f,
                         c4 = 2.4279078841e-01f;
};

template <typename T>
static inline T log1p_unit(T x) {
  typedef Log1pCoefficients<T> K;
  const bool high = x > T(0.41421356237309503);  // sqrt(2) - 1
  const T f = high ? (x - T(1)) * T(0.5) : x;
  const T k = high ? T(1) : T(0);
  const T s = f / (T(2) + f);
  const T z = s * s, w = z * z;
  T R;
  if constexpr (sizeof(T) == 8) {
    R = z * (K::c1 + w * (K::c3 + w * (K::c5 + w * K::c7))) + w * (K::c2 + w * (K::c4 + w * K::c6));
  } else {
    R = z * (K::c1 + w * K::c3) + w * (K::c2 + w * K::c4);
  }
  const T hfsq = T(0.5) * f * f;
  return k * K::ln2_hi - ((hfsq - (s * (hfsq + R) + k * K::ln2_lo)) - f);
}

template <typename T>
struct Eps;
template <>
struct Eps<double> {
  static constexpr double value = 2.220446049250313e-16;
};
template <>
struct Eps<float> {
  static constexpr float value = 1.1920928955078125e-07f;
};

template <typename T>
static inline bool finite(T x) {
  return __builtin_isfinite(x);
}

// Transposes W vectors of W lanes in registers, r[i][k] -> r[k][i], in log2(W) stages of lane shuffles
// (unpacks, then 128-bit permutes with AVX2): stage h pairs vectors i and i + h and swaps their h-blocks.
template <typename V, int W>
static inline void transpose_in_registers(V* r) {
  typedef decltype(V{} > V{}) M;
  const auto stage = [r](int h, M lo, M hi) {
    for (int i = 0; i < W; i++) {
      if (i & h) continue;
      const V a = r[i], b = r[i + h];
      r[i] = __builtin_shuffle(a, b, lo);
      r[i + h] = __builtin_shuffle(a, b, hi);
    }
  };
  if constexpr (W == 4) {
    stage(1, M{0, 4, 2, 6}, M{1, 5, 3, 7});
    stage(2, M{0, 1, 4, 5}, M{2, 3, 6, 7});
  } else {
    static_assert(W == 8, "4 or 8 lanes");
    stage(1, M{0, 8, 2, 10, 4, 12, 6, 14}, M{1, 9, 3, 11, 5, 13, 7, 15});
    stage(2, M{0, 1, 8, 9, 4, 5, 12, 13}, M{2, 3, 10, 11, 6, 7, 14, 15});
    stage(4, M{0, 1, 2, 3, 8, 9, 10, 11}, M{4, 5, 6, 7, 12, 13, 14, 15});
  }
}

// dst[k * W + l] = src[l * stride + k] for k < count and the W lanes l: W entities' arrays, read
// contiguously, written with the entity axis last; W x W blocks transposed in registers.
template <typename T, int W>
static inline void interleave(const T* __restrict src, int64_t stride, int64_t count, T* __restrict dst) {
  typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
  int64_t k = 0;
  for (; k + W <= count; k += W) {
    V r[W];
    for (int l = 0; l < W; l++) r[l] = *reinterpret_cast<const V*>(src + l * stride + k);
    transpose_in_registers<V, W>(r);
    for (int q = 0; q < W; q++) reinterpret_cast<V*>(dst)[k + q] = r[q];
  }
  for (; k < count; k++) {
    for (int l = 0; l < W; l++) dst[k * W + l] = src[l * stride + k];
  }
}

// dst[k * W + l] = src[ent[l] * stride + k] for k < count and the W lanes l, 0 in the lanes that are not
// valid: interleave() for a full group of consecutive entities, else lane by lane.
template <typename T, int W>
static inline void load_lanes(const T* __restrict src, int64_t stride, int64_t count, const int64_t* ent,
                              const bool* valid, T* __restrict dst) {
  if (valid[W - 1]) {
    interleave<T, W>(src + ent[0] * stride, stride, count, dst);
    return;
  }
  for (int64_t k = 0; k < count; k++) {
    for (int l = 0; l < W; l++) dst[k * W + l] = valid[l] ? src[ent[l] * stride + k] : T(0);
  }
}

// out[l][k] = vec(k)[l] for k < count and the lanes l whose out[l] is not null: the inverse of
// interleave(), W x W blocks transposed in registers; vec(k) returns lane vector k. Returns the lanes'
// sums of vec(k) * 0: 0 where every value is finite, NaN where one is not.
template <typename T, int W, typename F>
static inline auto deinterleave(F vec, int64_t count, T* const* out) {
  typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));  // unaligned stores
  V nonfinite = {};
  int64_t k = 0;
  for (; k + W <= count; k += W) {
    V r[W];
    for (int q = 0; q < W; q++) {
      r[q] = vec(k + q);
      nonfinite += r[q] * T(0);
    }
    transpose_in_registers<V, W>(r);
    for (int l = 0; l < W; l++) {
      if (out[l]) *reinterpret_cast<V*>(out[l] + k) = r[l];
    }
  }
  for (; k < count; k++) {
    const V v = vec(k);
    nonfinite += v * T(0);
    for (int l = 0; l < W; l++) {
      if (out[l]) out[l][k] = v[l];
    }
  }
  return nonfinite;
}

// Per-row loss values (weighted, padding rows 0) into v; e keeps the row's exponential for the derivatives:
// logistic exp(-|z|) with z = -y m, poisson exp(m).
template <typename T>
static void row_values(int loss, int64_t n, const T* __restrict y, const T* __restrict w, const T* __restrict m,
                       T* __restrict e, T* __restrict v) {
  if (loss == kLogistic) {
    // logaddexp(0, z) = max(z, 0) + log1p(exp(-|z|)), z = -y m. Two loops: the exponentials (calls
    // into libmvec), then the rest, whose iterations the CPU overlaps (no call between them).
#pragma omp simd
    for (int64_t i = 0; i < n; i++) e[i] = vexp(-__builtin_fabs(y[i] * m[i]));
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
      const T z = -y[i] * m[i];
      const T val = (z > T(0) ? z : T(0)) + log1p_unit(e[i]);
      v[i] = w[i] > T(0) ? w[i] * val : T(0);
    }
  } else if (loss == kPoisson) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
      const T em = vexp(m[i]);
      e[i] = em;
      v[i] = w[i] > T(0) ? w[i] * (em - y[i] * m[i]) : T(0);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
      const T d = m[i] - y[i];
      v[i] = w[i] > T(0) ? w[i] * (T(0.5) * (d * d)) : T(0);
    }
  }
}

// Weighted first and second derivatives r = w l'(m), c = w l''(m) (0 on padding rows), from the
// exponentials e of row_values. unit_labels: every row with w > 0 has |y| = 1, so that the logistic
// curvature sigmoid(m) sigmoid(-m) can reuse exp(-|z|) = exp(-|m|).
template <typename T>
static void row_derivatives(int loss, int64_t n, bool unit_labels, const T* __restrict y, const T* __restrict w,
                            const T* __restrict m, const T* __restrict e, T* __restrict r, T* __restrict c) {
  if (loss == kLogistic) {
    if (unit_labels) {
#pragma omp simd
      for (int64_t i = 0; i < n; i++) {
        const T z = -y[i] * m[i];
        const T inv = T(1) / (T(1) + e[i]);
        const T sz = z >= T(0) ? inv : e[i] * inv;  // sigmoid(z)
        r[i] = w[i] > T(0) ? w[i] * (-y[i] * sz) : T(0);
        c[i] = w[i] > T(0) ? w[i] * (inv * (e[i] * inv)) : T(0);
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < n; i++) {
        const T z = -y[i] * m[i];
        const T inv = T(1) / (T(1) + e[i]);
        const T sz = z >= T(0) ? inv : e[i] * inv;
        const T em = vexp(-__builtin_fabs(m[i]));
        const T invm = T(1) / (T(1) + em);
        r[i] = w[i] > T(0) ? w[i] * (-y[i] * sz) : T(0);
        c[i] = w[i] > T(0) ? w[i] * (invm * (em * invm)) : T(0);
      }
    }
  } else if (loss == kPoisson) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
      r[i] = w[i] > T(0) ? w[i] * (e[i] - y[i]) : T(0);
      c[i] = w[i] > T(0) ? w[i] * e[i] : T(0);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
      r[i] = w[i] > T(0) ? w[i] * (m[i] - y[i]) : T(0);
      c[i] = w[i] > T(0) ? w[i] : T(0);
    }
  }
}

// Prefetches the next group's inputs into L2 a cache line at a time, a few lines per row of the
// current group's Hessian (so that the loads overlap with its solve instead of stalling the next load).
struct Ahead {
  const char* base[8];
  int64_t lines[8];
  int regions = 0, region = 0;
  int64_t line = 0;

  void clear() { regions = region = 0, line = 0; }
  void add(const void* p, int64_t bytes) {
    if (regions < 8 && bytes > 0) {
      base[regions] = static_cast<const char*>(p);
      lines[regions++] = (bytes + 63) / 64;
    }
  }
  inline void next() {
    if (region < regions) {
      __builtin_prefetch(base[region] + 64 * line, 0, 2);
      if (++line == lines[region]) line = 0, region++;
    }
  }
};

// The feature count D, and Dp (D rounded up to the Hessian's 4-feature blocks): compile-time constants
// in the kernel's variants for the padded counts the packing makes most (LLJAX_FIXED_FEATURES; the
// compiler then unrolls the loops over features: 3-5% on the headline case, one core), runtime values
// in the variant for any D (kD = 0).
template <int kD>
struct Features {
  static constexpr int64_t D = kD, Dp = (kD + 3) / 4 * 4;
  void set_features(int64_t) {}
};
template <>
struct Features<0> {
  int64_t D = 0, Dp = 0;
  void set_features(int64_t d) { D = d, Dp = (d + 3) / 4 * 4; }
};

template <typename T, int W, int kD>
struct Group : Features<kD> {
  using Features<kD>::D;
  using Features<kD>::Dp;
  int64_t N;
  bool full_A;
  int loss;
  // (N, Dp, W): X and X scaled by the curvature; (N, W): rows; (Dp, Dp, W): X^T diag(c) X (lower);
  // (D, D, W) or (D, W): A; (D + 1, D, W): the factor (L below the diagonal, the pivots on it, the
  // forward solve in row D); (D, W): vectors.
  // ath, att: A theta at th and at the trial point tt (kept with them so that the penalty costs one
  // D x D product per trial and none per gradient). As (D, D, W), full A only: the lower triangle of
  // sym(A) = (A + A^T) / 2, which every Newton step adds to S (A is the same at every step).
  T *x, *xc, *y, *w, *m, *mt, *xp, *e, *et, *r, *c, *v, *S, *A, *As, *L, *panel, *b, *th, *tt, *g, *gn, *p, *ath,
      *att, *th0;
  T* present;  // (D, W): 1 for a feature on the lane's mask, else 0
  // Scratch of load_rows (Dp each, zero between rows): a row's sums by column, its columns, and whether a
  // column is among them.
  double* acc;
  int64_t* touched;
  unsigned char* seen;
  T cst[W];
  T a_nonfinite[W];  // per lane: 0 if every entry of A is finite, else NaN (a sum of a * 0)
  bool unit_labels;
  Ahead ahead;

  void carve(T* ws) {
    // 64-byte aligned pieces.
    auto take = [&ws](int64_t count) {
      T* out = ws;
      const int64_t per = 64 / sizeof(T);
      ws += (count + per - 1) / per * per;
      return out;
    };
    const int64_t NW = N * W;
    x = take(N * Dp * W);
    xc = take(N * Dp * W);
    y = take(NW);
    w = take(NW);
    m = take(NW);
    mt = take(NW);
    xp = take(NW);
    e = take(NW);
    et = take(NW);
    r = take(NW);
    c = take(NW);
    v = take(NW);
    S = take(Dp * Dp * W);
    A = take(D * D * W);
    As = take(D * D * W);
    L = take((D + 1) * D * W);  // the factor, and the forward solve in row D
    panel = take((D + 1) * 4 * W);  // a panel's columns before they are scaled (direction())
    b = take(D * W);
    th = take(D * W);
    tt = take(D * W);
    g = take(D * W);
    gn = take(D * W);
    p = take(D * W);
    ath = take(D * W);
    att = take(D * W);
    th0 = take(D * W);
    present = take(D * W);
    unsigned char* scratch = reinterpret_cast<unsigned char*>(take(5 * Dp + 16));
    acc = reinterpret_cast<double*>(scratch);
    touched = reinterpret_cast<int64_t*>(scratch + 8 * Dp);
    seen = scratch + 16 * Dp;
    for (int64_t j = 0; j < Dp; j++) acc[j] = 0, seen[j] = 0;
  }

  // The lanes' penalties from their entities' priors (lane l: entity ent[l], if valid[l]), as
  // lljax.solve.objective.make_penalty: theta0 = mu on the mask, 0 elsewhere; P0 = the prior precision on the
  // mask; A = delta P0 + (1 - delta) l2 I on the mask (without the l2 term on a kUnpenalized feature), the
  // identity elsewhere; b = delta P0 theta0;
  // c = delta/2 theta0 . P0 theta0. The start point is theta0. A missing lane gets an empty mask (A = I,
  // b = 0, c = 0, theta0 = 0). Without contraction: each product rounded as in the JAX path.
  __attribute__((optimize("fp-contract=off"))) void load_penalties(const Problem<T>& P, const int64_t* ent,
                                                                    const bool* valid) {
    typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
    const V zero = {}, one = zero + T(1);
    V delta = zero, l2 = zero;
    for (int l = 0; l < W; l++) {
      if (valid[l]) delta[l] = P.delta[ent[l]], l2[l] = P.l2[ent[l]];
      for (int64_t j = 0; j < D; j++) present[j * W + l] = valid[l] && P.mask[ent[l] * D + j] ? T(1) : T(0);
    }
    const V ridge = (one - delta) * l2;
    load_lanes<T, W>(P.prior_mean, D, D, ent, valid, th0);
    load_lanes<T, W>(P.prior_precision, full_A ? D * D : D, full_A ? D * D : D, ent, valid, A);  // P0, in place
    const V* on = reinterpret_cast<const V*>(present);
    V* Av = reinterpret_cast<V*>(A);
    V* t0 = reinterpret_cast<V*>(th0);
    V* bv = reinterpret_cast<V*>(b);
    for (int64_t j = 0; j < D; j++) {
      t0[j] = on[j] != zero ? t0[j] : zero;
      reinterpret_cast<V*>(th)[j] = t0[j];
    }
    V quad = zero;
    for (int64_t i = 0; i < D; i++) {
      V p0t0 = zero;  // (P0 theta0)_i
      V ridge_i = ridge;  // the L2 weight of feature i: none where the mask says kUnpenalized
      for (int l = 0; l < W; l++)
        if (valid[l] && P.mask[ent[l] * D + i] == kUnpenalized) ridge_i[l] = T(0);
      if (full_A) {
        for (int64_t j = 0; j < D; j++) {
          const auto pair = (on[i] != zero) & (on[j] != zero);
          const V p0 = pair ? Av[i * D + j] : zero;
          p0t0 += p0 * t0[j];
          Av[i * D + j] = pair ? delta * p0 + (i == j ? ridge_i : zero) : (i == j ? one : zero);
        }
      } else {
        const auto on_i = on[i] != zero;
        const V p0 = on_i ? Av[i] : zero;
        p0t0 = p0 * t0[i];
        Av[i] = on_i ? delta * p0 + ridge_i : one;
      }
      bv[i] = delta * p0t0;
      quad += t0[i] * p0t0;
    }
    const V c = T(0.5) * delta * quad;
    for (int l = 0; l < W; l++) cst[l] = c[l];
    // What every step's Hessian takes from A: whether A is finite, and (full A) the lower triangle of sym(A),
    // as a / 2 + a^T / 2 (which lies between a and a^T, so that it overflows only where they do).
    V nonfinite = zero;
    if (full_A) {
      V* as = reinterpret_cast<V*>(As);
      for (int64_t i = 0; i < D; i++) {
        for (int64_t j = 0; j < D; j++) nonfinite += Av[i * D + j] * zero;
        for (int64_t j = 0; j < i; j++) as[i * D + j] = T(0.5) * Av[i * D + j] + T(0.5) * Av[j * D + i];
      }
    } else {
      for (int64_t i = 0; i < D; i++) nonfinite += Av[i] * zero;
    }
    for (int l = 0; l < W; l++) a_nonfinite[l] = nonfinite[l];
  }

  // The results of the group's entities (lane l: entity ent[l], if valid[l]), as lljax.solve.iteration.finish:
  // the precision X^T diag(c) X + A at the final margin (from data_hessian()); a lane whose precision is
  // not finite becomes NON_FINITE, and a NON_FINITE lane returns its start theta0 and its prior precision
  // (in the output's form).
  void finish(const Problem<T>& P, const int64_t* ent, const bool* valid, const T* value, const T* grad_norm,
              const int32_t* iterations, int32_t* status) const {
    typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
    const V* Sv = reinterpret_cast<const V*>(S);
    const V* Av = reinterpret_cast<const V*>(A);
    const auto hessian = [this, Sv, Av](int64_t i, int64_t j) {  // (S + A)_ij, S from its lower triangle
      const V s = i >= j ? Sv[i * Dp + j] : Sv[j * Dp + i];
      return s + (full_A ? Av[i * D + j] : (i == j ? Av[i] : V{}));
    };
    T* out[W];
    V nonfinite = {};
    if (P.precision_mode == kPrecisionFull) {
      for (int64_t i = 0; i < D; i++) {
        for (int l = 0; l < W; l++) out[l] = valid[l] ? P.precision + (ent[l] * D + i) * D : nullptr;
        nonfinite += deinterleave<T, W>([&hessian, i](int64_t j) { return hessian(i, j); }, D, out);
      }
    } else if (P.precision_mode == kPrecisionDiagonal) {
      for (int l = 0; l < W; l++) out[l] = valid[l] ? P.precision + ent[l] * D : nullptr;
      nonfinite += deinterleave<T, W>([&hessian](int64_t i) { return hessian(i, i); }, D, out);
    }
    bool failed[W];
    decltype(V{} > V{}) failed_mask;
    for (int l = 0; l < W; l++) {
      failed[l] = status[l] == kNonFinite || nonfinite[l] != T(0);
      failed_mask[l] = failed[l] ? -1 : 0;
    }
    const V* th0v = reinterpret_cast<const V*>(th0);
    const V* thv = reinterpret_cast<const V*>(th);
    for (int l = 0; l < W; l++) out[l] = valid[l] ? P.theta + ent[l] * D : nullptr;
    deinterleave<T, W>([failed_mask, th0v, thv](int64_t i) { return failed_mask ? th0v[i] : thv[i]; }, D, out);
    for (int l = 0; l < W; l++) {
      if (!valid[l]) continue;
      const int64_t e = ent[l];
      P.value[e] = value[l];
      P.grad_norm[e] = grad_norm[l];
      P.iterations[e] = iterations[l];
      P.status[e] = failed[l] ? kNonFinite : status[l];
      if (failed[l]) restore_prior_precision(P, e);
    }
  }

  // Entity e's prior precision, in the output's form, as the precision of a failed solve.
  void restore_prior_precision(const Problem<T>& P, int64_t e) const {
    const T* prior = P.prior_precision + e * (full_A ? D * D : D);
    if (P.precision_mode == kPrecisionFull) {
      T* out = P.precision + e * D * D;
      for (int64_t i = 0; i < D; i++) {
        for (int64_t j = 0; j < D; j++) out[i * D + j] = full_A ? prior[i * D + j] : (i == j ? prior[i] : T(0));
      }
    } else if (P.precision_mode == kPrecisionDiagonal) {
      T* out = P.precision + e * D;
      for (int64_t i = 0; i < D; i++) out[i] = full_A ? prior[i * D + i] : prior[i];
    }
  }

  // out = A theta per lane, for a full or a diagonal A. Full A: rows in blocks of 4 with their
  // accumulators in registers (independent chains; a single running sum per row was latency-bound).
  LLJAX_HOT void penalty(const T* __restrict theta, T* __restrict out) const {
    typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
    const V* tv = reinterpret_cast<const V*>(theta);
    const V* av = reinterpret_cast<const V*>(A);
    V* ov = reinterpret_cast<V*>(out);
    if (!full_A) {
      for (int64_t i = 0; i < D; i++) ov[i] = av[i] * tv[i];
      return;
    }
    int64_t i = 0;
    for (; i + 4 <= D; i += 4) {
      V s0 = {}, s1 = {}, s2 = {}, s3 = {};
      const V* a = av + i * D;
      for (int64_t j = 0; j < D; j++) {
        const V t = tv[j];
        s0 += a[j] * t;
        s1 += a[D + j] * t;
        s2 += a[2 * D + j] * t;
        s3 += a[3 * D + j] * t;
      }
      ov[i] = s0;
      ov[i + 1] = s1;
      ov[i + 2] = s2;
      ov[i + 3] = s3;
    }
    for (; i < D; i++) {
      V s0 = {};
      for (int64_t j = 0; j < D; j++) s0 += av[i * D + j] * tv[j];
      ov[i] = s0;
    }
  }

  // Sum over rows of the per-row values v, per lane, plus the penalty 1/2 t^T A t - b^T t + c, with
  // atheta = A theta (from penalty()).
  LLJAX_HOT void objective(const T* __restrict theta, const T* __restrict atheta, T* __restrict out) const {
    typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
    const V* vv = reinterpret_cast<const V*>(v);
    V s0 = {}, s1 = {}, s2 = {}, s3 = {};  // 4 partial sums: independent add chains
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) s0 += vv[n], s1 += vv[n + 1], s2 += vv[n + 2], s3 += vv[n + 3];
    for (; n < N; n++) s0 += vv[n];
    const V sum = (s0 + s1) + (s2 + s3);
    T acc[W];
    LLJAX_LANES acc[l] = sum[l];
    T quad[W], lin[W];
    LLJAX_LANES quad[l] = lin[l] = T(0);
    for (int64_t i = 0; i < D; i++) {
      LLJAX_LANES quad[l] += theta[i * W + l] * atheta[i * W + l];
      LLJAX_LANES lin[l] += b[i * W + l] * theta[i * W + l];
    }
    LLJAX_LANES out[l] = acc[l] + (T(0.5) * quad[l] - lin[l] + cst[l]);
  }

  // gout = X^T r + A theta - b (X^T r in blocks of 8 or 4 features kept in registers; atheta = A theta).
  // Used where no Hessian follows at the same point (precision "none"); otherwise data_hessian() computes
  // X^T r in the same pass over X.
  LLJAX_HOT void gradient(const T* __restrict atheta, T* __restrict gout) const {
    typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
    const V* rv = reinterpret_cast<const V*>(r);
    V* go = reinterpret_cast<V*>(gout);
    int64_t i0 = 0;
    for (; i0 + 8 <= Dp; i0 += 8) {
      V a0 = {}, a1 = {}, a2 = {}, a3 = {}, a4 = {}, a5 = {}, a6 = {}, a7 = {};
      const V* xn = reinterpret_cast<const V*>(x) + i0;
      for (int64_t n = 0; n < N; n++, xn += Dp) {
        const V rn = rv[n];
        a0 += xn[0] * rn;
        a1 += xn[1] * rn;
        a2 += xn[2] * rn;
        a3 += xn[3] * rn;
        a4 += xn[4] * rn;
        a5 += xn[5] * rn;
        a6 += xn[6] * rn;
        a7 += xn[7] * rn;
      }
      const V acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
      for (int q = 0; q < 8 && i0 + q < D; q++) go[i0 + q] = acc[q];
    }
    for (; i0 < Dp; i0 += 4) {
      V a0 = {}, a1 = {}, a2 = {}, a3 = {};
      const V* xn = reinterpret_cast<const V*>(x) + i0;
      for (int64_t n = 0; n < N; n++, xn += Dp) {
        const V rn = rv[n];
        a0 += xn[0] * rn;
        a1 += xn[1] * rn;
        a2 += xn[2] * rn;
        a3 += xn[3] * rn;
      }
      const V acc[4] = {a0, a1, a2, a3};
      for (int q = 0; q < 4 && i0 + q < D; q++) go[i0 + q] = acc[q];
    }
    add_penalty_gradient(atheta, gout);
  }

  // gout += A theta - b: the penalty's part of the gradient (atheta = A theta), after X^T r.
  void add_penalty_gradient(const T* __restrict atheta, T* __restrict gout) const {
    for (int64_t i = 0; i < D; i++) {
      LLJAX_LANES gout[i * W + l] = (gout[i * W + l] + atheta[i * W + l]) - b[i * W + l];
    }
  }

  // out (N, W) = X v (+ base), 8 rows at a time: 8 independent accumulators in registers (4 were
  // bound by the latency of their FMA chains).
  LLJAX_HOT void matvec(const T* __restrict vec, const T* __restrict base, T* __restrict out) const {
    typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
    const V* vv = reinterpret_cast<const V*>(vec);
    const V* xv = reinterpret_cast<const V*>(x);
    const V* bv = reinterpret_cast<const V*>(base);
    V* ov = reinterpret_cast<V*>(out);
    constexpr int R = 8;
    int64_t n = 0;
    for (; n + R <= N; n += R) {
      V s[R] = {};
      const V* x0 = xv + n * Dp;
      for (int64_t j = 0; j < D; j++) {
        const V vj = vv[j];
        for (int q = 0; q < R; q++) s[q] += x0[q * Dp + j] * vj;
      }
      for (int q = 0; q < R; q++) ov[n + q] = base ? s[q] + bv[n + q] : s[q];
    }
    for (; n < N; n++) {
      V s0 = {};
      for (int64_t j = 0; j < D; j++) s0 += xv[n * Dp + j] * vv[j];
      ov[n] = base ? s0 + bv[n] : s0;
    }
  }

  // S (lower triangle) = X^T diag(c) X, for each block of 4 features i: the scaled columns c x_i once
  // (N x 4 lanes, in L1), then the 10 pairs of the diagonal block and the 4 x 2 blocks left of it. Each
  // block keeps its accumulators and operands in (16 AVX2) registers: written with GCC vector types (one
  // vector = the W lanes), which the compiler keeps in registers where the auto-vectorized loop spilled
  // and re-loaded (2x slower, measured). With xtr non-null, also xtr (D, W) = X^T r, in the second pass
  // of each diagonal block (its registers have room): the same sums, in the same order, as gradient().
  LLJAX_HOT void data_hessian(T* __restrict xtr) {
    typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
    const V* cv = reinterpret_cast<const V*>(c);
    V* uc = reinterpret_cast<V*>(xc);  // (N, 4) vectors: c x_i for the current block
    for (int64_t ib = 0; ib < Dp; ib += 4) {
      // The diagonal block in two passes, so that accumulators and operands fit the 16 registers (with
      // all 10 pairs in one pass, GCC spilled two accumulators to the stack): the scaled columns and the 7
      // pairs with a column ib or ib + 1, then the 3 pairs of columns ib + 2 and ib + 3.
      V d00 = {}, d10 = {}, d11 = {}, d20 = {}, d21 = {}, d30 = {}, d31 = {};
      const V* xi = reinterpret_cast<const V*>(x) + ib;
      for (int64_t n = 0; n < N; n++, xi += Dp) {
        ahead.next();
        const V cc = cv[n];
        const V b0 = xi[0], b1 = xi[1];
        const V u0 = b0 * cc, u1 = b1 * cc, u2 = xi[2] * cc, u3 = xi[3] * cc;
        uc[4 * n] = u0;
        uc[4 * n + 1] = u1;
        uc[4 * n + 2] = u2;
        uc[4 * n + 3] = u3;
        d00 += u0 * b0;
        d10 += u1 * b0;
        d11 += u1 * b1;
        d20 += u2 * b0;
        d21 += u2 * b1;
        d30 += u3 * b0;
        d31 += u3 * b1;
      }
      V d22 = {}, d32 = {}, d33 = {}, g0 = {}, g1 = {}, g2 = {}, g3 = {};
      const V* rv = reinterpret_cast<const V*>(r);
      xi = reinterpret_cast<const V*>(x) + ib;
      for (int64_t n = 0; n < N; n++, xi += Dp) {  // (GCC unswitches the loop on xtr)
        const V b2 = xi[2], b3 = xi[3], u2 = uc[4 * n + 2], u3 = uc[4 * n + 3];
        d22 += u2 * b2;
        d32 += u3 * b2;
        d33 += u3 * b3;
        if (xtr) {
          const V rn = rv[n];
          g0 += xi[0] * rn;
          g1 += xi[1] * rn;
          g2 += b2 * rn;
          g3 += b3 * rn;
        }
      }
      if (xtr) {
        const V acc[4] = {g0, g1, g2, g3};
        V* go = reinterpret_cast<V*>(xtr);
        for (int q = 0; q < 4 && ib + q < D; q++) go[ib + q] = acc[q];
      }
      V* out = reinterpret_cast<V*>(S + (ib * Dp + ib) * W);
      out[0] = d00;
      out[Dp] = d10;
      out[Dp + 1] = d11;
      out[2 * Dp] = d20;
      out[2 * Dp + 1] = d21;
      out[2 * Dp + 2] = d22;
      out[3 * Dp] = d30;
      out[3 * Dp + 1] = d31;
      out[3 * Dp + 2] = d32;
      out[3 * Dp + 3] = d33;
      for (int64_t jb = 0; jb < ib; jb += 2) {
        V a00 = {}, a01 = {}, a10 = {}, a11 = {}, a20 = {}, a21 = {}, a30 = {}, a31 = {};
        const V* xj = reinterpret_cast<const V*>(x) + jb;
        const V* un = uc;
        for (int64_t n = 0; n < N; n++, xj += Dp, un += 4) {
          const V b0 = xj[0], b1 = xj[1];
          V u0 = un[0], u1 = un[1], u2 = un[2], u3 = un[3];
          LLJAX_IN_REGISTER(u0);
          LLJAX_IN_REGISTER(u1);
          LLJAX_IN_REGISTER(u2);
          LLJAX_IN_REGISTER(u3);
          a00 += u0 * b0;
          a01 += u0 * b1;
          a10 += u1 * b0;
          a11 += u1 * b1;
          a20 += u2 * b0;
          a21 += u2 * b1;
          a30 += u3 * b0;
          a31 += u3 * b1;
        }
        V* o = reinterpret_cast<V*>(S + (ib * Dp + jb) * W);
        o[0] = a00;
        o[1] = a01;
        o[Dp] = a10;
        o[Dp + 1] = a11;
        o[2 * Dp] = a20;
        o[2 * Dp + 1] = a21;
        o[3 * Dp] = a30;
        o[3 * Dp + 1] = a31;
      }
    }
  }

  // Columns kb .. kb + 3 of direction()'s L D L^T factorization (the operations of its column loop, in the same
  // order): the 4 x 4 diagonal block in registers, pivot after pivot (the step's critical path: a division, a
  // product and an update per pivot, no store and load between them), then the rows below it, which are
  // independent of each other. ok: the lanes whose pivots are all > 0 so far (updated).
  template <typename M>
  inline void factor_panel(int64_t kb, M& ok) {
    typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
    V* Lv = reinterpret_cast<V*>(L);
    V* U = reinterpret_cast<V*>(panel);
    V* r0 = Lv + kb * D + kb;  // row kb from column kb; rows kb + 1 .. kb + 3 follow at strides of D
    V* r1 = r0 + D;
    V* r2 = r1 + D;
    V* r3 = r2 + D;
    const auto inverse = [&ok](V d) { return pivot_inverse(d, ok); };
    // u_ij: the entries before scaling (kept in U), l_ij = u_ij / d_j.
    const V u10 = r1[0], u20 = r2[0], u30 = r3[0];
    const V i0 = inverse(r0[0]);
    const V l10 = u10 * i0, l20 = u20 * i0, l30 = u30 * i0;
    V a11 = r1[1], a21 = r2[1], a31 = r3[1], a22 = r2[2], a32 = r3[2], a33 = r3[3];
    a11 -= l10 * u10;
    a21 -= l20 * u10;
    a22 -= l20 * u20;
    a31 -= l30 * u10;
    a32 -= l30 * u20;
    a33 -= l30 * u30;
    const V i1 = inverse(a11);
    const V l21 = a21 * i1, l31 = a31 * i1;
    a22 -= l21 * a21;
    a32 -= l31 * a21;
    a33 -= l31 * a31;
    const V i2 = inverse(a22);
    const V l32 = a32 * i2;
    a33 -= l32 * a32;
    const V i3 = inverse(a33);
    r1[0] = l10, r1[1] = a11;  // the block: l below the diagonal, the pivots on it (U is read below it only)
    r2[0] = l20, r2[1] = l21, r2[2] = a22;
    r3[0] = l30, r3[1] = l31, r3[2] = l32, r3[3] = a33;
    for (int64_t i = kb + 4; i <= D; i++) {  // the rows below (and row D, the forward solve)
      V* ri = Lv + i * D + kb;
      const V a0 = ri[0];
      const V m0 = a0 * i0;
      V a1 = ri[1], a2 = ri[2], a3 = ri[3];
      a1 -= m0 * u10;
      a2 -= m0 * u20;
      a3 -= m0 * u30;
      const V m1 = a1 * i1;
      a2 -= m1 * a21;
      a3 -= m1 * a31;
      const V m2 = a2 * i2;
      a3 -= m2 * a32;
      const V m3 = a3 * i3;
      ri[0] = m0, ri[1] = m1, ri[2] = m2, ri[3] = m3;
      V* ui = U + i * 4;
      ui[0] = a0, ui[1] = a1, ui[2] = a2, ui[3] = a3;
    }
  }

  // 1 / d for a pivot d of the factorization; a pivot that is not > 0 (or NaN) fails its lane (clears it in ok)
  // and is taken as 1.
  template <typename V, typename M>
  static inline V pivot_inverse(V d, M& ok) {
    const V zero = {}, one = zero + T(1);
    const M pos = d > zero;
    ok &= pos;
    return one / (pos ? d : one);
  }

  // p = -(sym(H) + mu I)^-1 g by L D L^T, H = S + A; p = NaN for lanes where H is non-finite or the
  // factorization fails. Right-looking (panel) factorization, which also performs the forward solve (g as an
  // extra row), then a row-oriented back solve; every vector op covers the W lanes.
  LLJAX_HOT void direction() {
    typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
    typedef decltype(V{} > V{}) M;
    const V zero = {};
    V* Lv = reinterpret_cast<V*>(L);
    const V* Sv = reinterpret_cast<const V*>(S);
    const V* Av = reinterpret_cast<const V*>(A);
    V* pv = reinterpret_cast<V*>(p);
    const V* gv = reinterpret_cast<const V*>(g);
    V hmax = zero - __builtin_inf();
    // L <- lower triangle of sym(H) = S + sym(A); max of diag H (NaN propagates). A lane whose H is not
    // finite fails: A was checked once (a_nonfinite), the diagonal is checked here (as sums of h * 0: 0 for
    // every finite h, NaN once any h is infinite or NaN), and a non-finite entry below it fails the
    // factorization below: it makes its entry of the factor non-finite (the operations that follow keep it so),
    // whose square then makes its row's pivot -inf or NaN, not > 0.
    const V* As_v = reinterpret_cast<const V*>(As);
    V nonfinite = *reinterpret_cast<const V*>(a_nonfinite);
    for (int64_t i = 0; i < D; i++) {
      const V h = Sv[i * Dp + i] + (full_A ? Av[i * D + i] : Av[i]);
      nonfinite += h * zero;
      if (full_A) {
        for (int64_t j = 0; j < i; j++) Lv[i * D + j] = Sv[i * Dp + j] + As_v[i * D + j];
      } else {
        for (int64_t j = 0; j < i; j++) Lv[i * D + j] = Sv[i * Dp + j];
      }
      Lv[i * D + i] = h;
      hmax = (h > hmax) | (h != h) ? h : hmax;
    }
    M ok = nonfinite == zero;
    const V mu = T(__builtin_sqrt(Eps<T>::value)) * hmax + Eps<T>::value;
    for (int64_t i = 0; i < D; i++) Lv[i * D + i] += mu;
    // g as row D of L: the factorization's updates of that row are the forward solve (the same operations in
    // the same order as a separate column-oriented solve), off its critical path.
    for (int64_t j = 0; j < D; j++) Lv[D * D + j] = gv[j];
    // Right-looking L D L^T (L unit lower, D the pivots: the Cholesky factor is L sqrt(D), without its square
    // roots, whose latency was most of a step's at a few rows) in panels of 4 columns: each panel is factored
    // column by column, then the trailing matrix gets the panel's 4 rank-1 updates in one pass (each element
    // loaded and stored once per panel instead of once per column). Column k of the panel scales its entries
    // a_ik to l_ik = a_ik / d_k and keeps a_ik in U (row i, slot k - kb) for the updates a_ij -= l_ik a_jk.
    // Row D ends as y = D^-1 L^-1 g.
    constexpr int64_t kPanel = 4;
    V* U = reinterpret_cast<V*>(panel);  // (D + 1, kPanel)
    for (int64_t kb = 0; kb < D; kb += kPanel) {
      const int64_t ke = kb + kPanel < D ? kb + kPanel : D;
      if (ke - kb == kPanel) {
        factor_panel(kb, ok);
      } else {  // a last panel narrower than 4 (the variant for any D): column by column
        for (int64_t k = kb; k < ke; k++) {
          const V rk = pivot_inverse(Lv[k * D + k], ok);
          for (int64_t i = k + 1; i <= D; i++) {  // column k scaled, and its update of the panel's other columns
            const V aik = Lv[i * D + k];
            U[i * kPanel + (k - kb)] = aik;
            const V lik = aik * rk;
            Lv[i * D + k] = lik;
            const int64_t je = i < ke - 1 ? i : ke - 1;
            for (int64_t j = k + 1; j <= je; j++) Lv[i * D + j] -= lik * U[j * kPanel + (k - kb)];
          }
        }
      }
      const int64_t width = ke - kb;
      for (int64_t i = ke; i <= D; i++) {  // trailing rows and columns (>= ke)
        const V* li = Lv + i * D + kb;
        const int64_t je = i < D ? i : D - 1;
        if (width == kPanel) {
          const V l0 = li[0], l1 = li[1], l2 = li[2], l3 = li[3];
          for (int64_t j = ke; j <= je; j++) {
            const V* uj = U + j * kPanel;
            V a = Lv[i * D + j];
            a -= l0 * uj[0];
            a -= l1 * uj[1];
            a -= l2 * uj[2];
            a -= l3 * uj[3];
            Lv[i * D + j] = a;
          }
        } else {
          for (int64_t j = ke; j <= je; j++) {
            const V* uj = U + j * kPanel;
            V a = Lv[i * D + j];
            for (int64_t q = 0; q < width; q++) a -= li[q] * uj[q];
            Lv[i * D + j] = a;
          }
        }
      }
    }
    // L^T q = y, y = row D; row-oriented (each q_i one chain of updates, in the order of a column-oriented
    // solve: q_{D-1} first), so that the rows' chains overlap.
    const V* z = Lv + D * D;
    for (int64_t i = D - 1; i >= 0; i--) {
      V a = z[i];
      for (int64_t k = D - 1; k > i; k--) a -= Lv[k * D + i] * pv[k];
      pv[i] = a;
    }
    const V nan = zero + __builtin_nan("");
    for (int64_t i = 0; i < D; i++) pv[i] = ok ? -pv[i] : nan;
  }
};

// Per lane: max |g_i| (NaN propagating, 0 for D = 0) and whether every g_i is finite; one pass over
// the W lanes at once.
template <typename T, int W>
struct GradSummary {
  T max_abs[W];
  bool finite[W];

  GradSummary(const T* __restrict g, int64_t D) {
    typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
    typedef decltype(V{} > V{}) M;
    const V* gv = reinterpret_cast<const V*>(g);
    const V zero = {};
    V mx = zero;
    M fin = zero == zero;
    for (int64_t i = 0; i < D; i++) {
      const V a = gv[i] < zero ? -gv[i] : gv[i];
      mx = (a > mx) | (a != a) ? a : mx;
      fin &= gv[i] - gv[i] == zero;
    }
    for (int l = 0; l < W; l++) {
      max_abs[l] = mx[l];
      finite[l] = fin[l] != 0;
    }
  }
};

template <typename T>
static inline int32_t status_after(T value, T grad_max_abs, bool grad_finite, int32_t iteration, T tol,
                                   int32_t max_iter, bool stalled) {
  const bool fin = finite(value) && grad_finite;
  const bool converged = grad_max_abs <= tol;
  int32_t status = iteration >= max_iter ? kMaxIterations : kRunning;
  if (stalled) status = kStalled;
  if (converged) status = kConverged;
  return fin ? status : kNonFinite;
}

// A lane's first rows that load_rows prefetches.
constexpr int64_t kPrefetchRows = 16;

// Loads lanes (lane l: entity ent[l], if valid[l]) from a RowSource (see newton_common.h) into x (N, Dp, W) and
// y, w, off (N, W), entity axis last, zeros in padding rows, padding columns and missing lanes: what the
// dense load reads from the (E, N, D) block that lljax.solve.kernels.pack_rows and block_rows would pack, bit
// for bit. acc, touched, seen: Dp each, zero (left zero). A feature outside its lane's subspace is recorded in
// S.missing (the first one), a row out of range in S.bad_row; either ends that lane's load.
template <typename T, int W, typename F>
static void load_rows(const RowSource<T>& S, const F* __restrict fids, int64_t N, int64_t Dp, const int64_t* ent,
                      const bool* valid, T* __restrict x, T* __restrict y, T* __restrict w, T* __restrict off,
                      double* __restrict acc, int64_t* __restrict touched, unsigned char* __restrict seen) {
  // The lanes' rows are anywhere in the dataset: their first kPrefetchRows rows are asked for at once (their ids,
  // values, labels, weights and offsets), so that their cache misses overlap instead of coming one by one below.
  for (int l = 0; l < W; l++) {
    if (!valid[l]) continue;
    const int64_t e = ent[l], b = S.lane_begin[e], count = std::min<int64_t>(S.lane_end[e] - b, kPrefetchRows);
    for (int64_t n = 0; n < count; n++) {
      const int64_t r = S.row_order[b + n];
      if (r < 0 || r >= S.n) break;  // (reported below)
      const int64_t k0 = S.indptr[r];
      if (S.repeats == nullptr || n == 0 || !S.repeats[b + n]) __builtin_prefetch(fids + k0, 0, 3);
      __builtin_prefetch(S.values + k0, 0, 3);
      __builtin_prefetch(S.label + r, 0, 3);
      __builtin_prefetch(S.weight + r, 0, 3);
      __builtin_prefetch(S.offset + r, 0, 3);
    }
  }
  for (int64_t i = 0; i < N * Dp * W; i++) x[i] = T(0);
  for (int64_t i = 0; i < N * W; i++) y[i] = T(0), w[i] = T(0), off[i] = T(0);
  const int64_t shift = S.leading >= 0 ? 1 : 0;
  const int64_t* keys = S.keys;
  for (int l = 0; l < W; l++) {
    if (!valid[l]) continue;
    const int64_t e = ent[l], b = S.lane_begin[e], count = S.lane_end[e] - b;
    const int64_t lo = S.start[e], size = S.sizes[e], base = e * S.stride;
    // Local column of `feature`: its rank in the row when the subspace has it there, else subspace_column's.
    const auto column = [&](int64_t feature, int64_t rank, int64_t& walk) -> int64_t {
      const int64_t key = base + feature;
      if (rank < size && keys[lo + rank] == key) {
        walk = rank + 1;
        return rank;
      }
      return subspace_column(keys, lo, size, key, walk);
    };
    bool last_in_order = false;  // the lane's row before this one took the usual layout's path
    int64_t last_length = -1;    // and its number of stored entries
    for (int64_t n = 0; n < count; n++) {
      const int64_t r = S.row_order[b + n];
      if (r < 0 || r >= S.n || S.indptr[r] < 0 || S.indptr[r] > S.indptr[r + 1] || S.indptr[r + 1] > S.nnz) {
        int64_t none = kNoBadRow;
        __atomic_compare_exchange_n(S.bad_row, &none, r, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
        break;
      }
      const T label = S.label[r];
      y[n * W + l] = !S.logistic_labels ? label : label == T(1) ? T(1) : T(-1);  // lljax.solve.losses.encode_labels
      w[n * W + l] = S.weight[r];
      off[n * W + l] = S.offset[r];
      T* xr = x + n * Dp * W + l;  // column j of the row at xr[j * W]
      const int64_t k0 = S.indptr[r], k1 = S.indptr[r + 1];
      // The usual layout: the row lists the first features of its subspace, in order (distinct: no sums). A row
      // with the same ids as the row before it (S.repeats) is in order if that one was, without reading its ids;
      // its length is checked all the same, so that a wrong mark can give wrong values, never a write past the row.
      bool in_order = last_in_order && S.repeats != nullptr && S.repeats[b + n] && k1 - k0 == last_length;
      if (!in_order) {
        in_order = k1 - k0 + shift <= size && (shift == 0 || keys[lo] == base + S.leading);
        for (int64_t k = k0; in_order && k < k1; k++) in_order = keys[lo + shift + (k - k0)] == base + int64_t(fids[k]);
      }
      last_in_order = in_order;
      last_length = k1 - k0;
      if (in_order) {
        if (shift) xr[0] = T(1);
        for (int64_t k = k0; k < k1; k++) xr[(shift + k - k0) * W] = S.values[k] + T(0);  // -0 as 0 + -0, as packed
        continue;
      }
      int64_t m = 0, walk = 0;
      const auto add = [&](int64_t feature, int64_t rank, double value) -> bool {
        const int64_t col = column(feature, rank, walk);
        if (col < 0) return false;
        if (!seen[col]) seen[col] = 1, touched[m++] = col;
        acc[col] += value;
        return true;
      };
      bool ok = shift == 0 || add(S.leading, 0, 1.0);
      int64_t bad = ok ? -1 : S.leading;
      for (int64_t k = k0; ok && k < k1; k++) {
        ok = add(int64_t(fids[k]), shift + k - k0, double(S.values[k]));
        if (!ok) bad = int64_t(fids[k]);
      }
      for (int64_t q = 0; q < m; q++) {
        const int64_t col = touched[q];
        xr[col * W] = T(acc[col]);
        acc[col] = 0, seen[col] = 0;
      }
      if (!ok) {
        int64_t none = -1;
        if (__atomic_compare_exchange_n(&S.missing[0], &none, r, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
          __atomic_store_n(&S.missing[1], bad, __ATOMIC_RELEASE);
        }
        break;
      }
    }
  }
}

template <typename T, int W, int kD>
static void solve_group(const Problem<T>& P, int64_t g0, Group<T, W, kD>& G) {
  typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
  typedef decltype(V{} > V{}) M;
  const int64_t N = P.N, D = G.D, Dp = G.Dp, NW = N * W;
  const T eps = Eps<T>::value;
  bool valid[W];
  int64_t ent[W];
  T tol[W], f[W], fv[W], slope[W], slack[W];
  int32_t max_iter[W], iter[W], status[W];
  bool running[W], searching[W], accepted[W];

  // Load the group, entity axis last; missing lanes (past E) get an empty problem that stops at once.
  for (int l = 0; l < W; l++) {
    ent[l] = g0 * W + l;
    valid[l] = ent[l] < P.E;
    tol[l] = valid[l] ? P.tol[ent[l]] : T(1);
    max_iter[l] = valid[l] ? P.max_iter[ent[l]] : 0;
  }
  if (P.rows != nullptr) {
    const RowSource<T>& S = *P.rows;
    if (S.fid32 != nullptr) {
      load_rows<T, W>(S, S.fid32, N, Dp, ent, valid, G.x, G.y, G.w, G.mt, G.acc, G.touched, G.seen);
    } else {
      load_rows<T, W>(S, S.fid64, N, Dp, ent, valid, G.x, G.y, G.w, G.mt, G.acc, G.touched, G.seen);
    }
  } else {
    for (int64_t n = 0; n < N; n++) {
      load_lanes<T, W>(P.X + n * D, N * D, D, ent, valid, G.x + n * Dp * W);
      for (int64_t j = D; j < Dp; j++) {
        LLJAX_LANES G.x[(n * Dp + j) * W + l] = T(0);
      }
    }
    load_lanes<T, W>(P.y, N, N, ent, valid, G.y);
    load_lanes<T, W>(P.w, N, N, ent, valid, G.w);
    load_lanes<T, W>(P.offset, N, N, ent, valid, G.mt);
  }
  G.load_penalties(P, ent, valid);
  int other_labels = 0;
#pragma omp simd reduction(| : other_labels)
  for (int64_t i = 0; i < NW; i++) other_labels |= (G.w[i] > T(0)) & (__builtin_fabs(G.y[i]) != T(1));
  G.unit_labels = other_labels == 0;

  // The gradient at the current margins into gout. Where a precision is returned, every gradient is
  // followed by a Hessian at the same point (the next step's, or the final precision), so both come from
  // one pass over X; S then stays current until the next accepted step.
  const bool fused = P.precision_mode != kPrecisionNone;
  const auto gradient_at_margins = [&G, &P, fused, NW](T* gout) {
    row_derivatives(P.loss, NW, G.unit_labels, G.y, G.w, G.m, G.e, G.r, G.c);
    if (fused) {
      G.data_hessian(gout);
      G.add_penalty_gradient(G.ath, gout);
    } else {
      G.gradient(G.ath, gout);
    }
  };

  // Start: margins, objective, gradient, status.
  G.matvec(G.th, G.mt, G.m);
  row_values(P.loss, NW, G.y, G.w, G.m, G.e, G.v);
  G.penalty(G.th, G.ath);
  G.objective(G.th, G.ath, f);
  gradient_at_margins(G.g);
  bool any = false;
  const GradSummary<T, W> g0s(G.g, D);
  for (int l = 0; l < W; l++) {
    iter[l] = 0;
    status[l] = status_after(f[l], g0s.max_abs[l], g0s.finite[l], 0, tol[l], max_iter[l], false);
    running[l] = valid[l] && status[l] == kRunning;
    any = any || running[l];
  }

  while (any) {
    if (!fused) G.data_hessian(nullptr);
    G.direction();
    G.matvec(G.p, nullptr, G.xp);
    LLJAX_LANES {
      slope[l] = T(0);
      slack[l] = T(kSlackUlps) * eps * (T(1) + __builtin_fabs(f[l]));
    }
    for (int64_t i = 0; i < D; i++) {
      LLJAX_LANES slope[l] += G.g[i * W + l] * G.p[i * W + l];
    }
    bool searching_any = false;
    for (int l = 0; l < W; l++) {
      searching[l] = running[l];
      accepted[l] = false;
      searching_any = searching_any || searching[l];
    }
    T t = T(1);
    for (int k = 0; searching_any; k++, t *= T(kStepShrink)) {
      for (int64_t i = 0; i < D; i++) {
        LLJAX_LANES G.tt[i * W + l] = G.th[i * W + l] + t * G.p[i * W + l];
      }
      for (int64_t n = 0; n < N; n++) {
        LLJAX_LANES G.mt[n * W + l] = G.m[n * W + l] + t * G.xp[n * W + l];
      }
      row_values(P.loss, NW, G.y, G.w, G.mt, G.et, G.v);
      G.penalty(G.tt, G.att);
      G.objective(G.tt, G.att, fv);
      searching_any = false;
      bool take_any = false;
      M take = {};
      for (int l = 0; l < W; l++) {
        if (!searching[l]) continue;
        const bool sufficient = fv[l] <= f[l] + T(kArmijoC1) * t * slope[l] + slack[l];
        const bool slope_finite = finite(slope[l]);
        if (k < P.max_backtracks && !sufficient && slope_finite) {
          searching_any = true;
          continue;
        }
        searching[l] = false;
        accepted[l] = (sufficient && slope[l] < T(0)) || !slope_finite;
        if (accepted[l]) {
          f[l] = fv[l];
          take[l] = -1;
          take_any = true;
        }
      }
      if (take_any) {  // move the lanes that accepted this trial to the trial point
        V* th = reinterpret_cast<V*>(G.th);
        const V* tt = reinterpret_cast<const V*>(G.tt);
        V* ath = reinterpret_cast<V*>(G.ath);
        const V* att = reinterpret_cast<const V*>(G.att);
        for (int64_t i = 0; i < D; i++) {
          th[i] = take ? tt[i] : th[i];
          ath[i] = take ? att[i] : ath[i];
        }
        V* m = reinterpret_cast<V*>(G.m);
        V* e = reinterpret_cast<V*>(G.e);
        const V* mt = reinterpret_cast<const V*>(G.mt);
        const V* et = reinterpret_cast<const V*>(G.et);
        for (int64_t n = 0; n < N; n++) {
          m[n] = take ? mt[n] : m[n];
          e[n] = take ? et[n] : e[n];
        }
      }
    }
    bool any_accepted = false;
    for (int l = 0; l < W; l++) any_accepted = any_accepted || accepted[l];
    if (any_accepted) gradient_at_margins(G.gn);  // lanes that did not move get the same r, c (and S) as before
    any = false;
    for (int l = 0; l < W; l++) {
      if (running[l] && accepted[l]) {
        for (int64_t i = 0; i < D; i++) G.g[i * W + l] = G.gn[i * W + l];
      }
    }
    const GradSummary<T, W> gs(G.g, D);
    for (int l = 0; l < W; l++) {
      if (!running[l]) continue;
      iter[l] += 1;
      status[l] = status_after(f[l], gs.max_abs[l], gs.finite[l], iter[l], tol[l], max_iter[l], !accepted[l]);
      running[l] = status[l] == kRunning;
      any = any || running[l];
    }
  }

  // Results; the precision is X^T diag(c) X + A at the final margin (S is current for every lane).
  const GradSummary<T, W> gs(G.g, D);
  G.finish(P, ent, valid, f, gs.max_abs, iter, status);
}

template <typename T, int kD>
static void solve_groups_for(const Problem<T>& P, int64_t g0, int64_t g1, T* workspace) {
  constexpr int W = kLanes<T>;
  Group<T, W, kD> G;
  G.N = P.N;
  G.set_features(P.D);
  G.full_A = P.full_prior;
  G.loss = P.loss;
  G.carve(workspace);
  const int64_t na = P.full_prior ? P.D * P.D : P.D;
  for (int64_t gi = g0; gi < g1; gi++) {
    G.ahead.clear();
    const int64_t e1 = (gi + 1) * W, e2 = e1 + W < P.E ? e1 + W : P.E;  // the next group's entities
    if (gi + 1 < g1 && e1 < e2) {
      const int64_t k = e2 - e1, s = sizeof(T);
      if (P.rows == nullptr) {
        G.ahead.add(P.X + e1 * P.N * P.D, k * P.N * P.D * s);
        G.ahead.add(P.y + e1 * P.N, k * P.N * s);
        G.ahead.add(P.w + e1 * P.N, k * P.N * s);
        G.ahead.add(P.offset + e1 * P.N, k * P.N * s);
      }
      G.ahead.add(P.prior_precision + e1 * na, k * na * s);
      G.ahead.add(P.prior_mean + e1 * P.D, k * P.D * s);
      G.ahead.add(P.mask + e1 * P.D, k * P.D * 4);
    }
    solve_group<T, W, kD>(P, gi, G);
  }
}

// The variant compiled for P.D if there is one (LLJAX_FIXED_FEATURES: ", 8, 12, ..." or empty), else the
// one for any D.
#ifndef LLJAX_FIXED_FEATURES
#define LLJAX_FIXED_FEATURES
#endif
template <int... kDs>
struct FeatureCounts {};

template <typename T, int... kDs>
static void solve_groups_impl(const Problem<T>& P, int64_t g0, int64_t g1, T* workspace, FeatureCounts<0, kDs...>) {
  const bool fixed = ((P.D == kDs && (solve_groups_for<T, kDs>(P, g0, g1, workspace), true)) || ...);
  if (!fixed) solve_groups_for<T, 0>(P, g0, g1, workspace);
}

void solve_groups(const Problem<double>& p, int64_t g0, int64_t g1, double* workspace) {
  solve_groups_impl<double>(p, g0, g1, workspace, FeatureCounts<0 LLJAX_FIXED_FEATURES>{});
}
void solve_groups(const Problem<float>& p, int64_t g0, int64_t g1, float* workspace) {
  solve_groups_impl<float>(p, g0, g1, workspace, FeatureCounts<0 LLJAX_FIXED_FEATURES>{});
}

#undef LLJAX_LANES
#undef LLJAX_IN_REGISTER
#undef LLJAX_HOT
#undef LLJAX_FIXED_FEATURES
