/* One decode step of textenv's GPT (textenv/model.py) on the CPU, every layer in one call.

   textenv/fused_decode.py compiles this file with the system's C compiler and calls
   `decode_step` once per generated token, then `sample_rows` to draw the next tokens.
   decode_step computes, for each live row, what GPT.decode_step computes (the same
   formulas in float32; the results equal up to rounding):

       x = tok_emb[token] + pos_emb[pos]
       for each block:  x += proj(attention(qkv(ln1(x))))   the new key and value go to slot L
                        x += fc2(gelu(fc(ln2(x))))
       logits = ln_f(x) @ lm_head^T                          (lm_head is tok_emb when tied)

   Why one call: eager PyTorch runs such a step as ~120 small ops, each a dispatch from Python
   and a round trip of its result through memory. Here the rows are cut into tiles of at most
   TILE rows; a thread takes a tile through the whole model while its activations stay in the
   core's cache. Rows are independent, so tiles need no synchronisation.

   Layouts (all float32, row-major):
     weights of a linear layer are stored transposed, (in, out), and the output width padded
     to a multiple of VW with zero columns (the lm_head's, for the vocabulary);
     k_cache, v_cache (n_layer, rows, n_head, max_len, head_dim) with the given strides;
     bias[row * bias_row_stride + head * bias_head_stride + slot] is added to the attention
     scores: 0 where a key may be attended, -inf where not.
*/
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>

/* Floats per SIMD vector: a 512-bit register with AVX-512, else 256 bits. -DVW=8 or 16
   overrides it (the tests build the other width too; GCC splits or pads the vectors). */
#ifndef VW
#if defined(__AVX512F__)
#define VW 16
#else
#define VW 8
#endif
#endif
typedef float vec __attribute__((vector_size(VW * sizeof(float))));
typedef int32_t ivec __attribute__((vector_size(VW * sizeof(int32_t))));  /* masks, bits */

#define RB 4     /* rows of a register block in `linear` */
#define NB 4     /* vectors of a register block in `linear`: RB x NB accumulators */
#define TILE 128  /* most rows a thread takes through the model at once */
#define ROWS (TILE + RB)  /* rows of a thread's scratch: a tile, rounded up to RB */

static inline vec load(const float *p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vec v) { memcpy(p, &v, sizeof v); }
static inline vec splat(float x) { return x - (vec){0}; }  /* x - 0 == x: a bare broadcast */
static inline ivec splat_int(int32_t x) { return x - (ivec){0}; }

typedef struct {
    const float *ln1_w, *ln1_b;    /* (C,) each; a NULL bias counts as 0 */
    const float *qkv_w, *qkv_b;    /* (C, 3C), (3C,) */
    const float *proj_w, *proj_b;  /* (C, C), (C,) */
    const float *ln2_w, *ln2_b;    /* (C,) */
    const float *fc_w, *fc_b;      /* (C, 4C), (4C,) */
    const float *fc2_w, *fc2_b;    /* (4C, C), (C,) */
} Layer;

typedef struct {
    int n_layer, n_head, n_embd, vocab, vocab_padded;  /* vocab_padded: a multiple of VW */
    const float *tok_emb, *pos_emb;                    /* (V, C), (block_size, C) */
    const float *lnf_w, *lnf_b;                        /* (C,) */
    const float *head_w;                               /* (C, vocab_padded) */
    const Layer *layers;                               /* (n_layer,) */
} Model;

/* Floats of scratch one thread needs: a tile's activations and one head's scores. */
int64_t workspace_floats(int n_embd, int vocab_padded, int max_len) {
    return (int64_t)ROWS * (7 * n_embd + vocab_padded) + max_len;
}

int simd_width(void) { return VW; }

