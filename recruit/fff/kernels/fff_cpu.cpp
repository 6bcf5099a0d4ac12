// Fused UltraFastBERT FFF inference on the CPU: every level of every tree in one call.
//
// For each token (OpenMP over tokens) and each tree k: n = 0; for level 0..depth:
//   a = x . w_in[k*M + n] + b_in[k*M + n];  out += GELU(a) * w_out_t[k*M + n];  n = 2n + 1 + (a > 0)
// with M = 2^(depth+1) - 1 nodes per tree in heap order. GELU is the erf form: std::erf in double, and in float a
// vectorised erf accurate to 1.5e-7 (gelu_vector).
//
// Only the rows on each token's path are read (2 * (depth+1) * K rows), so the cost is O(depth * D) per
// token instead of O(width * D). A token first walks its trees (a chain of dependent dot products), then
// combines the visited output rows in one pass that writes each output element once. The loops use
// explicit SIMD vectors (GCC/Clang vector extensions, no -ffast-math needed); on x86-64 they are compiled for
// several ISA levels: 64-byte vectors for x86-64-v4 (AVX-512), 32-byte vectors for x86-64-v3 (AVX2) and the
// baseline, picked for the CPU at run time, so the build is safe to reuse on any x86-64 machine. Storage types:
// float, double, bfloat16 (computed in float). No torch headers: the entry points take raw pointers (called
// through ctypes), which keeps the first-use build to seconds. Each thread walks a few tokens in lock-step (as
// many as keep their rows in L1; a lone token's trees side by side) and prefetches each walk's next row as soon
// as it is known, so several dependent row fetches overlap; on a 2-core EPYC VM with inputs that miss the cache
// this cut hidden 768, depth 11 from 431 to 358 µs at 128 tokens and left hidden 4096 unchanged. Measured and
// dropped there: prefetching both children of a lone token (slower at batch 1).
//
// Register use matters as much as memory. The combine pass once kept its accumulators in an array that
// was copied out with one memcpy: GCC then zeroed the array with `rep stos` and spilled it to the stack
// each 32 elements. Named accumulators stored one by one, eight of them (two FMA pipes, four cycles of
// latency), helpers forced inline into every ISA clone (otherwise a clone calls a baseline SSE copy), and
// prefetching only a row's first lines: on the same VM (C++ harness, 2 threads, 32 cycled input batches)
// depth 11 at 128 tokens went from 318 to 219 us, depth 3 from 68 to 38 us, depth 0 from 38 to 14 us.

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

// On x86-64 with GCC each hot loop is built twice: with 64-byte vectors for x86-64-v4 (AVX-512) and with 32-byte
// vectors cloned for x86-64-v3 (AVX2) and the baseline; the first call picks by the CPU (see wide_vectors).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FFF_X86_CLONES 1
#define FFF_WIDE __attribute__((target("arch=x86-64-v4")))
#define FFF_NARROW __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FFF_X86_CLONES 0
#define FFF_WIDE
#define FFF_NARROW
#endif

// The helpers below must be inlined into each ISA clone of the hot loops, or they run as baseline code.
#define FFF_INLINE inline __attribute__((always_inline))

// Explicit SIMD through GCC/Clang vector extensions: VB-byte vectors of A, VB = 64 (one AVX-512 register) or
// 32 (one AVX2 register, two SSE registers in the baseline clone); eight independent accumulators per loop.
template <typename A, int VB>
struct Simd {
  typedef A V __attribute__((vector_size(VB)));
  static constexpr int kWidth = VB / sizeof(A);
};

// W elements at p as a vector of A (a bfloat16 -> float conversion is a shift).
template <int VB, typename T, typename A>
FFF_INLINE typename Simd<A, VB>::V loadv(const T* p) {
  typename Simd<A, VB>::V v;
  if constexpr (std::is_same_v<T, A>) {
    std::memcpy(&v, p, sizeof(v));
  } else {
    using H = typename Simd<uint16_t, VB / 2>::V;
    using U = typename Simd<uint32_t, VB>::V;
    H h;
    std::memcpy(&h, p, sizeof(h));
    const U u = __builtin_convertvector(h, U) << 16;
    std::memcpy(&v, &u, sizeof(v));
  }
  return v;
}

