// The Newton kernel body. Included by newton_avx2.cc and newton_generic.cc, each time inside its own
// namespace and under its own `#pragma GCC target`, after every system header (so that no inline
// library function is compiled for the ISA of this file). Only builtins and the functions below are
// used here. See newton_common.h for the layout and lljax/_solve.py for the algorithm it mirrors:
//
//   start: theta0 (masked prior mean), m = X theta0 + offset, f, g, status_after(f, g, 0)
//   step:  H = X^T diag(c) X + A; mu = sqrt(eps) max diag H + eps; L = chol(sym(H) + mu I);
//          p = -L^-T L^-1 g (NaN if H is non-finite or not positive definite); Armijo backtracking
//          t = 2^-k with slack 16 eps (1 + |f|), at most max_backtracks halvings; accept, gradient,
//          status_after(f, g, iteration, stalled = !accepted)
//   end:   the precision (X^T diag(c) X + A at the final margin: full or diagonal).
// Every lane (entity) follows exactly this sequence; lanes that stopped are frozen while the others of
// their group go on.

#define LLJAX_LANES _Pragma("omp simd") for (int l = 0; l < W; l++)
#ifdef LLJAX_PROFILE
#define LLJAX_HOT __attribute__((noinline))
#else
#define LLJAX_HOT
#endif

static inline double vexp(double x) { return exp(x); }
static inline float vexp(float x) { return expf(x); }
static inline double vlog(double x) { return log(x); }
static inline float vlog(float x) { return logf(x); }

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

