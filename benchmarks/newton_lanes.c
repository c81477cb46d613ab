/* Reference CPU kernel for bench/profile purposes only (not part of lljax): damped Newton for the
   logistic objective with W entities in the SIMD lanes ("entity axis last"), the whole solve of a group
   of W entities fused and cache-resident. Same algorithm and stopping rule as lljax/_solve.py: ridge
   mu = sqrt(eps) max diag H + eps, Cholesky, Armijo step halving with slack 16 eps (1 + |f|), stop at
   max |g| <= tol, at max_iter, or on a failed line search.

   Group layout (G = E / W groups): X (G, N, D, W); y (+-1), w, offset (G, N, W); A (G, D, D, W) the
   penalty matrix delta P0 + (1 - delta) l2 I; b (G, D, W) = delta P0 theta0; theta (G, D, W) in/out;
   H out (G, D, D, W) the posterior precision; iters (G, W). Build (see profile_kernel.py):
   gcc -O3 -march=native -ffast-math -fopenmp -shared -fPIC newton_lanes.c -o newton_lanes.so -lm -lmvec */
#include <math.h>
#include <string.h>
#ifndef W
#define W 4
#endif
#define MAXN 128
#define MAXD 32
#define LANES for (int l = 0; l < W; l++)

static inline void sigmoid_v(const double *z, double *s) {
  double e[W];
  #pragma omp simd
  for (int l = 0; l < W; l++) e[l] = exp(-z[l]);
  #pragma omp simd
  for (int l = 0; l < W; l++) s[l] = 1.0 / (1.0 + e[l]);
}

/* objective per lane at margins mt, theta tt */
static void objective(int N, int D, const double *y, const double *w, const double *mt, const double *A,
                      const double *b, const double *tt, double *f) {
  double acc[W] = {0};
  for (int n = 0; n < N; n++) {
    double z[W], e[W];
    #pragma omp simd
    for (int l = 0; l < W; l++) z[l] = -y[n*W+l] * mt[n*W+l];
    #pragma omp simd
    for (int l = 0; l < W; l++) e[l] = log1p(exp(-fabs(z[l])));
    #pragma omp simd
    for (int l = 0; l < W; l++) acc[l] += w[n*W+l] > 0 ? w[n*W+l] * (fmax(z[l], 0.0) + e[l]) : 0.0;
  }
  for (int i = 0; i < D; i++) {
    double s[W] = {0};
    for (int j = 0; j < D; j++) { LANES s[l] += A[(i*D+j)*W+l] * tt[j*W+l]; }
    LANES acc[l] += 0.5 * tt[i*W+l] * s[l] - b[i*W+l] * tt[i*W+l];
  }
  LANES f[l] = acc[l];
}

static void gradient(int N, int D, const double *X, const double *y, const double *w, const double *m,
                     const double *A, const double *b, const double *th, double *g) {
  double r[MAXN*W];
  for (int n = 0; n < N; n++) {
    double z[W], s[W];
    LANES z[l] = -y[n*W+l] * m[n*W+l];
    sigmoid_v(z, s);
    LANES r[n*W+l] = w[n*W+l] > 0 ? -w[n*W+l] * y[n*W+l] * s[l] : 0.0;
  }
  for (int i = 0; i < D; i++) {
    double s[W]; LANES s[l] = -b[i*W+l];
    for (int j = 0; j < D; j++) { LANES s[l] += A[(i*D+j)*W+l] * th[j*W+l]; }
    for (int n = 0; n < N; n++) { LANES s[l] += r[n*W+l] * X[(n*D+i)*W+l]; }
    LANES g[i*W+l] = s[l];
  }
}