FFF_INLINE float load(float v) { return v; }
FFF_INLINE double load(double v) { return v; }
FFF_INLINE float load(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// res[q] = x[q] . w[q] over n elements for the R rows q < R, read side by side: R streams in flight instead of
// one, so a core fetches R rows from beyond its caches at once instead of waiting on each in turn. Each row
// has C accumulators and the same summation order whatever R is, so a token's result does not depend on how
// many tokens share its group (the output is the same in any batch). C = 4 in the 64-byte build (16 of its 32
// registers at R = 4; 3–7% faster than 2 at hidden 768, 128 and 1024 tokens, on the Zen 5 VM), 2 in the 32-byte
// one (8 of AVX2's 16).
template <int R, int VB, typename T, typename A>
FFF_INLINE void dots_impl(const A* const* x, const T* const* w, int64_t n, A* res) {
  using V = typename Simd<A, VB>::V;
  constexpr int W = Simd<A, VB>::kWidth, C = VB == 64 ? 4 : 2;
  V acc[R][C] = {};
  int64_t i = 0;
  for (; i + C * W <= n; i += C * W) {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
#pragma GCC unroll 8
      for (int q = 0; q < R; ++q) {
        acc[q][c] += loadv<VB, A, A>(x[q] + i + c * W) * loadv<VB, T, A>(w[q] + i + c * W);
      }
    }
  }
#pragma GCC unroll 8
  for (int q = 0; q < R; ++q) {
    A s = A(0);
    for (int64_t t = i; t < n; ++t) s += x[q][t] * load(w[q][t]);
    V v = acc[q][0];
#pragma GCC unroll 8
    for (int c = 1; c < C; ++c) v += acc[q][c];
    for (int j = 0; j < W; ++j) s += v[j];
    res[q] = s;
  }
}

// out[0:n] = sum over p < count of c[p] * w[p][0:n]: the visited output rows, combined in one pass (each
// output element written once; the count row streams are read side by side). The accumulators are named
// vectors, stored one by one, so that they stay in registers.
template <typename V, typename A>
FFF_INLINE void storev(A* p, V v) {
  std::memcpy(p, &v, sizeof(v));
}

template <int VB, typename T, typename A>
FFF_INLINE void combine_impl(A* out, const A* c, const T* const* w, int64_t count, int64_t n) {
  using V = typename Simd<A, VB>::V;
  constexpr int W = Simd<A, VB>::kWidth;
  int64_t i = 0;
  for (; i + 8 * W <= n; i += 8 * W) {
    V a0 = {}, a1 = {}, a2 = {}, a3 = {}, a4 = {}, a5 = {}, a6 = {}, a7 = {};
    for (int64_t p = 0; p < count; ++p) {
      const T* r = w[p] + i;
      const A k = c[p];
      a0 += k * loadv<VB, T, A>(r);
      a1 += k * loadv<VB, T, A>(r + W);
      a2 += k * loadv<VB, T, A>(r + 2 * W);
      a3 += k * loadv<VB, T, A>(r + 3 * W);
      a4 += k * loadv<VB, T, A>(r + 4 * W);
      a5 += k * loadv<VB, T, A>(r + 5 * W);
      a6 += k * loadv<VB, T, A>(r + 6 * W);
      a7 += k * loadv<VB, T, A>(r + 7 * W);
    }
    storev(out + i, a0), storev(out + i + W, a1), storev(out + i + 2 * W, a2), storev(out + i + 3 * W, a3);
    storev(out + i + 4 * W, a4), storev(out + i + 5 * W, a5), storev(out + i + 6 * W, a6);
    storev(out + i + 7 * W, a7);
  }
  for (; i + W <= n; i += W) {
    V a = {};
    for (int64_t p = 0; p < count; ++p) a += c[p] * loadv<VB, T, A>(w[p] + i);
    storev(out + i, a);
  }
  for (; i < n; ++i) {
    A s = A(0);
    for (int64_t p = 0; p < count; ++p) s += c[p] * load(w[p][i]);
    out[i] = s;
  }
}

