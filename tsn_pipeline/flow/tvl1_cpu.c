/* TV-L1's two hot loops for the CPU: one iteration (tvl1_step) and the warp's data terms
 * (tvl1_warp_terms). They compute what tvl1_torch.tvl1_step and tvl1_torch.warp_terms compute,
 * operation for operation in the same order (built with -ffp-contract=off, so no fused
 * multiply-adds), on contiguous float32 arrays of shape (n, h, w); only the per-pair sum of
 * squared updates is added up in another order. flow/native.py compiles this file once per
 * machine with the system's C compiler and calls it through ctypes; each call runs on one
 * thread (the flow stage runs one worker process per core).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define R restrict
#define FLT_EPS 1.1920928955078125e-07f /* FLT_EPSILON, as in tvl1_torch */

/* the thresholding step of the data term for residual rho and |grad I1w|^2 = g */
static inline float threshold(float rho, float g, float l_t)
{
    float lg = l_t * g;
    float gc = g > FLT_EPS ? g : FLT_EPS;
    float fi = g > FLT_EPS ? -rho / gc : 0.f;
    fi = rho > lg ? -l_t : fi;
    return rho < -lg ? l_t : fi;
}

/* one row of the primal update: u + TH(rho) + theta * div p, with p(-1) = 0; up12/up22 are
 * the previous row of p12/p22 (a row of zeros on the first row); adds the squared update to
 * *e. The squares go through sq (w floats) and are summed in 8 fixed partial sums, so the
 * total is the same bits whatever the vector width of the CPU (SSE, AVX2, AVX-512, NEON). */
