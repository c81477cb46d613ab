// The wide kernel body: Newton in the span of the rows (lljax/solve/span.py), one entity at a
// time on its sparse rows. Included by newton_avx2.cc and newton_generic.cc after newton_kernel.h
// (whose row_values, row_derivatives, Eps and status_after it uses), inside the same ISA namespace.
//
// Per entity (N rows of at most K stored (column, value) slots, D local features, diagonal penalty A):
//   setup: A, b, c from the prior (lljax.solve.objective.make_penalty), mu = b / A; K = X A^-1 X^T (N x N) from the nonzeros
//          grouped by column (a column's rows pairwise: no D x N dense X^T and no dense product);
//   start: theta = mu, beta = 0, m = X mu + offset, f, g = X^T r + A theta - b, status;
//   step:  r = w l'(m) + beta, s = sqrt(w l''(m)), M = I + s K s; dbeta = -r + s M^-1 (s K r) (Cholesky);
//          p = A^-1 X^T dbeta (NaN if M is not finite); the Newton kernel's Armijo search on f along p;
//          accept: beta += t dbeta, theta += t p, m += t X p, g; status;
//   end:   diagonal precision sum_n c_n x_nj^2 + A_j (each stored slot squared), and the finish (lljax.solve.iteration.finish).
// Weight-0 rows take no part (their stored values count as 0).

template <typename T>
struct WideWork {
  int64_t N, K, D;
  T *xv, *Km, *L, *m, *mt, *e, *et, *v, *r, *c, *rr, *s, *kr, *q, *dbeta, *beta, *xp, *col;  // N*K, N*N x 2, N x 15
  T *A, *ainv, *b, *th0, *th, *tt, *p, *g, *xt;                                      // D x 9
  T* entry_val;                                                                       // N*K
  int64_t *col_start, *entry_row;                                                     // D+1, N*K

  // sizes: wide_workspace_floats / wide_workspace_ints (newton_common.h)
  void carve(T* f, int64_t* i) {
    auto take = [&f](int64_t count) {
      T* out = f;
      f += count;
      return out;
    };
    xv = take(N * K), entry_val = take(N * K), Km = take(N * N), L = take(N * N);
    T** vecs[] = {&m, &mt, &e, &et, &v, &r, &c, &rr, &s, &kr, &q, &dbeta, &beta, &xp, &col};
    for (T** ptr : vecs) *ptr = take(N);
    T** dvecs[] = {&A, &ainv, &b, &th0, &th, &tt, &p, &g, &xt};
    for (T** ptr : dvecs) *ptr = take(D);
    col_start = i;
    entry_row = i + D + 1;
  }
};

template <typename T>
struct WideEntity {
  const WideProblem<T>& P;
  WideWork<T>& S;
  const int32_t* cols;
  const T *y, *w, *off;
  int64_t N, K, D;
  T cst;
  bool unit_labels;

  // X v (+ base): each row's stored values against v at their columns.
  void gather(const T* __restrict vec, const T* __restrict base, T* __restrict out) const {
    for (int64_t n = 0; n < N; n++) {
      T acc = T(0);
      for (int64_t k = 0; k < K; k++) acc += S.xv[n * K + k] * vec[cols[n * K + k]];
      out[n] = base ? acc + base[n] : acc;
    }
  }

  // out (D) = X^T r, each stored value's product added at its column. Unfused like XLA's scatter-add: a
  // fused x r + out keeps inf + (-x r) = inf where the products overflow to +-inf and their sum is NaN.
  __attribute__((optimize("fp-contract=off"))) void scatter(const T* __restrict r, T* __restrict out) const {
    for (int64_t j = 0; j < D; j++) out[j] = T(0);
    for (int64_t n = 0; n < N; n++) {
      for (int64_t k = 0; k < K; k++) out[cols[n * K + k]] += S.xv[n * K + k] * r[n];
    }
  }