// Per-row loss values (weighted, padding rows 0) into v; e keeps the row's exponential for the derivatives:
// logistic exp(-|z|) with z = -y m, poisson exp(m).
template <typename T>
static void row_values(int loss, int64_t n, const T* __restrict y, const T* __restrict w, const T* __restrict m,
                       T* __restrict e, T* __restrict v) {
  if (loss == kLogistic) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
      // logaddexp(0, z) = max(z, 0) + log1p(exp(-|z|)); log1p(u - 1) = log(u) (u - 1 exact) / (u - 1).
      const T z = -y[i] * m[i];
      const T ez = vexp(-__builtin_fabs(z));
      const T u = T(1) + ez;
      const T d = u - T(1);
      const T lp = d == T(0) ? ez : vlog(u) * (ez / d);
      const T val = (z > T(0) ? z : T(0)) + lp;
      e[i] = ez;
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

template <typename T, int W>
struct Group {
  int64_t N, D, Dp;
  bool full_A;
  int loss;
  // (N, Dp, W): X and X scaled by the curvature; (N, W): rows; (Dp, Dp, W): X^T diag(c) X (lower);
  // (D, D, W) or (D, W): A; (D, D, W): Cholesky factor; (D, W): vectors.
  T *x, *xc, *y, *w, *m, *mt, *xp, *e, *et, *r, *c, *v, *S, *A, *L, *b, *th, *tt, *g, *gn, *p, *Ap;
  T cst[W];
  bool unit_labels;

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
    L = take(D * D * W);
    b = take(D * W);
    th = take(D * W);
    tt = take(D * W);
    g = take(D * W);
    gn = take(D * W);
    p = take(D * W);
    Ap = take(D * W);
  }

  // s = (A theta)_i per lane, for a full or a diagonal A.
  inline void penalty_row(const T* __restrict theta, int64_t i, T* __restrict s) const {
    if (full_A) {
      LLJAX_LANES s[l] = T(0);
      for (int64_t j = 0; j < D; j++) {
        LLJAX_LANES s[l] += A[(i * D + j) * W + l] * theta[j * W + l];
      }
    } else {
      LLJAX_LANES s[l] = A[i * W + l] * theta[i * W + l];
    }
  }

  // Sum over rows of the per-row values v, per lane, plus the penalty 1/2 t^T A t - b^T t + c.
  LLJAX_HOT void objective(const T* __restrict theta, T* __restrict out) const {
    T acc[W];
    LLJAX_LANES acc[l] = T(0);
    for (int64_t n = 0; n < N; n++) {
      LLJAX_LANES acc[l] += v[n * W + l];
    }
    T quad[W], lin[W];
    LLJAX_LANES quad[l] = lin[l] = T(0);
    for (int64_t i = 0; i < D; i++) {
      T s[W];
      penalty_row(theta, i, s);
      LLJAX_LANES quad[l] += theta[i * W + l] * s[l];
      LLJAX_LANES lin[l] += b[i * W + l] * theta[i * W + l];
    }
    LLJAX_LANES out[l] = acc[l] + (T(0.5) * quad[l] - lin[l] + cst[l]);
  }

  // gout = X^T r + A theta - b (X^T r in blocks of 8 or 4 features kept in registers).
  LLJAX_HOT void gradient(const T* __restrict theta, T* __restrict gout) const {
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
    for (int64_t i = 0; i < D; i++) {
      T s[W];
      penalty_row(theta, i, s);
      LLJAX_LANES gout[i * W + l] = (gout[i * W + l] + s[l]) - b[i * W + l];
    }
  }

  // out (N, W) = X v (+ base).
  LLJAX_HOT void matvec(const T* __restrict vec, const T* __restrict base, T* __restrict out) const {
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) {
      T s0[W], s1[W], s2[W], s3[W];
      LLJAX_LANES s0[l] = s1[l] = s2[l] = s3[l] = T(0);
      const T* x0 = x + n * Dp * W;
      for (int64_t j = 0; j < D; j++) {
        LLJAX_LANES {
          const T vj = vec[j * W + l];
          s0[l] += x0[j * W + l] * vj;
          s1[l] += x0[(Dp + j) * W + l] * vj;
          s2[l] += x0[(2 * Dp + j) * W + l] * vj;
          s3[l] += x0[(3 * Dp + j) * W + l] * vj;
        }
      }
      if (base) {
        LLJAX_LANES {
          s0[l] += base[n * W + l];
          s1[l] += base[(n + 1) * W + l];
          s2[l] += base[(n + 2) * W + l];
          s3[l] += base[(n + 3) * W + l];
        }
      }
      LLJAX_LANES {
        out[n * W + l] = s0[l];
        out[(n + 1) * W + l] = s1[l];
        out[(n + 2) * W + l] = s2[l];
        out[(n + 3) * W + l] = s3[l];
      }
    }
    for (; n < N; n++) {
      T s[W];
      LLJAX_LANES s[l] = T(0);
      for (int64_t j = 0; j < D; j++) {
        LLJAX_LANES s[l] += x[(n * Dp + j) * W + l] * vec[j * W + l];
      }
      if (base) {
        LLJAX_LANES s[l] += base[n * W + l];
      }
      LLJAX_LANES out[n * W + l] = s[l];
    }
  }

  // S (lower triangle) = X^T diag(c) X, for each block of 4 features i: the scaled columns c x_i once
  // (N x 4 lanes, in L1), then the 10 pairs of the diagonal block and the 4 x 2 blocks left of it. Each
  // block keeps its accumulators and operands in (16 AVX2) registers: written with GCC vector types (one
  // vector = the W lanes), which the compiler keeps in registers where the auto-vectorized loop spilled
  // and re-loaded (2x slower, measured).
  LLJAX_HOT void data_hessian() {
    typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
    const V* cv = reinterpret_cast<const V*>(c);
    V* uc = reinterpret_cast<V*>(xc);  // (N, 4) vectors: c x_i for the current block
    for (int64_t ib = 0; ib < Dp; ib += 4) {
      V d00 = {}, d10 = {}, d11 = {}, d20 = {}, d21 = {}, d22 = {}, d30 = {}, d31 = {}, d32 = {}, d33 = {};
      const V* xi = reinterpret_cast<const V*>(x) + ib;
      for (int64_t n = 0; n < N; n++, xi += Dp) {
        const V cc = cv[n];
        const V b0 = xi[0], b1 = xi[1], b2 = xi[2], b3 = xi[3];
        const V u0 = b0 * cc, u1 = b1 * cc, u2 = b2 * cc, u3 = b3 * cc;
        uc[4 * n] = u0;
        uc[4 * n + 1] = u1;
        uc[4 * n + 2] = u2;
        uc[4 * n + 3] = u3;
        d00 += u0 * b0;
        d10 += u1 * b0;
        d11 += u1 * b1;
        d20 += u2 * b0;
        d21 += u2 * b1;
        d22 += u2 * b2;
        d30 += u3 * b0;
        d31 += u3 * b1;
        d32 += u3 * b2;
        d33 += u3 * b3;
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
          const V u0 = un[0], u1 = un[1], u2 = un[2], u3 = un[3];
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

  // p = -(sym(H) + mu I)^-1 g by Cholesky, H = S + A; p = NaN for lanes where H is non-finite or the
  // factorization fails. Right-looking factorization and column-oriented solves: the inner loops are
  // independent vector updates (no dependency chains).
  LLJAX_HOT void direction() {
    typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
    typedef decltype(V{} > V{}) M;
    const V zero = {}, one = zero + T(1);
    V* Lv = reinterpret_cast<V*>(L);
    const V* Sv = reinterpret_cast<const V*>(S);
    const V* Av = reinterpret_cast<const V*>(A);
    V* pv = reinterpret_cast<V*>(p);
    V* inv = reinterpret_cast<V*>(Ap);  // (D,) inverse diagonal of the factor
    const V* gv = reinterpret_cast<const V*>(g);
    M ok = zero == zero;
    V hmax = zero - __builtin_inf();
    // L <- lower triangle of sym(H); finiteness over the full H = S + A; max of diag H (NaN propagates).
    for (int64_t i = 0; i < D; i++) {
      for (int64_t j = 0; j < i; j++) {
        const V s = Sv[i * Dp + j];
        if (full_A) {
          const V aij = Av[i * D + j], aji = Av[j * D + i];
          const V hij = s + aij, hji = s + aji;
          ok &= (hij - hij == zero) & (hji - hji == zero);
          Lv[i * D + j] = s + T(0.5) * (aij + aji);
        } else {
          ok &= s - s == zero;
          Lv[i * D + j] = s;
        }
      }
      const V h = Sv[i * Dp + i] + (full_A ? Av[i * D + i] : Av[i]);
      ok &= h - h == zero;
      Lv[i * D + i] = h;
      hmax = (h > hmax) | (h != h) ? h : hmax;
    }
    const V mu = T(__builtin_sqrt(Eps<T>::value)) * hmax + Eps<T>::value;
    for (int64_t i = 0; i < D; i++) Lv[i * D + i] += mu;
    for (int64_t k = 0; k < D; k++) {
      const V d = Lv[k * D + k];  // a pivot that is not > 0 (or NaN) fails the lane
      const M pos = d > zero;
      ok &= pos;
      const V dd = pos ? d : one;
      V sq;
      for (int l = 0; l < W; l++) sq[l] = __builtin_sqrt(dd[l]);
      Lv[k * D + k] = sq;
      const V ik = one / sq;
      inv[k] = ik;
      for (int64_t i = k + 1; i < D; i++) Lv[i * D + k] *= ik;
      for (int64_t i = k + 1; i < D; i++) {
        const V lik = Lv[i * D + k];
        for (int64_t j = k + 1; j <= i; j++) {
          Lv[i * D + j] -= lik * Lv[j * D + k];
        }
      }
    }
    for (int64_t i = 0; i < D; i++) pv[i] = gv[i];
    for (int64_t k = 0; k < D; k++) {  // L z = g
      const V zk = pv[k] * inv[k];
      pv[k] = zk;
      for (int64_t i = k + 1; i < D; i++) pv[i] -= Lv[i * D + k] * zk;
    }
    for (int64_t i = D - 1; i >= 0; i--) {  // L^T q = z
      const V qi = pv[i] * inv[i];
      pv[i] = qi;
      for (int64_t k = 0; k < i; k++) pv[k] -= Lv[i * D + k] * qi;
    }
    const V nan = zero + __builtin_nan("");
    for (int64_t i = 0; i < D; i++) pv[i] = ok ? -pv[i] : nan;
  }
};

template <typename T>
static inline T grad_max(const T* g, int64_t D, int l, int W) {  // max |g|, NaN propagating, initial 0
  T mx = T(0);
  for (int64_t i = 0; i < D; i++) {
    const T a = __builtin_fabs(g[i * W + l]);
    mx = (a > mx || a != a) ? a : mx;
  }
  return mx;
}

template <typename T>
static inline int32_t status_after(T value, const T* g, int64_t D, int l, int W, int32_t iteration, T tol,
                                   int32_t max_iter, bool stalled) {
  bool fin = finite(value);
  for (int64_t i = 0; i < D; i++) fin = fin && finite(g[i * W + l]);
  const bool converged = grad_max(g, D, l, W) <= tol;
  int32_t status = iteration >= max_iter ? kMaxIterations : kRunning;
  if (stalled) status = kStalled;
  if (converged) status = kConverged;
  return fin ? status : kNonFinite;
}

template <typename T, int W>
static void solve_group(const Problem<T>& P, int64_t g0, Group<T, W>& G) {
  typedef T V __attribute__((vector_size(W * sizeof(T)), aligned(sizeof(T))));
  typedef decltype(V{} > V{}) M;
  const int64_t N = P.N, D = P.D, Dp = G.Dp, NW = N * W;
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
  }
  for (int l = 0; l < W; l++) {
    const int64_t e = ent[l];
    if (valid[l]) {
      const T* X = P.X + e * N * D;
      for (int64_t n = 0; n < N; n++) {
        for (int64_t j = 0; j < D; j++) G.x[(n * Dp + j) * W + l] = X[n * D + j];
        for (int64_t j = D; j < Dp; j++) G.x[(n * Dp + j) * W + l] = T(0);
        G.y[n * W + l] = P.y[e * N + n];
        G.w[n * W + l] = P.w[e * N + n];
        G.mt[n * W + l] = P.offset[e * N + n];
      }
      if (P.full_A) {
        for (int64_t k = 0; k < D * D; k++) G.A[k * W + l] = P.A[e * D * D + k];
      } else {
        for (int64_t k = 0; k < D; k++) G.A[k * W + l] = P.A[e * D + k];
      }
      for (int64_t k = 0; k < D; k++) {
        G.b[k * W + l] = P.b[e * D + k];
        G.th[k * W + l] = P.theta0[e * D + k];
      }
      G.cst[l] = P.c[e];
      tol[l] = P.tol[e];
      max_iter[l] = P.max_iter[e];
    } else {
      for (int64_t n = 0; n < N; n++) {
        for (int64_t j = 0; j < Dp; j++) G.x[(n * Dp + j) * W + l] = T(0);
        G.y[n * W + l] = G.w[n * W + l] = G.mt[n * W + l] = T(0);
      }
      const int64_t na = P.full_A ? D * D : D;
      for (int64_t k = 0; k < na; k++) G.A[k * W + l] = T(0);
      for (int64_t k = 0; k < D; k++) {
        if (P.full_A) G.A[(k * D + k) * W + l] = T(1);
        else G.A[k * W + l] = T(1);
        G.b[k * W + l] = G.th[k * W + l] = T(0);
      }
      G.cst[l] = T(0);
      tol[l] = T(1);
      max_iter[l] = 0;
    }
  }
  G.unit_labels = true;
  for (int64_t i = 0; i < NW; i++) {
    if (G.w[i] > T(0) && __builtin_fabs(G.y[i]) != T(1)) G.unit_labels = false;
  }

  // Start: margins, objective, gradient, status.
  G.matvec(G.th, G.mt, G.m);
  row_values(P.loss, NW, G.y, G.w, G.m, G.e, G.v);
  G.objective(G.th, f);
  row_derivatives(P.loss, NW, G.unit_labels, G.y, G.w, G.m, G.e, G.r, G.c);
  G.gradient(G.th, G.g);
  bool any = false;
  for (int l = 0; l < W; l++) {
    iter[l] = 0;
    status[l] = status_after(f[l], G.g, D, l, W, 0, tol[l], max_iter[l], false);
    running[l] = valid[l] && status[l] == kRunning;
    any = any || running[l];
  }

  while (any) {
    G.data_hessian();
    G.direction();
    G.matvec(G.p, nullptr, G.xp);
    LLJAX_LANES {
      slope[l] = T(0);
      slack[l] = T(16) * eps * (T(1) + __builtin_fabs(f[l]));
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
    for (int k = 0; searching_any; k++, t *= T(0.5)) {
      for (int64_t i = 0; i < D; i++) {
        LLJAX_LANES G.tt[i * W + l] = G.th[i * W + l] + t * G.p[i * W + l];
      }
      for (int64_t n = 0; n < N; n++) {
        LLJAX_LANES G.mt[n * W + l] = G.m[n * W + l] + t * G.xp[n * W + l];
      }
      row_values(P.loss, NW, G.y, G.w, G.mt, G.et, G.v);
      G.objective(G.tt, fv);
      searching_any = false;
      bool take_any = false;
      M take = {};
      for (int l = 0; l < W; l++) {
        if (!searching[l]) continue;
        const bool sufficient = fv[l] <= f[l] + T(1e-4) * t * slope[l] + slack[l];
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
        for (int64_t i = 0; i < D; i++) th[i] = take ? tt[i] : th[i];
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
    if (any_accepted) {  // lanes that did not move get the same r, c as before
      row_derivatives(P.loss, NW, G.unit_labels, G.y, G.w, G.m, G.e, G.r, G.c);
      G.gradient(G.th, G.gn);
    }
    any = false;
    for (int l = 0; l < W; l++) {
      if (!running[l]) continue;
      if (accepted[l]) {
        for (int64_t i = 0; i < D; i++) G.g[i * W + l] = G.gn[i * W + l];
      }
      iter[l] += 1;
      status[l] = status_after(f[l], G.g, D, l, W, iter[l], tol[l], max_iter[l], !accepted[l]);
      running[l] = status[l] == kRunning;
      any = any || running[l];
    }
  }

  // Results; the precision is X^T diag(c) X + A at the final margin (c is current for every lane).
  if (P.precision_mode != kPrecisionNone) G.data_hessian();
  for (int l = 0; l < W; l++) {
    if (!valid[l]) continue;
    const int64_t e = ent[l];
    for (int64_t i = 0; i < D; i++) P.theta[e * D + i] = G.th[i * W + l];
    P.value[e] = f[l];
    P.grad_norm[e] = grad_max(G.g, D, l, W);
    P.iterations[e] = iter[l];
    P.status[e] = status[l];
    if (P.precision_mode == kPrecisionFull) {
      T* out = P.precision + e * D * D;
      for (int64_t i = 0; i < D; i++) {
        for (int64_t j = 0; j < D; j++) {
          const T s = i >= j ? G.S[(i * Dp + j) * W + l] : G.S[(j * Dp + i) * W + l];
          out[i * D + j] = s + (P.full_A ? G.A[(i * D + j) * W + l] : (i == j ? G.A[i * W + l] : T(0)));
        }
      }
    } else if (P.precision_mode == kPrecisionDiagonal) {
      T* out = P.precision + e * D;
      for (int64_t i = 0; i < D; i++) {
        out[i] = G.S[(i * Dp + i) * W + l] + (P.full_A ? G.A[(i * D + i) * W + l] : G.A[i * W + l]);
      }
    }
  }
}

template <typename T>
static void solve_groups_impl(const Problem<T>& P, int64_t g0, int64_t g1, T* workspace) {
  constexpr int W = kLanes<T>;
  Group<T, W> G;
  G.N = P.N;
  G.D = P.D;
  G.Dp = (P.D + 3) / 4 * 4;
  G.full_A = P.full_A;
  G.loss = P.loss;
  G.carve(workspace);
  for (int64_t gi = g0; gi < g1; gi++) solve_group<T, W>(P, gi, G);
}

void solve_groups(const Problem<double>& p, int64_t g0, int64_t g1, double* workspace) {
  solve_groups_impl<double>(p, g0, g1, workspace);
}
void solve_groups(const Problem<float>& p, int64_t g0, int64_t g1, float* workspace) {
  solve_groups_impl<float>(p, g0, g1, workspace);
}

#undef LLJAX_LANES
#undef LLJAX_HOT