// body(i, r) over [begin, end) in runs of r = 4, 2 or 1 consecutive items: the row counts dots() reads side by side.
template <typename F>
FFF_INLINE void in_runs_of_four(int64_t begin, int64_t end, F&& body) {
  for (int64_t i = begin; i < end;) {
    const int r = end - i >= 4 ? 4 : end - i >= 2 ? 2 : 1;
    body(i, r);
    i += r;
  }
}

template <typename A>
inline A gelu(A a) {
  return A(0.5) * a * (A(1) + std::erf(a * A(0.70710678118654752440)));
}

// GELU of n floats in place, a vector (8 or 16) at a time (a scalar erff call per node was about 5% of a 128-token
// call).
// erf(x) = 1 - t (a1 + a2 t + ... + a5 t^4) exp(-x^2), t = 1 / (1 + p |x|), with the sign of x (Abramowitz &
// Stegun 7.1.26: |error| <= 1.5e-7; GELU's error stays within about 2e-7 max(|a|, 1), as torch's float GELU); |x|
// is capped at 4, beyond which erf rounds to 1 in float. exp(z), z in [-16, 0]: z = k ln2 + r, |r| <= ln2 / 2,
// e^r by its Taylor polynomial to r^7 (relative error < 1e-8), times 2^k put into the exponent. NaN stays NaN.
// Every value goes through the same vector code, a short last block too, so that a token's output does not
// depend on where its nodes sit in the group (batch invariance).
template <int VB>
FFF_INLINE typename Simd<float, VB>::V gelu_vector(typename Simd<float, VB>::V v) {
  using V = typename Simd<float, VB>::V;
  using I = typename Simd<int32_t, VB>::V;
  const V half = V{} + 0.5f, one = V{} + 1.0f, cap = V{} + 4.0f;
  const V x = v * 0.70710678118654752440f;
  I bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const I sign = bits & int32_t(0x80000000u);
  const I abs_bits = bits & 0x7fffffff;
  V ax;
  std::memcpy(&ax, &abs_bits, sizeof(ax));
  ax = ax > cap ? cap : ax;  // a NaN compares false and stays NaN
  const V t = one / (one + 0.3275911f * ax);
  const V poly =
      t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const V z = -(ax * ax);  // in [-16, 0]
  const V kf = z * 1.44269504088896341f - 0.5f;  // round to nearest for z <= 0: truncate k - 0.5
  const I k = __builtin_convertvector(kf, I);
  const V kv = __builtin_convertvector(k, V);
  const V r = (z - kv * 0.693145751953125f) - kv * 1.428606765330187e-06f;  // ln 2 in two parts
  const V taylor = 1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)));
  V e = one + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * taylor)));
  const I scale_bits = (k + 127) << 23;  // 2^k, k in [-24, 0]
  V scale;
  std::memcpy(&scale, &scale_bits, sizeof(scale));
  e = e * scale;
  const V y = one - poly * e;  // erf(|x|)
  I y_bits;
  std::memcpy(&y_bits, &y, sizeof(y_bits));
  y_bits |= sign;
  V erf;
  std::memcpy(&erf, &y_bits, sizeof(erf));
  return half * v * (one + erf);
}

template <int VB>
FFF_INLINE void gelu_any(float* a, int64_t n) {
  using V = typename Simd<float, VB>::V;
  constexpr int W = Simd<float, VB>::kWidth;
  for (int64_t i = 0; i < n; i += W) {
    const int64_t m = std::min<int64_t>(W, n - i);
    V v = {};
    std::memcpy(&v, a + i, m * sizeof(float));
    v = gelu_vector<VB>(v);
    std::memcpy(a + i, &v, m * sizeof(float));
  }
}

template <int VB>
FFF_INLINE void gelu_any(double* a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) a[i] = gelu(a[i]);
}

// dots(x, w, n, res, r): dots_impl for r = 1, 2 or 4 rows.
template <int VB, typename T, typename A>
FFF_INLINE void dots_any(const A* const* x, const T* const* w, int64_t n, A* res, int r) {
  if (r == 4) {
    dots_impl<4, VB>(x, w, n, res);
  } else if (r == 2) {
    dots_impl<2, VB>(x, w, n, res);
  } else {
    dots_impl<1, VB>(x, w, n, res);
  }
}