static void primal_row(int64_t w, const float *R u1, const float *R u2, const float *R p11,
                       const float *R p12, const float *R p21, const float *R p22,
                       const float *R up12, const float *R up22, const float *R I1wx,
                       const float *R I1wy, const float *R grad, const float *R rho_c,
                       float l_t, float theta, float *R n1, float *R n2, float *R sq,
                       double *e)
{
#pragma omp simd
    for (int64_t x = 0; x < w; x++) {
        float left11 = x ? p11[x - 1] : 0.f, left21 = x ? p21[x - 1] : 0.f;
        float rho = rho_c[x] + I1wx[x] * u1[x] + I1wy[x] * u2[x];
        float fi = threshold(rho, grad[x], l_t);
        float div1 = p11[x] - left11 + p12[x] - up12[x];
        float div2 = p21[x] - left21 + p22[x] - up22[x];
        float a = u1[x] + fi * I1wx[x] + theta * div1;
        float b = u2[x] + fi * I1wy[x] + theta * div2;
        n1[x] = a;
        n2[x] = b;
        float d1 = a - u1[x], d2 = b - u2[x];
        sq[x] = d1 * d1 + d2 * d2;
    }
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int64_t x = 0;
    for (; x + 8 <= w; x += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += sq[x + j];
    for (int j = 0; x < w; x++, j++)
        acc[j] += sq[x];
    *e += (double)(((acc[0] + acc[1]) + (acc[2] + acc[3])) +
                   ((acc[4] + acc[5]) + (acc[6] + acc[7])));
}

/* one row of the dual update from the new u (forward differences, 0 on the last column and,
 * ``last`` set, on the last row, where down1/down2 are not read) */
static void dual_row(int64_t w, int last, const float *R n1, const float *R n2,
                     const float *R down1, const float *R down2, const float *R p11,
                     const float *R p12, const float *R p21, const float *R p22, float taut,
                     float *R q11, float *R q12, float *R q21, float *R q22)
{
#define DUAL(U1X, U2X)                                                                        \
    {                                                                                         \
        float u1x = (U1X), u2x = (U2X);                                                       \
        float u1y = last ? 0.f : down1[x] - n1[x], u2y = last ? 0.f : down2[x] - n2[x];      \
        float g1 = 1.f + taut * sqrtf(u1x * u1x + u1y * u1y);                                 \
        float g2 = 1.f + taut * sqrtf(u2x * u2x + u2y * u2y);                                 \
        q11[x] = (p11[x] + taut * u1x) / g1;                                                  \
        q12[x] = (p12[x] + taut * u1y) / g1;                                                  \
        q21[x] = (p21[x] + taut * u2x) / g2;                                                  \
        q22[x] = (p22[x] + taut * u2y) / g2;                                                  \
    }
    int64_t x;
#pragma omp simd
    for (x = 0; x < w - 1; x++)
        DUAL(n1[x + 1] - n1[x], n2[x + 1] - n2[x])
    x = w - 1;
    DUAL(0.f, 0.f)
#undef DUAL
}

/* One TV-L1 iteration for n pairs: (u1, u2, p11, p12, p21, p22) -> (o1, o2, q11, q12, q21,
 * q22), the outputs separate arrays; err[k]: pair k's sum of squared updates of u.
 * Returns 0, or -1 when out of memory. */
int tvl1_step(int64_t n, int64_t h, int64_t w, const float *u1, const float *u2,
              const float *p11, const float *p12, const float *p21, const float *p22,
              const float *I1wx, const float *I1wy, const float *grad, const float *rho_c,
              float l_t, float theta, float taut, float *o1, float *o2, float *q11,
              float *q12, float *q21, float *q22, double *err)
{
    const int64_t hw = h * w;
    if (h <= 0 || w <= 0) { /* empty images: nothing to update */
        for (int64_t k = 0; k < n; k++)
            err[k] = 0.0;
        return 0;
    }
    float *zeros = calloc(2 * (size_t)w, sizeof(float)), *sq = zeros + w;
    if (!zeros)
        return -1;
    for (int64_t k = 0; k < n; k++) {
        double e = 0.0;
        for (int64_t y = 0; y < h; y++) {
            const int64_t r = k * hw + y * w;
            primal_row(w, u1 + r, u2 + r, p11 + r, p12 + r, p21 + r, p22 + r,
                       y ? p12 + r - w : zeros, y ? p22 + r - w : zeros, I1wx + r, I1wy + r,
                       grad + r, rho_c + r, l_t, theta, o1 + r, o2 + r, sq, &e);
        }
        err[k] = e;
        for (int64_t y = 0; y < h; y++) {
            const int64_t r = k * hw + y * w, last = y == h - 1, down = last ? 0 : w;
            dual_row(w, (int)last, o1 + r, o2 + r, o1 + r + down, o2 + r + down, p11 + r,
                     p12 + r, p21 + r, p22 + r, taut, q11 + r, q12 + r, q21 + r, q22 + r);
        }
    }
    free(zeros);
    return 0;
}

/* Keys cubic weights of the taps at offsets -1, 0, 1, 2 for the fraction t */
static inline void cubic_weights(float t, float a, float c[4])
{
    float t1 = t + 1.f, t2 = 1.f - t;
    c[0] = ((a * t1 - 5.f * a) * t1 + 8.f * a) * t1 - 4.f * a;
    c[1] = ((a + 2.f) * t - (a + 3.f)) * t * t + 1.f;
    c[2] = ((a + 2.f) * t2 - (a + 3.f)) * t2 * t2 + 1.f;
    c[3] = 1.f - c[0] - c[1] - c[2];
}

/* floor(v) - 1 as an index: far-off (or NaN) positions are held where every tap is clamped
 * to the border anyway, so that the conversion to an integer is always defined */
static inline int64_t first_tap(float floor_v)
{
    const float far = 1073741824.f; /* 2^30 */
    float f = !(floor_v >= -far) ? -far : (floor_v > far ? far : floor_v);
    return (int64_t)f - 1;
}

static inline int64_t clamp_index(int64_t i, int64_t n)
{
    return i < 0 ? 0 : (i >= n ? n - 1 : i);
}

/* The backward warp of TV-L1: sample the planes (I1, I1x, I1y) of stack (n, 3, h, w) at
 * (x + u1, y + u2) by bicubic interpolation and return the linearised data term's constants:
 * I1wx, I1wy, grad = |grad I1w|^2 and rho_c = I1w - I1wx * u1 - I1wy * u2 - i0.
 * cpu_interp 0: OpenCV CUDA's warp (a = -0.5, taps clamped to the image, weights normalised
 * by their sum); 1: cv2.remap INTER_CUBIC (a = -0.75, coordinates rounded to 1/32 px, taps
 * outside the image read 0). */
void tvl1_warp_terms(int64_t n, int64_t h, int64_t w, const float *R stack,
                     const float *R i0, const float *R u1, const float *R u2, int cpu_interp,
                     float *R I1wx, float *R I1wy, float *R grad, float *R rho_c)
{
    const int64_t hw = h * w;
    const float a = cpu_interp ? -0.75f : -0.5f;
    if (n <= 0 || h <= 0 || w <= 0)
        return;
    for (int64_t k = 0; k < n; k++) {
        const float *planes = stack + 3 * k * hw;
        for (int64_t y = 0; y < h; y++) {
            for (int64_t x = 0; x < w; x++) {
                const int64_t i = k * hw + y * w + x;
                float wx = (float)x + u1[i], wy = (float)y + u2[i];
                if (cpu_interp) {
                    wx = rintf(wx * 32.f) / 32.f;
                    wy = rintf(wy * 32.f) / 32.f;
                }
                float fx = floorf(wx), fy = floorf(wy), cx[4], cy[4];
                cubic_weights(wx - fx, a, cx);
                cubic_weights(wy - fy, a, cy);
                const int64_t ix0 = first_tap(fx), iy0 = first_tap(fy);
                float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f, wsum = 0.f;
                for (int j = 0; j < 4; j++) {
                    const int64_t iy = iy0 + j, row = clamp_index(iy, h) * w;
                    const int inside_y = iy >= 0 && iy < h;
                    for (int m = 0; m < 4; m++) {
                        const int64_t ix = ix0 + m, at = row + clamp_index(ix, w);
                        float wgt = cy[j] * cx[m];
                        if (cpu_interp)
                            wgt = wgt * (float)(inside_y && ix >= 0 && ix < w);
                        else
                            wsum = wsum + wgt;
                        acc0 = acc0 + wgt * planes[at];
                        acc1 = acc1 + wgt * planes[hw + at];
                        acc2 = acc2 + wgt * planes[2 * hw + at];
                    }
                }
                if (!cpu_interp) {
                    acc0 = acc0 / wsum;
                    acc1 = acc1 / wsum;
                    acc2 = acc2 / wsum;
                }
                I1wx[i] = acc1;
                I1wy[i] = acc2;
                grad[i] = acc1 * acc1 + acc2 * acc2;
                rho_c[i] = acc0 - acc1 * u1[i] - acc2 * u2[i] - i0[i];
            }
        }
    }
}
