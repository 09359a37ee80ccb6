// The feature stage's per-frame passes as ATen ops that split their frames over torch's
// own intra-op threads (at::parallel_for): the C++ twin of speechconv/kernels.py.
//
// Each op computes exactly what its numba twin computes, operation for operation and
// in float32, so the two give the same bits (tests/test_native.py checks that over
// generated cases).  Built and loaded at first use by speechconv/native.py; where no
// compiler is found the numba kernels run instead.
//
// Rounding: -ffp-contract=off (native.py) keeps every a*b + c as two roundings, as
// numba and the eager torch ops round them.  The row functions are compiled three
// times (AVX-512, AVX2, baseline x86-64) and the loader picks the CPU's best; the
// vector lanes only ever hold independent frames or bins, never a reordered sum.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SPEECHCONV_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SPEECHCONV_CLONES
#endif

namespace {

constexpr int64_t kMelFrames = 16;  // frames whose spectra power_mel_rows holds at once (kernels.MEL_FRAMES)
constexpr int64_t kWindowGrain = 128;  // fewest frames per thread
constexpr int64_t kMelGrain = 8;  // fewest 16-frame blocks per thread

// kernels._float32_sum: eight lanes over blocks of 64 samples, each block's lanes added
// as a tree, then the blocks in order, then the tail.
inline __attribute__((always_inline)) float float32_sum(const float* x, int64_t n) {
  const int64_t whole = n - n % 64;
  float total = 0.0f;
  for (int64_t b = 0; b < whole; b += 64) {
    float a[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t k = b; k < b + 64; k += 8)
      for (int j = 0; j < 8; ++j) a[j] += x[k + j];
    total += ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  }
  float rest = 0.0f;
  for (int64_t k = whole; k < n; ++k) rest += x[k];
  return total + rest;
}

// Frames [begin, end) of kaldi_window_frames: frame r reads x0 + (r / t) * s0 + (r % t) * s1.
SPEECHCONV_CLONES
void window_rows(const float* __restrict__ x0, int64_t s0, int64_t s1, int64_t t, int64_t win,
                 const float* __restrict__ w, float c, bool remove_dc, float* __restrict__ y0, int64_t n_fft,
                 int64_t offset, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const float* x = x0 + (r / t) * s0 + (r % t) * s1;
    float* y = y0 + r * n_fft + offset;
    const float mean = remove_dc ? float32_sum(x, win) / static_cast<float>(win) : 0.0f;
    const float z0 = x[0] - mean;
    y[0] = (z0 - c * z0) * w[0];
    for (int64_t k = 1; k < win; ++k) y[k] = ((x[k] - mean) - c * (x[k - 1] - mean)) * w[k];
  }
}

// Frames [begin, end) of power_mel_floor, begin a multiple of kMelFrames: spectra as
// (n, K, 2) floats, band f sums bins lo[f] .. hi[f]-1 with weights[start[f] ...].
SPEECHCONV_CLONES
void power_mel_rows(const float* __restrict__ parts, int64_t K, int64_t F, const int64_t* lo, const int64_t* hi,
                    const int64_t* start, const float* __restrict__ weights, bool magnitude, float floor,
                    float* __restrict__ out, int64_t t, int64_t o0, int64_t o1, int64_t begin, int64_t end) {
  std::vector<float> energy_(K * kMelFrames, 0.0f), mel_(F * kMelFrames);
  float* __restrict__ energy = energy_.data();  // (K, 16): a weight meets 16 frames at once
  float* __restrict__ mel = mel_.data();  // (F, 16)
  for (int64_t r0 = begin; r0 < end; r0 += kMelFrames) {
    const int64_t m = std::min(kMelFrames, end - r0);
    for (int64_t j = 0; j < m; ++j) {
      const float* p = parts + (r0 + j) * K * 2;
      for (int64_t k = 0; k < K; ++k) energy[k * kMelFrames + j] = p[2 * k] * p[2 * k] + p[2 * k + 1] * p[2 * k + 1];
    }
    if (magnitude)
      for (int64_t i = 0; i < K * kMelFrames; ++i) energy[i] = std::sqrt(energy[i]);
    for (int64_t f = 0; f < F; ++f) {
      float acc[kMelFrames] = {};
      const float* w = weights + start[f] - lo[f];
      for (int64_t k = lo[f]; k < hi[f]; ++k) {
        const float* e = energy + k * kMelFrames;
        for (int64_t j = 0; j < kMelFrames; ++j) acc[j] += e[j] * w[k];
      }
      for (int64_t j = 0; j < kMelFrames; ++j) mel[f * kMelFrames + j] = acc[j];
    }
    for (int64_t j = 0; j < m; ++j) {
      const int64_t r = r0 + j;
      float* row = out + (r / t) * o0 + (r % t) * o1;
      for (int64_t f = 0; f < F; ++f) row[f] = std::max(mel[f * kMelFrames + j], floor);
    }
  }
}