// Whether the CPU can run the 64-byte-vector builds: x86-64-v4 (AVX-512), checked once as the library loads. They
// run wherever it can (fff_vector_bytes switches, for tests): on the 2-core EPYC VM (Zen 5) they cut hidden 768,
// depth 11 by a fifth to a third against 32-byte vectors (1 token 6.3 -> 4.4 us, 128 tokens 94 -> 76 us, 1024
// tokens 666 -> 581 us; hidden 4096, depth 13: 18.7 -> 11.1 us, 57 -> 47 us, 824 -> 742 us; same-process A/B).
#if FFF_X86_CLONES
const bool kWideAvailable = (__builtin_cpu_init(), __builtin_cpu_supports("x86-64-v4") != 0);
#else
constexpr bool kWideAvailable = false;
#endif
bool wide_vectors = kWideAvailable;

// The hot loops, one per storage type: body<64> built for x86-64-v4, body<32> built for x86-64-v3 and the
// baseline (the loader picks the clone), and the entry point that picks between them.
#define FFF_HOT(name, body, params, args)                         \
  FFF_WIDE void name##_wide params { body<64> args; }             \
  FFF_NARROW void name##_narrow params { body<32> args; }         \
  inline void name params {                                       \
    if (wide_vectors) {                                           \
      name##_wide args;                                           \
    } else {                                                      \
      name##_narrow args;                                         \
    }                                                             \
  }

FFF_HOT(dots, dots_any, (const float* const* x, const float* const* w, int64_t n, float* res, int r), (x, w, n, res, r))
FFF_HOT(dots, dots_any, (const double* const* x, const double* const* w, int64_t n, double* res, int r),
        (x, w, n, res, r))
FFF_HOT(dots, dots_any, (const float* const* x, const uint16_t* const* w, int64_t n, float* res, int r),
        (x, w, n, res, r))
FFF_HOT(combine, combine_impl, (float* out, const float* c, const float* const* w, int64_t count, int64_t n),
        (out, c, w, count, n))
FFF_HOT(combine, combine_impl, (double* out, const double* c, const double* const* w, int64_t count, int64_t n),
        (out, c, w, count, n))
FFF_HOT(combine, combine_impl, (float* out, const float* c, const uint16_t* const* w, int64_t count, int64_t n),
        (out, c, w, count, n))
FFF_HOT(gelu_inplace, gelu_any, (float* a, int64_t n), (a, n))
FFF_HOT(gelu_inplace, gelu_any, (double* a, int64_t n), (a, n))
#undef FFF_HOT

// Start fetching the row of n elements at p ahead of its use: only its first kPrefetchLines cache lines are
// asked for (locality 3: all cache levels); the hardware's stream prefetcher follows the rest of the row once
// it is read in order. Asking for every line of a 3 KB row filled the miss buffers and stalled the walk.
constexpr int64_t kPrefetchLines = 8;

template <typename T>
inline void prefetch_row(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  const int64_t end = std::min<int64_t>(n * static_cast<int64_t>(sizeof(T)), kPrefetchLines * 64);
  for (int64_t o = 0; o < end; o += 64) __builtin_prefetch(c + o, 0, 3);
}

constexpr int64_t kGroup = 8;  // most tokens one thread walks in lock-step