  T objective(const T* __restrict theta) const {  // sum of S.v plus the penalty at theta
    T acc = T(0);
    for (int64_t n = 0; n < N; n++) acc += S.v[n];
    T quad = T(0), lin = T(0);
    for (int64_t j = 0; j < D; j++) {
      quad += theta[j] * (S.A[j] * theta[j]);
      lin += S.b[j] * theta[j];
    }
    return acc + (T(0.5) * quad - lin + cst);
  }

  void gradient(const T* __restrict theta, T* __restrict g) const {  // from the current S.r
    scatter(S.r, g);
    for (int64_t j = 0; j < D; j++) g[j] = (g[j] + S.A[j] * theta[j]) - S.b[j];
  }

  // The penalty from the prior (as lljax.solve.objective.make_penalty for a diagonal prior) and mu = b / A, unfused like XLA.
  __attribute__((optimize("fp-contract=off"))) void load_penalty(int64_t e) {
    const int32_t* mask = P.mask + e * D;
    const T* mu = P.prior_mean + e * D;
    const T* prec = P.prior_precision + e * D;
    const T delta = P.delta[e], ridge = (T(1) - delta) * P.l2[e];
    T quad = T(0);
    for (int64_t j = 0; j < D; j++) {
      S.th0[j] = mask[j] ? mu[j] : T(0);
      const T p0 = mask[j] ? prec[j] : T(0);
      S.A[j] = mask[j] ? delta * p0 + (mask[j] == kUnpenalized ? T(0) : ridge) : T(1);
      const T p0t0 = p0 * S.th0[j];
      S.b[j] = delta * p0t0;
      quad += S.th0[j] * p0t0;
      S.ainv[j] = T(1) / S.A[j];
      S.th[j] = S.b[j] * S.ainv[j];
    }
    cst = T(0.5) * delta * quad;
  }

  // K = X A^-1 X^T: the nonzeros grouped by column (a row's repeated column summed first), then for each
  // column every pair of its rows.
  void gram() {
    int64_t* start = S.col_start;
    for (int64_t j = 0; j <= D; j++) start[j] = 0;
    for (int64_t i = 0; i < N * K; i++) {
      if (S.xv[i] != T(0)) start[cols[i] + 1]++;
    }
    for (int64_t j = 0; j < D; j++) start[j + 1] += start[j];
    for (int64_t n = 0; n < N; n++) {  // rows in order, so one row's entries in a column are adjacent
      for (int64_t k = 0; k < K; k++) {
        const T x = S.xv[n * K + k];
        if (x == T(0)) continue;
        const int32_t j = cols[n * K + k];
        int64_t& at = start[j];
        S.entry_row[at] = n;
        S.entry_val[at] = x;
        at++;
      }
    }
    for (int64_t j = D; j > 0; j--) start[j] = start[j - 1];  // back to the bucket starts
    start[0] = 0;
    for (int64_t i = 0; i < N * N; i++) S.Km[i] = T(0);
    for (int64_t j = 0; j < D; j++) {
      // merge entries of the same row (adjacent), in place
      int64_t out = start[j];
      for (int64_t i = start[j]; i < start[j + 1]; i++) {
        if (out > start[j] && S.entry_row[out - 1] == S.entry_row[i]) {
          S.entry_val[out - 1] += S.entry_val[i];
        } else {
          S.entry_row[out] = S.entry_row[i];
          S.entry_val[out] = S.entry_val[i];
          out++;
        }
      }
      const T a = S.ainv[j];
      for (int64_t u = start[j]; u < out; u++) {
        const int64_t n = S.entry_row[u];
        const T xa = S.entry_val[u] * a;
        T* row = S.Km + n * N;
        for (int64_t z = start[j]; z < out; z++) row[S.entry_row[z]] += xa * S.entry_val[z];
      }
    }
  }