/* out[r, :N] = b + x[r, :K] @ w (K, N) for r < rows; accumulate: out[r] += that instead
   (a residual connection). rows: a multiple of RB; N: a multiple of VW.
   Loop order: a panel of NB vectors of w's columns is taken down every row of the tile while
   it sits in the L1/L2 cache; each RB x NB block of outputs stays in registers for all K.
   Rounding: the products are summed in blocks of KB inputs, then the blocks' sums, and a
   residual is added last, as x + (b + x w). Summing 512 products one by one, or onto a
   residual several times their size, rounds each addition at the larger running total's
   scale: logits would then stray from an exact (float64) forward further than PyTorch's. */
#define KB 32
static void linear(float *out, const float *x, int rows, int K, int N,
                   const float *w, const float *b, int accumulate) {
    int n = 0;
    for (; n + NB * VW <= N; n += NB * VW) {
        for (int r = 0; r < rows; r += RB) {
            vec acc[RB][NB];
            for (int i = 0; i < RB; i++)
                for (int j = 0; j < NB; j++)
                    acc[i][j] = b ? load(b + n + j * VW) : splat(0.0f);
            const float *xr = x + (int64_t)r * K;
            for (int k0 = 0; k0 < K; k0 += KB) {
                vec part[RB][NB];
                for (int i = 0; i < RB; i++)
                    for (int j = 0; j < NB; j++) part[i][j] = splat(0.0f);
                const int k1 = k0 + KB < K ? k0 + KB : K;
                for (int k = k0; k < k1; k++) {
                    const float *wk = w + (int64_t)k * N + n;
                    vec wv[NB];
#pragma GCC unroll 8
                    for (int j = 0; j < NB; j++) wv[j] = load(wk + j * VW);
#pragma GCC unroll 8
                    for (int i = 0; i < RB; i++) {
                        vec xi = splat(xr[i * K + k]);
#pragma GCC unroll 8
                        for (int j = 0; j < NB; j++) part[i][j] += xi * wv[j];
                    }
                }
                for (int i = 0; i < RB; i++)
                    for (int j = 0; j < NB; j++) acc[i][j] += part[i][j];
            }
            /* The residual is added last, as x + (b + x W): summed onto it, the products
               would each be rounded at the residual's larger scale. */
            for (int i = 0; i < RB; i++)
                for (int j = 0; j < NB; j++) {
                    float *o = out + (int64_t)(r + i) * N + n + j * VW;
                    store(o, accumulate ? load(o) + acc[i][j] : acc[i][j]);
                }
        }
    }
    for (; n < N; n += VW) {  /* the last columns, one vector at a time */
        for (int r = 0; r < rows; r += RB) {
            vec acc[RB];
            for (int i = 0; i < RB; i++) acc[i] = b ? load(b + n) : splat(0.0f);
            const float *xr = x + (int64_t)r * K;
            for (int k0 = 0; k0 < K; k0 += KB) {
                vec part[RB];
                for (int i = 0; i < RB; i++) part[i] = splat(0.0f);
                for (int k = k0; k < k0 + KB && k < K; k++) {
                    vec wk = load(w + (int64_t)k * N + n);
                    for (int i = 0; i < RB; i++) part[i] += splat(xr[i * K + k]) * wk;
                }
                for (int i = 0; i < RB; i++) acc[i] += part[i];
            }
            for (int i = 0; i < RB; i++) {
                float *o = out + (int64_t)(r + i) * N + n;
                store(o, accumulate ? load(o) + acc[i] : acc[i]);
            }
        }
    }
}

/* LayerNorm over the last dimension (eps 1e-5, as torch.nn.LayerNorm). */
static void layer_norm(float *out, const float *x, int rows, int C,
                       const float *w, const float *b) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (int64_t)r * C;
        float *o = out + (int64_t)r * C;
        float mean = 0.0f, var = 0.0f;
#pragma omp simd reduction(+ : mean)
        for (int c = 0; c < C; c++) mean += xr[c];
        mean /= C;
#pragma omp simd reduction(+ : var)
        for (int c = 0; c < C; c++) var += (xr[c] - mean) * (xr[c] - mean);
        float inv = 1.0f / sqrtf(var / C + 1e-5f);
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = (xr[c] - mean) * inv * w[c] + (b ? b[c] : 0.0f);
    }
}