// T: storage type (float, double, uint16_t = bfloat16 bits); A: arithmetic type (float or double).
// x (B, d_in), w_in (K*M, d_in) with row stride ld_in, b_in (K*M), w_out_t (K*M, d_out) with row stride ld_out
// -> out (B, d_out) in A. With w_in and w_out_t two views of one (K*M, d_in + d_out) buffer (ld_in = ld_out =
// d_in + d_out), a node's input and output rows are one contiguous stretch: a visit is one stream for the
// hardware prefetcher instead of two, which on the 2-core EPYC VM cut hidden 768, depth 11 at 128 tokens by
// about a tenth (the rows the deep levels visit come from memory there).
//
// Each thread walks a group of G tokens level by level, and with K trees up to 8 / G of a token's trees at once:
// once a walk's next node is known, its row is prefetched while the other walks compute this level, so up to 8
// row fetches are in flight instead of one. (Walking one tree at a time, a forest of 8 trees of depth 8 at hidden
// 768 took 15–18 µs for one token on the 2-core Zen 5 VM, all 8 at once 7.6–8.0 µs; all trees of 8 tokens at once,
// 64 walks, was 5–7% slower than one tree at a time at 128 and 1024 tokens.)
// The dot products of a level go four tokens at a time (dots: four row streams read side by side), which on
// the same VM cut hidden 768, depth 11 at 128 tokens by a further fifth and hidden 4096, depth 13 by an
// eighth; eight at a time was no better. The output rows of visited nodes are prefetched as they are found,
// for the combine pass.
template <typename T, typename A>
void run(const T* x, const T* w_in, const T* b_in, const T* w_out_t, A* out, int64_t B, int64_t d_in, int64_t d_out,
         int64_t depth, int64_t n_trees, int64_t ld_in, int64_t ld_out) {
  const int64_t m = (int64_t{1} << (depth + 1)) - 1;
  const int64_t P = n_trees * (depth + 1);  // visited nodes per token
#pragma omp parallel if (B > 1)
  {
#ifdef _OPENMP
    const int64_t threads = omp_get_num_threads();
#else
    const int64_t threads = 1;
#endif
    // The group's token rows should fit in L1 (32 KiB of them) while its weight rows stream past.
    const int64_t fit = (int64_t{32} << 10) / (d_in * static_cast<int64_t>(sizeof(A)));
    const int64_t G = std::max<int64_t>(1, std::min({kGroup, fit, (B + threads - 1) / threads}));
    std::vector<A> xbuf(std::is_same_v<T, A> ? 0 : G * d_in);  // (G, d_in) token rows in A when T != A
    std::vector<A> coef(G * P);                                  // GELU(a) of the visited nodes
    std::vector<const T*> rows(G * P);                           // their output rows
    std::vector<int64_t> node(kGroup), tok(kGroup), tree(kGroup);  // each walk's node, token and tree
    // The group's output rows are prefetched for the combine pass only while they fit in half of a 1 MiB L2.
    const bool prefetch_out = G > 1 && G * P * d_out * static_cast<int64_t>(sizeof(T)) <= (int64_t{1} << 19);
#pragma omp for schedule(static)
    for (int64_t t0 = 0; t0 < B; t0 += G) {
      const int64_t g = std::min(G, B - t0);
      const A* xt[kGroup];
      for (int64_t j = 0; j < g; ++j) {
        if constexpr (std::is_same_v<T, A>) {
          xt[j] = x + (t0 + j) * d_in;
        } else {
          for (int64_t i = 0; i < d_in; ++i) xbuf[j * d_in + i] = load(x[(t0 + j) * d_in + i]);
          xt[j] = xbuf.data() + j * d_in;
        }
      }
      // A pass walks up to kGroup walks in lock-step: the g tokens in per trees each, a token's trees side by side
      // (walk w: token tok[w], tree tree[w]). More at once pushes prefetched rows out of L1 before their use.
      const int64_t per = std::max<int64_t>(1, std::min(n_trees, kGroup / g));
      for (int64_t k0 = 0; k0 < n_trees; k0 += per) {
        const int64_t kc = std::min(per, n_trees - k0), walks = g * kc;
        for (int64_t w = 0; w < walks; ++w) node[w] = 0, tok[w] = w / kc, tree[w] = k0 + w % kc;
        for (int64_t level = 0; level <= depth; ++level) {
          in_runs_of_four(0, walks, [&](int64_t w0, int r) {  // r walks whose rows are read side by side
            const A* xs[4];
            const T* ws[4];
            A d[4];
            for (int q = 0; q < r; ++q) {
              const int64_t w = w0 + q;
              xs[q] = xt[tok[w]], ws[q] = w_in + (tree[w] * m + node[w]) * ld_in;
            }
            dots(xs, ws, d_in, d, r);
            for (int q = 0; q < r; ++q) {
              const int64_t w = w0 + q, j = tok[w], k = tree[w], row = k * m + node[w];
              const A a = load(b_in[row]) + d[q];
              const int64_t p = j * P + k * (depth + 1) + level;
              coef[p] = a;  // GELU applied to the whole group below, vectorised
              rows[p] = w_out_t + row * ld_out;
              if (prefetch_out) prefetch_row(rows[p], d_out);
              node[w] = 2 * node[w] + 1 + (a > A(0) ? 1 : 0);
              if (walks > 1 && level < depth) prefetch_row(w_in + (k * m + node[w]) * ld_in, d_in);
            }
          });
        }
      }
      gelu_inplace(coef.data(), g * P);
      for (int64_t j = 0; j < g; ++j) {
        combine(out + (t0 + j) * d_out, coef.data() + j * P, rows.data() + j * P, P, d_out);
      }
    }
  }
}

