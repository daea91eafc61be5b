/* BatchNorm (training: batch statistics) and its activation in one pass each way, for channels_last float32.
 *
 * x is M rows (N*H*W) of C contiguous channels. PyTorch runs BatchNorm and the activation as separate
 * kernels: forward reads x twice for the statistics, once more to normalize, writes y, then reads and writes y
 * again for the activation; backward reads and writes the activation's gradient before BatchNorm's two passes.
 * Here forward is one statistics pass and one pass writing act(x * scale + shift); backward recomputes the
 * pre-activation from x (nothing else is kept) in its two passes. Statistics are summed in float over blocks of
 * BLOCK rows and in double across blocks, over a fixed number of chunks in a fixed order: the same numbers for
 * any thread count.
 *
 * Compiled at first use by fer_core/models/fused.py (-O3 -march=native -fno-trapping-math; OpenMP where the
 * compiler has it). -fno-trapping-math changes no result: it lets the compiler evaluate both sides of the
 * activations' conditionals, which is what vectorizes them.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 64
#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* act: 0 identity, 1 ReLU, 2 LeakyReLU(slope), 3 ReLU6. Gradients as PyTorch's: 1 where the output is not
 * clipped (ReLU: z > 0; LeakyReLU: slope where z <= 0; ReLU6: 0 < z < 6). */
static inline float leaky(float z, float slope) {
  float n = z * slope;
  return z > 0.f ? z : n;
}
#define IDENT(z) (z)
#define IDENT_D(z) ((void)(z), 1.f)
#define RELU(z) ((z) > 0.f ? (z) : 0.f)
#define RELU_D(z) ((z) > 0.f ? 1.f : 0.f)
#define LEAKY(z) leaky((z), slope)
#define LEAKY_D(z) ((z) > 0.f ? 1.f : slope)
#define RELU6(z) ((z) < 0.f ? 0.f : ((z) > 6.f ? 6.f : (z)))
#define RELU6_D(z) (((z) > 0.f && (z) < 6.f) ? 1.f : 0.f)

/* per-channel sums of (x - k) and (x - k)^2 over rows [r0, r1) */
static void stats_rows(const float *restrict x, long r0, long r1, long C, const float *restrict k,
                       double *restrict o1, double *restrict o2, float *restrict a1, float *restrict a2) {
  for (long b = r0; b < r1; b += BLOCK) {
    long e = MIN(b + BLOCK, r1);
    for (long c = 0; c < C; c++) a1[c] = a2[c] = 0.f;
    for (long r = b; r < e; r++) {
      const float *restrict row = x + r * C;
      for (long c = 0; c < C; c++) {
        float d = row[c] - k[c];
        a1[c] += d;
        a2[c] += d * d;
      }
    }
    for (long c = 0; c < C; c++) {
      o1[c] += a1[c];
      o2[c] += a2[c];
    }
  }
}

/* three row kernels per activation: y = act((x - mean) * scale + beta), scale = gamma * invstd (x - mean first,
 * as PyTorch does: near the kink at 0 a folded x * scale + shift would lose the digits that decide its side); the
 * backward sums; the input's gradient */
#define KERNELS(A, F, D)                                                                                        \
  static void fwd_rows_##A(const float *restrict x, float *restrict y, long r0, long r1, long C,              \
                           const float *restrict mean, const float *restrict scale,                          \
                           const float *restrict beta, float slope) {                                        \
    (void)slope;                                                                                              \
    for (long r = r0; r < r1; r++) {                                                                          \
      const float *restrict xr = x + r * C;                                                                   \
      float *restrict yr = y + r * C;                                                                         \
      for (long c = 0; c < C; c++) {                                                                          \
        float z = (xr[c] - mean[c]) * scale[c] + beta[c];                                                     \
        yr[c] = F(z);                                                                                         \
      }                                                                                                       \
    }                                                                                                         \
  }                                                                                                           \
  static void bsum_rows_##A(const float *restrict gy, const float *restrict x, long r0, long r1, long C,      \
                            const float *restrict scale, const float *restrict beta,                         \
                            const float *restrict mean, float slope, double *restrict o1, double *restrict o2, \
                            float *restrict a1, float *restrict a2) {                                         \
    (void)slope;                                                                                              \
    for (long b = r0; b < r1; b += BLOCK) {                                                                   \
      long e = MIN(b + BLOCK, r1);                                                                            \
      for (long c = 0; c < C; c++) a1[c] = a2[c] = 0.f;                                                       \
      for (long r = b; r < e; r++) {                                                                          \
        const float *restrict xr = x + r * C, *restrict gr = gy + r * C;                                      \
        for (long c = 0; c < C; c++) {                                                                        \
          float d = xr[c] - mean[c];                                                                          \
          float g = gr[c] * D(d * scale[c] + beta[c]);                                                        \
          a1[c] += g;                                                                                         \
          a2[c] += g * d;                                                                                     \
        }                                                                                                     \
      }                                                                                                       \
      for (long c = 0; c < C; c++) {                                                                          \
        o1[c] += a1[c];                                                                                       \
        o2[c] += a2[c];                                                                                       \
      }                                                                                                       \
    }                                                                                                         \
  }                                                                                                           \
  static void bwd_rows_##A(const float *restrict gy, const float *restrict x, float *restrict gx, long r0,    \
                           long r1, long C, const float *restrict scale, const float *restrict beta,         \
                           const float *restrict mean, const float *restrict k1, const float *restrict k2,   \
                           float slope) {                                                                     \
    (void)slope;                                                                                              \
    for (long r = r0; r < r1; r++) {                                                                          \
      const float *restrict xr = x + r * C, *restrict gr = gy + r * C;                                        \
      float *restrict o = gx + r * C;                                                                         \
      for (long c = 0; c < C; c++) {                                                                          \
        float d = xr[c] - mean[c];                                                                            \
        float g = gr[c] * D(d * scale[c] + beta[c]);                                                          \
        o[c] = scale[c] * (g - k1[c] - d * k2[c]);                                                            \
      }                                                                                                       \
    }                                                                                                         \
  }