/* e^x lane by lane for x <= 88.7, to about 1 ulp: e^x = 2^n e^f with n = round(x / ln 2),
   |f| <= ln(2)/2, e^f by Cephes' expf polynomial. Below -87.3 it returns 2^-126 * e^f (about
   1e-38). Written on vectors, not left to the compiler: GCC does not vectorise the scalar
   form's selects and bit casts for AVX2, and GELU and the softmaxes then run 8x slower. */
static inline vec exp_vec(vec x) {
    const vec lowest = splat(-87.3f);
    const ivec below = x < lowest;  /* all ones where x < -87.3 */
    x = (vec)((below & (ivec)lowest) | (~below & (ivec)x));
    const vec n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  /* round to nearest */
    const vec f = x - n * 0.693359375f + n * 2.12194440e-4f;      /* ln 2 in two parts */
    vec p = splat(1.9875691500e-4f);
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    p = p * f * f + f + 1.0f;
    const ivec scale = (__builtin_convertvector(n, ivec) + 127) << 23;  /* 2^n's bits */
    return p * (vec)scale;
}

/* GELU with the exact erf, as torch.nn.GELU(): 0.5 x (1 + erf(x / sqrt 2)); erf by
   Abramowitz and Stegun 7.1.26 (absolute error <= 1.5e-7), the formula ATen's vectorised
   CPU kernel uses. In place; n a multiple of VW. */
static void gelu(float *x, int64_t n) {
    const ivec sign = splat_int(INT32_MIN);  /* a float's sign bit */
    for (int64_t i = 0; i < n; i += VW) {
        const vec v = load(x + i);
        const vec z = v * 0.70710678f;
        const vec a = (vec)((ivec)z & ~sign);  /* |z| */
        const vec t = 1.0f / (1.0f + 0.3275911f * a);
        const vec poly = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t
                           - 0.284496736f) * t + 0.254829592f) * t;
        const vec erf_a = 1.0f - poly * exp_vec(-a * a);
        const vec erf_z = (vec)((ivec)erf_a ^ ((ivec)z & sign));  /* erf is odd */
        store(x + i, 0.5f * v * (1.0f + erf_z));
    }
}

/* e^(x - top) lane by lane, exactly 0 where x is -inf. */
static inline vec exp_minus(vec x, float top) {
    const ivec masked = x == -INFINITY;
    return (vec)(~masked & (ivec)exp_vec(x - top));
}

/* p[i] = e^(x[i] - max x) for i < n, exactly 0 where x[i] is -inf: a softmax before
   normalising. Returns the sum of p and puts max x in *top (finite: some x[i] must be).
   p may be x. */
static float exp_shifted(float *p, const float *x, int n, float *top) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    vec sums = splat(0.0f);
    int i = 0;
    for (; i + VW <= n; i += VW) {
        const vec e = exp_minus(load(x + i), m);
        store(p + i, e);
        sums += e;
    }
    if (i < n) {  /* the last n - i, in one vector padded with -inf (whose e is 0) */
        float tail[VW];
        for (int j = 0; j < VW; j++) tail[j] = i + j < n ? x[i + j] : -INFINITY;
        const vec e = exp_minus(load(tail), m);
        sums += e;
        store(tail, e);
        memcpy(p + i, tail, sizeof(float) * (n - i));
    }
    float total = 0.0f;
    for (int j = 0; j < VW; j++) total += sums[j];
    *top = m;
    return total;
}

/* y (D,) = softmax(scale * K q + bias) V over the first S slots of one row's head:
   K, V (S, D) with rows `stride` floats apart; bias (S,): 0 or -inf; scores (S,) scratch. */