  // p = A^-1 X^T dbeta with dbeta = -rr + s (I + s K s)^-1 (s K rr); NaN if M is not finite.
  void direction() {
    T nonfinite = T(0);
    for (int64_t a = 0; a < N; a++) {
      for (int64_t z = 0; z < N; z++) {
        const T mz = (S.s[a] * S.Km[a * N + z]) * S.s[z] + (a == z ? T(1) : T(0));
        nonfinite += mz * T(0);
        S.L[a * N + z] = mz;
      }
    }
    for (int64_t a = 0; a < N; a++) {  // kr = K rr
      T acc = T(0);
      for (int64_t z = 0; z < N; z++) acc += S.Km[a * N + z] * S.rr[z];
      S.kr[a] = acc;
    }
    // Cholesky of M (lower, row-oriented right-looking; eigenvalues >= 1 when finite)
    for (int64_t k = 0; k < N; k++) {
      const T d = S.L[k * N + k];
      const T lk = d > T(0) ? __builtin_sqrt(d) : __builtin_nan("");
      S.L[k * N + k] = lk;
      const T ik = T(1) / lk;
      for (int64_t i = k + 1; i < N; i++) S.col[i] = S.L[i * N + k] *= ik;  // column k, kept contiguous
      for (int64_t i = k + 1; i < N; i++) {
        const T lik = S.col[i];
        T* Li = S.L + i * N;
        for (int64_t j = k + 1; j <= i; j++) Li[j] -= lik * S.col[j];
      }
    }
    for (int64_t a = 0; a < N; a++) S.q[a] = S.s[a] * S.kr[a];
    for (int64_t a = 0; a < N; a++) {  // L z = s K rr
      T acc = S.q[a];
      for (int64_t k = 0; k < a; k++) acc -= S.L[a * N + k] * S.q[k];
      S.q[a] = acc / S.L[a * N + a];
    }
    for (int64_t a = N - 1; a >= 0; a--) {  // L^T q = z
      T acc = S.q[a];
      for (int64_t k = a + 1; k < N; k++) acc -= S.L[k * N + a] * S.q[k];
      S.q[a] = acc / S.L[a * N + a];
    }
    for (int64_t a = 0; a < N; a++) S.dbeta[a] = -S.rr[a] + S.s[a] * S.q[a];
    scatter(S.dbeta, S.p);
    const bool finite_m = nonfinite == T(0);
    for (int64_t j = 0; j < D; j++) S.p[j] = finite_m ? S.ainv[j] * S.p[j] : __builtin_nan("");
  }