void check_float(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, name, " must be a CPU float32 tensor, got ",
              x.scalar_type(), " on ", x.device());
}

// frames (b, t, win) float32, unit stride along win; window (win,); out (b, t, n_fft)
// contiguous, [..., offset : offset + win] written.
void kaldi_window_frames(const at::Tensor& frames, const at::Tensor& window, double preemphasis, bool remove_dc,
                         const at::Tensor& out, int64_t offset) {
  check_float(frames, "frames");
  check_float(out, "out");
  TORCH_CHECK(frames.dim() == 3 && frames.stride(2) == 1, "frames must be (b, t, win) rows of contiguous samples");
  TORCH_CHECK(window.is_contiguous() && window.numel() == frames.size(2), "window must be (win,) contiguous");
  TORCH_CHECK(out.is_contiguous() && out.dim() == 3 && out.size(0) == frames.size(0) &&
                  out.size(1) == frames.size(1) && offset >= 0 && offset + frames.size(2) <= out.size(2),
              "out must be a contiguous (b, t, n_fft) with room for the window at offset");
  const int64_t t = frames.size(1);
  const float* x0 = frames.const_data_ptr<float>();
  const float* w = window.const_data_ptr<float>();
  float* y0 = out.data_ptr<float>();
  at::parallel_for(0, frames.size(0) * t, kWindowGrain, [&](int64_t begin, int64_t end) {
    window_rows(x0, frames.stride(0), frames.stride(1), t, frames.size(2), w, static_cast<float>(preemphasis),
                remove_dc, y0, out.size(2), offset, begin, end);
  });
}

// spec (b, t, K) complex64 contiguous; lo, hi, start (F,) int64; weights float32 (kernels.MelBands);
// out (b, t, F) float32, unit stride along F.
void power_mel_floor(const at::Tensor& spec, const at::Tensor& lo, const at::Tensor& hi, const at::Tensor& start,
                     const at::Tensor& weights, bool magnitude, double floor, const at::Tensor& out) {
  TORCH_CHECK(spec.device().is_cpu() && spec.scalar_type() == at::kComplexFloat && spec.is_contiguous() &&
                  spec.dim() == 3,
              "spec must be a contiguous (b, t, K) CPU complex64 tensor");
  check_float(out, "out");
  check_float(weights, "weights");
  TORCH_CHECK(weights.is_contiguous(), "weights must be contiguous");
  const int64_t F = out.size(2);
  TORCH_CHECK(out.dim() == 3 && out.size(0) == spec.size(0) && out.size(1) == spec.size(1) && out.stride(2) == 1,
              "out must be (b, t, F) with unit stride along F");
  for (const at::Tensor* edge : {&lo, &hi, &start})
    TORCH_CHECK(edge->scalar_type() == at::kLong && edge->is_contiguous() && edge->numel() == F,
                "lo, hi and start must be (F,) contiguous int64");
  const int64_t t = spec.size(1), n = spec.size(0) * t;
  const float* parts = reinterpret_cast<const float*>(spec.const_data_ptr());
  const int64_t* lo_ = lo.const_data_ptr<int64_t>();
  const int64_t* hi_ = hi.const_data_ptr<int64_t>();
  const int64_t* start_ = start.const_data_ptr<int64_t>();
  const float* w = weights.const_data_ptr<float>();
  float* y = out.data_ptr<float>();
  const int64_t blocks = (n + kMelFrames - 1) / kMelFrames;
  at::parallel_for(0, blocks, kMelGrain, [&](int64_t first, int64_t last) {
    power_mel_rows(parts, spec.size(2), F, lo_, hi_, start_, w, magnitude, static_cast<float>(floor), y, t,
                   out.stride(0), out.stride(1), first * kMelFrames, std::min(last * kMelFrames, n));
  });
}

}  // namespace

TORCH_LIBRARY(speechconv, m) {
  m.def("kaldi_window_frames(Tensor frames, Tensor window, float preemphasis, bool remove_dc, Tensor(a!) out, "
        "int offset) -> ()");
  m.def("power_mel_floor(Tensor spec, Tensor lo, Tensor hi, Tensor start, Tensor weights, bool magnitude, "
        "float floor, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(speechconv, CPU, m) {
  m.impl("kaldi_window_frames", kaldi_window_frames);
  m.impl("power_mel_floor", power_mel_floor);
}