static void attend(float *y, const float *q, const float *K, const float *V, int64_t stride,
                   const float *bias, int S, int D, float scale, float *scores) {
    for (int j = 0; j < S; j++) {
        const float *kj = K + j * stride;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < D; d++) dot += q[d] * kj[d];
        scores[j] = dot * scale + bias[j];
    }
    float top;  /* the last slot (this step's) is never masked */
    const float total = exp_shifted(scores, scores, S, &top);
    for (int d = 0; d < D; d++) y[d] = 0.0f;
    for (int j = 0; j < S; j++) {
        const float p = scores[j] / total;
        if (p == 0.0f) continue;
        const float *vj = V + j * stride;
#pragma omp simd
        for (int d = 0; d < D; d++) y[d] += p * vj[d];
    }
}

/* One step of n rows. rows (n,): the cache row each batch slot reads and writes (the batch
   may be a subset of the cache's rows, in any order); tokens (n,): the token fed to each.
   pos and key_mask are per cache row: a row's token takes position pos[row], which then
   grows by one, and key_mask[row, L] becomes 1 (the slot now holds a real key).
   kv_strides: strides of k_cache and v_cache in floats, (layer, row, head, slot); the
   slot's head_dim floats are contiguous. logits (n, vocab). work: n_threads blocks of
   work_stride >= workspace_floats(n_embd, vocab_padded, L + 1) floats. */
void decode_step(const Model *m, int n, const int64_t *rows, const int64_t *tokens,
                 int64_t *pos, uint8_t *key_mask, int64_t key_mask_row_stride,
                 float *k_cache, float *v_cache, const int64_t *kv_strides, int L,
                 const float *bias, int64_t bias_row_stride, int64_t bias_head_stride,
                 float *logits, float *work, int64_t work_stride, int n_threads) {
    const int C = m->n_embd, H = m->n_head, D = C / H, Vp = m->vocab_padded;
    const float scale = 1.0f / sqrtf((float)D);
    /* Each thread gets the same number of tiles of at most TILE rows (a multiple of RB). */
    const int per_thread = (n + n_threads - 1) / n_threads;
    const int tiles_per_thread = (per_thread + TILE - 1) / TILE;
    int tile = (per_thread + tiles_per_thread - 1) / tiles_per_thread;
    tile = (tile + RB - 1) / RB * RB;
    const int n_tiles = (n + tile - 1) / tile;

#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int t = 0; t < n_tiles; t++) {
        const int first = t * tile;
        const int real = n - first < tile ? n - first : tile;  /* rows of this tile */
        const int T = (real + RB - 1) / RB * RB;               /* padded for `linear` */
        float *x = work + omp_get_thread_num() * work_stride;  /* (T, C) residual stream */
        float *h = x + ROWS * C;          /* (T, C) a LayerNorm's output */
        float *y = h + ROWS * C;          /* (T, C) attention's output */
        float *big = y + ROWS * C;        /* (T, 4C) qkv, then the MLP's hidden layer */
        float *out = big + ROWS * 4 * C;  /* (T, Vp) logits */
        float *scores = out + ROWS * Vp;  /* (L + 1,) one head's attention scores */

        memset(x, 0, sizeof(float) * T * C);  /* the padding rows stay finite */
        for (int i = 0; i < real; i++) {
            const int64_t row = rows[first + i];
            const float *te = m->tok_emb + tokens[first + i] * C;
            const float *pe = m->pos_emb + pos[row] * C;
            for (int c = 0; c < C; c++) x[i * C + c] = te[c] + pe[c];
        }
        for (int l = 0; l < m->n_layer; l++) {
            const Layer *ly = &m->layers[l];
            layer_norm(h, x, T, C, ly->ln1_w, ly->ln1_b);
            linear(big, h, T, C, 3 * C, ly->qkv_w, ly->qkv_b, 0);  /* (T, 3C): q | k | v */
            memset(y, 0, sizeof(float) * T * C);  /* the padding rows too */
            for (int i = 0; i < real; i++) {
                const int64_t row = rows[first + i];
                const float *q = big + (int64_t)i * 3 * C;
                for (int hd = 0; hd < H; hd++) {
                    const int64_t at = l * kv_strides[0] + row * kv_strides[1] + hd * kv_strides[2];
                    float *kc = k_cache + at, *vc = v_cache + at;
                    const float *qh = q + hd * D;
                    memcpy(kc + L * kv_strides[3], q + C + hd * D, sizeof(float) * D);
                    memcpy(vc + L * kv_strides[3], q + 2 * C + hd * D, sizeof(float) * D);
                    const float *bh = bias + row * bias_row_stride + hd * bias_head_stride;
                    /* Ask for the next head's keys and values now: reading many short runs
                       of the cache, the core otherwise waits on memory at each one's start. */
                    const int64_t next = hd + 1 < H ? at + kv_strides[2]
                        : i + 1 < real ? l * kv_strides[0] + rows[first + i + 1] * kv_strides[1]
                        : -1;
                    if (next >= 0)
                        for (int64_t b = 0; b < (int64_t)(L + 1) * kv_strides[3]; b += 16) {
                            __builtin_prefetch(k_cache + next + b);
                            __builtin_prefetch(v_cache + next + b);
                        }
                    attend(y + i * C + hd * D, qh, kc, vc, kv_strides[3], bh, L + 1, D, scale,
                           scores);
                }
            }
            linear(x, y, T, C, C, ly->proj_w, ly->proj_b, 1);        /* x += proj(y) */
            layer_norm(h, x, T, C, ly->ln2_w, ly->ln2_b);
            linear(big, h, T, C, 4 * C, ly->fc_w, ly->fc_b, 0);       /* (T, 4C) */
            gelu(big, (int64_t)T * 4 * C);
            linear(x, big, T, 4 * C, C, ly->fc2_w, ly->fc2_b, 1);     /* x += fc2(...) */
        }
        layer_norm(h, x, T, C, m->lnf_w, m->lnf_b);
        linear(out, h, T, C, Vp, m->head_w, NULL, 0);
        for (int i = 0; i < real; i++)
            memcpy(logits + (int64_t)(first + i) * m->vocab, out + (int64_t)i * Vp,
                   sizeof(float) * m->vocab);
    }
    for (int i = 0; i < n; i++) {  /* the token is in: its row's next position, its key */
        key_mask[rows[i] * key_mask_row_stride + L] = 1;
        pos[rows[i]] += 1;
    }
}