  void run(int64_t e) {
    cols = P.cols + e * N * K;
    y = P.y + e * N;
    w = P.w + e * N;
    off = P.offset + e * N;
    for (int64_t n = 0; n < N; n++) {
      for (int64_t k = 0; k < K; k++) S.xv[n * K + k] = w[n] > T(0) ? P.vals[(e * N + n) * K + k] : T(0);
    }
    int other = 0;
    for (int64_t n = 0; n < N; n++) other |= (w[n] > T(0)) & (__builtin_fabs(y[n]) != T(1));
    unit_labels = other == 0;
    load_penalty(e);
    gram();
    const T eps = Eps<T>::value, tol = P.tol[e];
    const int32_t max_iter = P.max_iter[e];
    for (int64_t n = 0; n < N; n++) S.beta[n] = T(0);
    gather(S.th, off, S.m);
    row_values(P.loss, N, y, w, S.m, S.e, S.v);
    T f = objective(S.th);
    row_derivatives(P.loss, N, unit_labels, y, w, S.m, S.e, S.r, S.c);
    gradient(S.th, S.g);
    int32_t iteration = 0;
    const GradSummary<T, 1> g0(S.g, D);
    int32_t status = status_after(f, g0.max_abs[0], g0.finite[0], 0, tol, max_iter, false);
    while (status == kRunning) {
      for (int64_t n = 0; n < N; n++) {
        S.rr[n] = S.r[n] + S.beta[n];
        S.s[n] = __builtin_sqrt(S.c[n]);
      }
      direction();
      gather(S.p, nullptr, S.xp);
      T slope = T(0);
      for (int64_t j = 0; j < D; j++) slope += S.g[j] * S.p[j];
      const T slack = T(kSlackUlps) * eps * (T(1) + __builtin_fabs(f));
      const bool slope_finite = finite(slope);
      T t = T(1), fv = T(0);
      bool sufficient = false;
      for (int k = 0;; k++, t *= T(kStepShrink)) {
        for (int64_t j = 0; j < D; j++) S.tt[j] = S.th[j] + t * S.p[j];
        for (int64_t n = 0; n < N; n++) S.mt[n] = S.m[n] + t * S.xp[n];
        row_values(P.loss, N, y, w, S.mt, S.et, S.v);
        fv = objective(S.tt);
        sufficient = fv <= f + T(kArmijoC1) * t * slope + slack;
        if (!(k < P.max_backtracks && !sufficient && slope_finite)) break;
      }
      const bool accepted = (sufficient && slope < T(0)) || !slope_finite;
      if (accepted) {
        for (int64_t n = 0; n < N; n++) {
          S.beta[n] += t * S.dbeta[n];
          S.m[n] = S.mt[n];
          S.e[n] = S.et[n];
        }
        for (int64_t j = 0; j < D; j++) S.th[j] = S.tt[j];
        f = fv;
        row_derivatives(P.loss, N, unit_labels, y, w, S.m, S.e, S.r, S.c);
        gradient(S.th, S.g);
      }
      iteration++;
      const GradSummary<T, 1> gs(S.g, D);
      status = status_after(f, gs.max_abs[0], gs.finite[0], iteration, tol, max_iter, !accepted);
    }
    // Results, as lljax.solve.iteration.finish: the diagonal precision sum_n c_n x_nj^2 + A_j (c is current).
    T nonfinite = T(0);
    T* prec = P.precision_mode == kPrecisionDiagonal ? P.precision + e * D : nullptr;
    if (prec) {
      for (int64_t j = 0; j < D; j++) S.xt[j] = T(0);
      for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < K; k++) {
          const T x = S.xv[n * K + k];
          S.xt[cols[n * K + k]] += (x * x) * S.c[n];
        }
      }
      for (int64_t j = 0; j < D; j++) {
        prec[j] = S.xt[j] + S.A[j];
        nonfinite += prec[j] * T(0);
      }
    }
    if (nonfinite != T(0)) status = kNonFinite;
    const bool failed = status == kNonFinite;
    const GradSummary<T, 1> gs(S.g, D);
    for (int64_t j = 0; j < D; j++) P.theta[e * D + j] = failed ? S.th0[j] : S.th[j];
    P.value[e] = f;
    P.grad_norm[e] = gs.max_abs[0];
    P.iterations[e] = iteration;
    P.status[e] = status;
    if (failed && prec) {
      for (int64_t j = 0; j < D; j++) prec[j] = P.prior_precision[e * D + j];
    }
  }
};

template <typename T>
static void solve_wide_impl(const WideProblem<T>& P, int64_t e0, int64_t e1, T* fwork, int64_t* iwork) {
  WideWork<T> S;
  S.N = P.N, S.K = P.K, S.D = P.D;
  S.carve(fwork, iwork);
  WideEntity<T> ent{P, S, nullptr, nullptr, nullptr, nullptr, P.N, P.K, P.D, T(0), true};
  for (int64_t e = e0; e < e1; e++) ent.run(e);
}

void solve_wide(const WideProblem<double>& p, int64_t e0, int64_t e1, double* f, int64_t* i) {
  solve_wide_impl<double>(p, e0, e1, f, i);
}
void solve_wide(const WideProblem<float>& p, int64_t e0, int64_t e1, float* f, int64_t* i) {
  solve_wide_impl<float>(p, e0, e1, f, i);
}