/* lower triangle of X^T diag(c) X + A into H (D, D, W) */
static void hessian(int N, int D, const double *X, const double *w, const double *m, const double *A, double *H) {
  double xc[MAXN*MAXD*W];
  for (int n = 0; n < N; n++) {
    double s[W], c[W];
    sigmoid_v(m + n*W, s);
    LANES c[l] = w[n*W+l] > 0 ? w[n*W+l] * s[l] * (1.0 - s[l]) : 0.0;
    for (int i = 0; i < D; i++) { LANES xc[(n*D+i)*W+l] = c[l] * X[(n*D+i)*W+l]; }
  }
  if (D % 4 == 0) {
  /* 4x4 register blocks of (i, j) pairs, j-block <= i-block (FMA-bound, not load-bound) */
  for (int ib = 0; ib < D; ib += 4) {
    for (int jb = 0; jb <= ib; jb += 4) {
      double acc[4][4][W];
      for (int u = 0; u < 4; u++) for (int v = 0; v < 4; v++) { LANES acc[u][v][l] = 0.0; }
      for (int n = 0; n < N; n++) {
        const double *xi = xc + (n*D+ib)*W, *xj = X + (n*D+jb)*W;
        #pragma GCC unroll 4
        for (int u = 0; u < 4; u++) {
          #pragma GCC unroll 4
          for (int v = 0; v < 4; v++) { LANES acc[u][v][l] += xi[u*W+l] * xj[v*W+l]; }
        }
      }
      for (int u = 0; u < 4; u++) for (int v = 0; v < 4; v++) {
        int i = ib + u, j = jb + v;
        if (j <= i) { LANES H[(i*D+j)*W+l] = A[(i*D+j)*W+l] + acc[u][v][l]; }
      }
    }
  }
  return;
  }
  for (int i = 0; i < D; i++) {
    int j = 0;
    for (; j + 1 <= i; j += 2) {      /* two columns at a time: 2 accumulators, 3 loads per 2 FMAs */
      double a0[W], a1[W];
      LANES { a0[l] = A[(i*D+j)*W+l]; a1[l] = A[(i*D+j+1)*W+l]; }
      for (int n = 0; n < N; n++) {
        const double *xi = xc + (n*D+i)*W, *xj = X + (n*D+j)*W;
        LANES { a0[l] += xi[l] * xj[l]; a1[l] += xi[l] * xj[W+l]; }
      }
      LANES { H[(i*D+j)*W+l] = a0[l]; H[(i*D+j+1)*W+l] = a1[l]; }
    }
    for (; j <= i; j++) {
      double a0[W]; LANES a0[l] = A[(i*D+j)*W+l];
      for (int n = 0; n < N; n++) { LANES a0[l] += xc[(n*D+i)*W+l] * X[(n*D+j)*W+l]; }
      LANES H[(i*D+j)*W+l] = a0[l];
    }
  }
}