/* Sample one token per row from softmax(logits / temperature), as
   textenv.model.sample_from_logits does without top-k or top-p: the token is where the row's
   cumulative distribution first exceeds its uniform draw times its total. A token at -inf
   has probability exactly 0 and is never drawn.
   logits (n, V): row i belongs to prompt row rows[i] and uses the draw uniform[rows[i]];
   tokens and logprobs (n_total,) get its token and log-prob there, and pad_id and 0 at the
   prompt rows not in `rows`. work: 2V floats of scratch. */
void sample_rows(const float *logits, int n, int V, const int64_t *rows, const float *uniform,
                 float temperature, int64_t pad_id, int n_total, int64_t *tokens,
                 float *logprobs, float *work) {
    for (int r = 0; r < n_total; r++) tokens[r] = pad_id, logprobs[r] = 0.0f;
    for (int i = 0; i < n; i++) {
        const float *row = logits + (int64_t)i * V;
        float *x = work + V;  /* the row's logits / temperature */
        if (temperature == 1.0f)
            memcpy(x, row, sizeof(float) * V);
        else
#pragma omp simd
            for (int v = 0; v < V; v++) x[v] = row[v] / temperature;
        float top;
        const float total = exp_shifted(work, x, V, &top);  /* unnormalised probabilities */
        float cumulative = 0.0f, target = uniform[rows[i]] * total;
        int token = -1, last = 0;  /* last: the last token of positive probability */
        for (int v = 0; v < V; v++) {
            cumulative += work[v];
            if (work[v] > 0.0f) last = v;
            if (cumulative > target) { token = v; break; }
        }
        if (token < 0) token = last;  /* the target rounded up to the total */
        tokens[rows[i]] = token;
        logprobs[rows[i]] = x[token] - top - logf(total);
    }
}