// The rows a batch must read at least: each listed row of n floats at w + rows[i] * ld read once by the walk's
// own loop (dots, four rows side by side, against a row of ones) and summed into sink (so the reads cannot be
// dropped), rows split over the threads. Every address is known up front: no dependent chain. The FFF
// benchmark times this over a batch's distinct visited rows: the memory floor of an exact kernel here.
void read_rows(const float* w, int64_t ld, const int64_t* rows, int64_t count, int64_t n, float* sink) {
  float total = 0.0f;
#pragma omp parallel reduction(+ : total) if (count > 4)
  {
    const std::vector<float> ones(n, 1.0f);
    const float* xs[4] = {ones.data(), ones.data(), ones.data(), ones.data()};
#pragma omp for schedule(static)
    for (int64_t i0 = 0; i0 < count; i0 += 4) {
      in_runs_of_four(i0, std::min(i0 + 4, count), [&](int64_t i, int r) {
        const float* ws[4];
        float d[4];
        for (int q = 0; q < r; ++q) ws[q] = w + rows[i + q] * ld;
        dots(xs, ws, n, d, r);
        for (int q = 0; q < r; ++q) total += d[q];
      });
    }
  }
  *sink = total;
}

}  // namespace

// C entry points (called through ctypes; the Python wrapper checks shapes, dtypes and strides).
// fff_forward_plan: x (B, d_in), b_in (K*M,) contiguous; w_in (K*M, d_in), w_out_t (K*M, d_out) with unit column
// stride and row strides ld_in, ld_out -> out (B, d_out).
extern "C" {

// The vector width the hot loops run with, in bytes: 64 (AVX-512 builds) or 32. bytes = 32 or 64 selects that
// width first (64 only where the CPU has x86-64-v4); 0 only asks. Not thread-safe: for tests and A/B timing.
int fff_vector_bytes(int bytes) {
  if (bytes == 32 || (bytes == 64 && kWideAvailable)) wide_vectors = bytes == 64;
  return wide_vectors ? 64 : 32;
}

void fff_read_rows_f32(const float* w, int64_t ld, const int64_t* rows, int64_t count, int64_t n, float* sink) {
  read_rows(w, ld, rows, count, n, sink);
}

// The kernel's float GELU, in place on n floats (exported for its accuracy test).
void fff_gelu_f32(float* a, int64_t n) { gelu_inplace(a, n); }

// A call's weights and sizes, checked by the caller (recruit.fff.kernels.cpu: built per call by fff_cpu, once by
// CpuKernel), so that a call passes four arguments through ctypes. dtype: 0 float32, 1 float64, 2 bfloat16 (raw
// bits; the output is then float32, which the caller rounds to bfloat16).
struct FffPlan {
  const void* w_in;
  const void* b_in;
  const void* w_out_t;
  int64_t d_in, d_out, depth, n_trees, ld_in, ld_out, dtype;
};

void fff_forward_plan(const FffPlan* p, const void* x, void* out, int64_t B) {
  auto go = [&](auto storage, auto arithmetic) {  // T, A by the types of two dummy values
    using T = decltype(storage);
    using A = decltype(arithmetic);
    run<T, A>(static_cast<const T*>(x), static_cast<const T*>(p->w_in), static_cast<const T*>(p->b_in),
              static_cast<const T*>(p->w_out_t), static_cast<A*>(out), B, p->d_in, p->d_out, p->depth, p->n_trees,
              p->ld_in, p->ld_out);
  };
  if (p->dtype == 0) {
    go(float{}, float{});
  } else if (p->dtype == 1) {
    go(double{}, double{});
  } else {
    go(uint16_t{}, float{});
  }
}

}  // extern "C"