void solve(int G, int N, int D, const double *X, const double *Y, const double *Wt, const double *O,
           const double *AA, const double *BB, double *TH, double *HOUT, int *ITERS, double tol, int max_iter) {
  const double eps = 2.220446049250313e-16;
  #pragma omp parallel for schedule(dynamic, 4)
  for (int gi = 0; gi < G; gi++) {
    const double *x = X + (long)gi*N*D*W, *y = Y + (long)gi*N*W, *w = Wt + (long)gi*N*W, *o = O + (long)gi*N*W;
    const double *A = AA + (long)gi*D*D*W, *b = BB + (long)gi*D*W;
    double *th = TH + (long)gi*D*W;
    double m[MAXN*W], xp[MAXN*W], mt[MAXN*W], g[MAXD*W], p[MAXD*W], tt[MAXD*W], L[MAXD*MAXD*W];
    double f[W], fv[W], t[W], slope[W], slack[W];
    int running[W], it[W], acc[W];
    for (int n = 0; n < N; n++) {
      double s[W]; LANES s[l] = o[n*W+l];
      for (int j = 0; j < D; j++) { LANES s[l] += x[(n*D+j)*W+l] * th[j*W+l]; }
      LANES m[n*W+l] = s[l];
    }
    objective(N, D, y, w, m, A, b, th, f);
    gradient(N, D, x, y, w, m, A, b, th, g);
    LANES { it[l] = 0; running[l] = 1; }
    for (;;) {
      int any = 0;
      LANES {
        double gm = 0; for (int i = 0; i < D; i++) gm = fmax(gm, fabs(g[i*W+l]));
        if (running[l] && (gm <= tol || it[l] >= max_iter)) running[l] = 0;
        any |= running[l];
      }
      if (!any) break;
      hessian(N, D, x, w, m, A, L);
      double mu[W]; LANES mu[l] = 0;
      for (int i = 0; i < D; i++) { LANES mu[l] = fmax(mu[l], L[(i*D+i)*W+l]); }
      LANES mu[l] = sqrt(eps) * mu[l] + eps;
      for (int i = 0; i < D; i++) { LANES L[(i*D+i)*W+l] += mu[l]; }
      for (int j = 0; j < D; j++) {   /* Cholesky-Crout, lane-parallel */
        double s[W], inv[W];
        LANES s[l] = L[(j*D+j)*W+l];
        for (int k = 0; k < j; k++) { LANES s[l] -= L[(j*D+k)*W+l] * L[(j*D+k)*W+l]; }
        LANES { s[l] = sqrt(s[l]); inv[l] = 1.0 / s[l]; L[(j*D+j)*W+l] = s[l]; }
        for (int i = j + 1; i < D; i++) {
          double u[W]; LANES u[l] = L[(i*D+j)*W+l];
          for (int k = 0; k < j; k++) { LANES u[l] -= L[(i*D+k)*W+l] * L[(j*D+k)*W+l]; }
          LANES L[(i*D+j)*W+l] = u[l] * inv[l];
        }
      }
      for (int i = 0; i < D; i++) {
        double s[W]; LANES s[l] = -g[i*W+l];
        for (int k = 0; k < i; k++) { LANES s[l] -= L[(i*D+k)*W+l] * p[k*W+l]; }
        LANES p[i*W+l] = s[l] / L[(i*D+i)*W+l];
      }
      for (int i = D - 1; i >= 0; i--) {
        double s[W]; LANES s[l] = p[i*W+l];
        for (int k = i + 1; k < D; k++) { LANES s[l] -= L[(k*D+i)*W+l] * p[k*W+l]; }
        LANES p[i*W+l] = s[l] / L[(i*D+i)*W+l];
      }
      LANES slope[l] = 0;
      for (int i = 0; i < D; i++) { LANES slope[l] += g[i*W+l] * p[i*W+l]; }
      for (int n = 0; n < N; n++) {
        double s[W]; LANES s[l] = 0;
        for (int j = 0; j < D; j++) { LANES s[l] += x[(n*D+j)*W+l] * p[j*W+l]; }
        LANES xp[n*W+l] = s[l];
      }
      LANES { t[l] = 1.0; acc[l] = 0; slack[l] = 16 * eps * (1 + fabs(f[l])); }
      for (int k = 0; k <= 30; k++) {
        for (int i = 0; i < D; i++) { LANES tt[i*W+l] = th[i*W+l] + t[l] * p[i*W+l]; }
        for (int n = 0; n < N; n++) { LANES mt[n*W+l] = m[n*W+l] + t[l] * xp[n*W+l]; }
        objective(N, D, y, w, mt, A, b, tt, fv);
        int again = 0;
        LANES {
          if (!acc[l] && fv[l] <= f[l] + 1e-4 * t[l] * slope[l] + slack[l]) acc[l] = 1;
          if (!acc[l] && running[l]) { t[l] *= 0.5; again = 1; }
        }
        if (!again) break;
      }
      LANES {
        if (!running[l]) continue;
        it[l]++;
        if (!(acc[l] && slope[l] < 0)) { running[l] = 0; continue; }
        f[l] = fv[l];
        for (int i = 0; i < D; i++) th[i*W+l] = tt[i*W+l];
        for (int n = 0; n < N; n++) m[n*W+l] = mt[n*W+l];
      }
      gradient(N, D, x, y, w, m, A, b, th, g);
    }
    LANES ITERS[gi*W+l] = it[l];
    double *Ho = HOUT + (long)gi*D*D*W;
    hessian(N, D, x, w, m, A, Ho);
    for (int i = 0; i < D; i++) for (int j = i + 1; j < D; j++) { LANES Ho[(i*D+j)*W+l] = Ho[(j*D+i)*W+l]; }
  }
}
