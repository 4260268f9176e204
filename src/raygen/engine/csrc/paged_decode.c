/* Paged decode attention for CPU: one query token per sequence, keys and values read in place from
 * the block pool (no gather copy). Built on first use by raygen/engine/kernels.py with the system C
 * compiler (-O3 -march=native -fopenmp) and called through ctypes, so no torch headers are compiled.
 *
 * Layouts (element strides, row-major):
 *   q      token b at q + b*q_stride, head h at + h*D            (B tokens of H heads × D)
 *   kc, vc (num_blocks, bs, Hkv, D) of one layer
 *   tables (B, max_nb) block ids; ctx (B,) keys per sequence, the query's own key included
 *   out    token b at out + b*out_stride, head h at + h*D
 * One task per sequence streams its blocks (bs contiguous rows of Hkv × D) for all heads at once: one
 * task per (sequence, head) read 128-byte pieces 1 KB apart and reached only a third of the DRAM
 * bandwidth. Grouped-query attention: query head h reads KV head h / G. Online softmax over blocks,
 * fp32 accumulation for both fp32 and bf16 inputs.
 * window > 0 keeps only the last `window` keys (Mistral's sliding window).
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#define MAX_HD 8192 /* heads × head_dim of the queries */
#define MAX_H 64
#define MAX_BS 128
#ifndef PREFETCH
#define PREFETCH 3 /* blocks ahead */
#endif

static inline float ld_f32(const float *p) { return *p; }
static inline void st_f32(float *p, float x) { *p = x; }
static inline float ld_bf16(const uint16_t *p) {
    uint32_t u = ((uint32_t)*p) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline void st_bf16(uint16_t *p, float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even (inputs are finite) */
    *p = (uint16_t)(u >> 16);
}

#define DEFINE_KERNEL(NAME, T, LD, ST)                                                                   \
int NAME(const T *q, int64_t q_stride, const T *kc, const T *vc, const int64_t *tables,              \
         const int64_t *ctx, int64_t B, int64_t max_nb, int64_t bs, int64_t H, int64_t Hkv, int64_t D,    \
         float scale, int64_t window, T *out, int64_t out_stride, int nthreads) {                        \
    const int64_t G = H / Hkv, row = Hkv * D;                                                            \
    if (H * D > MAX_HD || H > MAX_H || bs > MAX_BS || G * Hkv != H) return -1;                           \
    _Pragma("omp parallel for schedule(dynamic, 1) num_threads(nthreads)")                                \
    for (int64_t b = 0; b < B; b++) {                                                                    \
        float qf[MAX_HD], acc[MAX_HD], s[MAX_H][MAX_BS], m[MAX_H], l[MAX_H];                             \
        for (int64_t h = 0; h < H; h++) {                                                                \
            for (int64_t d = 0; d < D; d++) { qf[h * D + d] = LD(q + b * q_stride + h * D + d) * scale; } \
            for (int64_t d = 0; d < D; d++) acc[h * D + d] = 0.f;                                        \
            m[h] = -3.0e38f; l[h] = 0.f;                                                                 \
        }                                                                                                \
        const int64_t n = ctx[b];                                                                        \
        const int64_t start = (window > 0 && n > window) ? n - window : 0;                               \
        for (int64_t t0 = start - start % bs; t0 < n; t0 += bs) {                                        \
            const int64_t blk = tables[b * max_nb + t0 / bs];                                            \
            const int64_t lo = t0 > start ? t0 : start, hi = t0 + bs < n ? t0 + bs : n;                  \
            if (t0 + PREFETCH * bs < n) { /* blocks ahead are elsewhere in the pool: ask early */       \
                const int64_t nxt = tables[b * max_nb + t0 / bs + PREFETCH];                             \
                const char *kn = (const char *)(kc + nxt * bs * row), *vn = (const char *)(vc + nxt * bs * row); \
                for (int64_t off = 0; off < bs * row * (int64_t)sizeof(T); off += 64) {                  \
                    __builtin_prefetch(kn + off); __builtin_prefetch(vn + off);                          \
                }                                                                                        \
            }                                                                                            \
            /* A block is bs contiguous rows of Hkv × D: stream it, every head at once. */               \
            for (int64_t t = lo; t < hi; t++) {                                                          \
                const T *kp = kc + (blk * bs + (t - t0)) * row;                                          \
                for (int64_t h = 0; h < H; h++) {                                                        \
                    const T *kr = kp + (h / G) * D;                                                      \
                    const float *qr = qf + h * D;                                                        \
                    float dot = 0.f;                                                                     \
                    for (int64_t d = 0; d < D; d++) dot += qr[d] * LD(kr + d);                           \
                    s[h][t - lo] = dot;                                                                  \
                }                                                                                        \
            }                                                                                            \
            for (int64_t h = 0; h < H; h++) {                                                            \
                float mx = m[h];                                                                         \
                for (int64_t t = 0; t < hi - lo; t++) mx = s[h][t] > mx ? s[h][t] : mx;                  \
                const float corr = expf(m[h] - mx);                                                      \
                float sum = 0.f;                                                                         \
                for (int64_t t = 0; t < hi - lo; t++) { s[h][t] = expf(s[h][t] - mx); sum += s[h][t]; }  \
                l[h] = l[h] * corr + sum;                                                                \
                m[h] = mx;                                                                               \
                if (corr != 1.f) for (int64_t d = 0; d < D; d++) acc[h * D + d] *= corr;                 \
            }                                                                                            \
            for (int64_t t = lo; t < hi; t++) {                                                          \
                const T *vp = vc + (blk * bs + (t - t0)) * row;                                          \
                for (int64_t h = 0; h < H; h++) {                                                        \
                    const T *vr = vp + (h / G) * D;                                                      \
                    float *ar = acc + h * D;                                                             \
                    const float p = s[h][t - lo];                                                        \
                    for (int64_t d = 0; d < D; d++) ar[d] += p * LD(vr + d);                             \
                }                                                                                        \
            }                                                                                            \
        }                                                                                                \
        for (int64_t h = 0; h < H; h++) {                                                                \
            T *op = out + b * out_stride + h * D;                                                        \
            const float inv = 1.f / l[h];                                                                \
            for (int64_t d = 0; d < D; d++) ST(op + d, acc[h * D + d] * inv);                            \
        }                                                                                                \
    }                                                                                                    \
    return 0;                                                                                            \
}

DEFINE_KERNEL(paged_decode_f32, float, ld_f32, st_f32)
DEFINE_KERNEL(paged_decode_bf16, uint16_t, ld_bf16, st_bf16)