KERNELS(0, IDENT, IDENT_D)
KERNELS(1, RELU, RELU_D)
KERNELS(2, LEAKY, LEAKY_D)
KERNELS(3, RELU6, RELU6_D)

typedef void (*fwd_fn)(const float *, float *, long, long, long, const float *, const float *, const float *,
                       float);
typedef void (*bsum_fn)(const float *, const float *, long, long, long, const float *, const float *,
                        const float *, float, double *, double *, float *, float *);
typedef void (*bwd_fn)(const float *, const float *, float *, long, long, long, const float *, const float *,
                       const float *, const float *, const float *, float);
static const fwd_fn FWD[4] = {fwd_rows_0, fwd_rows_1, fwd_rows_2, fwd_rows_3};
static const bsum_fn BSUM[4] = {bsum_rows_0, bsum_rows_1, bsum_rows_2, bsum_rows_3};
static const bwd_fn BWD[4] = {bwd_rows_0, bwd_rows_1, bwd_rows_2, bwd_rows_3};

/* Returns 0, 1 for a bad argument, 2 when memory ran out (nothing written then but y's prefix). */
int bn_act_forward(const float *x, float *y, long M, long C, const float *gamma, const float *beta, float eps,
                   int act, float slope, int nchunk, int nthreads, float *mean_out, float *invstd_out,
                   float *var_unbiased_out) {
  if (act < 0 || act > 3 || M < 1 || C < 1 || nchunk < 1) return 1;
  long per = (M + nchunk - 1) / nchunk;
  float *k = malloc(sizeof(float) * C * 3);
  double *p = calloc((size_t)nchunk * C * 2, sizeof(double));
  float *a = malloc(sizeof(float) * C * 2 * nchunk);
  if (!k || !p || !a) {
    free(k), free(p), free(a);
    return 2;
  }
  float *scale = k + C, *meanf = k + 2 * C;
  memcpy(k, x, sizeof(float) * C); /* the sums are of x minus its first row: small squares, little cancelling */
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int i = 0; i < nchunk; i++) {
    long r0 = i * per, r1 = MIN(r0 + per, M);
    double *o = p + (long)i * C * 2;
    if (r0 < r1) stats_rows(x, r0, r1, C, k, o, o + C, a + (long)i * C * 2, a + (long)i * C * 2 + C);
  }
  for (long c = 0; c < C; c++) {
    double s1 = 0, s2 = 0;
    for (int i = 0; i < nchunk; i++) {
      s1 += p[(long)i * C * 2 + c];
      s2 += p[(long)i * C * 2 + C + c];
    }
    double m = s1 / M, var = s2 / M - m * m;
    if (var < 0) var = 0;
    double mean = m + k[c];
    float invstd = (float)(1.0 / sqrt(var + eps));
    mean_out[c] = (float)mean;
    invstd_out[c] = invstd;
    var_unbiased_out[c] = M > 1 ? (float)(var * M / (M - 1)) : (float)var;
    scale[c] = gamma[c] * invstd;
    meanf[c] = (float)mean;
  }
  fwd_fn f = FWD[act];
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int i = 0; i < nchunk; i++) {
    long r0 = i * per, r1 = MIN(r0 + per, M);
    if (r0 < r1) f(x, y, r0, r1, C, meanf, scale, beta, slope);
  }
  free(k), free(p), free(a);
  return 0;
}

int bn_act_backward(const float *gy, const float *x, float *gx, long M, long C, const float *gamma,
                    const float *beta, const float *mean, const float *invstd, int act, float slope, int nchunk,
                    int nthreads, float *dgamma, float *dbeta) {
  if (act < 0 || act > 3 || M < 1 || C < 1 || nchunk < 1) return 1;
  long per = (M + nchunk - 1) / nchunk;
  float *k = malloc(sizeof(float) * C * 4);
  double *p = calloc((size_t)nchunk * C * 2, sizeof(double));
  float *a = malloc(sizeof(float) * C * 2 * nchunk);
  if (!k || !p || !a) {
    free(k), free(p), free(a);
    return 2;
  }
  float *scale = k, *k1 = k + 2 * C, *k2 = k + 3 * C;
  for (long c = 0; c < C; c++) scale[c] = gamma[c] * invstd[c];
  bsum_fn s = BSUM[act];
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int i = 0; i < nchunk; i++) {
    long r0 = i * per, r1 = MIN(r0 + per, M);
    double *o = p + (long)i * C * 2;
    if (r0 < r1) s(gy, x, r0, r1, C, scale, beta, mean, slope, o, o + C, a + (long)i * C * 2, a + (long)i * C * 2 + C);
  }
  for (long c = 0; c < C; c++) {
    double s1 = 0, s2 = 0;
    for (int i = 0; i < nchunk; i++) {
      s1 += p[(long)i * C * 2 + c];
      s2 += p[(long)i * C * 2 + C + c];
    }
    dbeta[c] = (float)s1;
    dgamma[c] = (float)(s2 * invstd[c]);
    k1[c] = (float)(s1 / M);
    k2[c] = (float)(s2 / M * invstd[c] * invstd[c]);
  }
  bwd_fn b = BWD[act];
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int i = 0; i < nchunk; i++) {
    long r0 = i * per, r1 = MIN(r0 + per, M);
    if (r0 < r1) b(gy, x, gx, r0, r1, C, scale, beta, mean, k1, k2, slope);
  }
  free(k), free(p), free(a);
  return 0;
}
