// Fused CPU kernels for kpool's pooling layers on TensorFlow.
//
// TensorFlow outside XLA runs every op as its own kernel, so a layer built
// from built-in ops pays a full pass over memory per op. These kernels make
// one pass over each window for the forward pass and one for the gradient.
// `tensorflow_ops.py` compiles this file against the installed TensorFlow
// on first use and wraps the ops with their gradients; the layers fall back
// to built-in ops where it cannot.
//
// Every op takes 5D tensors: (batch, d1, d2, d3, channels) for "NDHWC" or
// (batch, channels, d1, d2, d3) for "NCDHW"; 1D and 2D inputs come with
// leading spatial dims of size 1. Windows follow TensorFlow's pooling: a
// window starts every `strides` cells; under "SAME" the output has
// ceil(n / s) cells along a dim of size n and `(total padding) / 2` cells
// are padded before. Padded cells are skipped: they never count in a max,
// a min, a mean or a sum. A window position `j` counts every cell of the
// window, padded or not, in row-major order.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/work_sharder.h"

namespace kpool {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

constexpr int kSpatial = 3;

// float for float, float16 and bfloat16; double for double.
template <typename T>
using Acc = typename std::conditional<std::is_same<T, double>::value, double,
                                      float>::type;

Status InvalidArgument(const std::string& message) {
  return Status(absl::StatusCode::kInvalidArgument, message);
}

// The window arithmetic shared by every op, for one input shape.
struct Geometry {
  int64_t batch = 0;
  int64_t channels = 0;
  int64_t in[kSpatial];
  int64_t out[kSpatial];
  int64_t k[kSpatial];
  int64_t s[kSpatial];
  int64_t pad[kSpatial];
  int64_t in_stride[kSpatial];  // Distance between spatial neighbours.
  int64_t out_stride[kSpatial];
  int64_t in_channel_stride = 0;
  int64_t out_channel_stride = 0;
  int64_t in_example = 0;  // Elements per example.
  int64_t out_example = 0;
  int64_t out_cells = 0;  // Output positions per example.
  int64_t window = 0;     // Cells per window.

  TensorShape OutputShape(bool channels_last) const {
    if (channels_last) {
      return TensorShape({batch, out[0], out[1], out[2], channels});
    }
    return TensorShape({batch, channels, out[0], out[1], out[2]});
  }

  // Calls `f(j, offset)` for each cell of output position `o`'s window that
  // lies inside the input, in row-major order: `j` is its position in the
  // whole window, `offset` its distance from the example's first element.
  template <typename F>
  void ForEachCell(int64_t o, F&& f) const {
    int64_t start[kSpatial];
    for (int d = kSpatial - 1; d >= 0; --d) {
      start[d] = (o % out[d]) * s[d] - pad[d];
      o /= out[d];
    }
    int64_t lo[kSpatial], hi[kSpatial];
    for (int d = 0; d < kSpatial; ++d) {
      lo[d] = std::max<int64_t>(0, -start[d]);
      hi[d] = std::min<int64_t>(k[d], in[d] - start[d]);
    }
    for (int64_t i0 = lo[0]; i0 < hi[0]; ++i0) {
      for (int64_t i1 = lo[1]; i1 < hi[1]; ++i1) {
        const int64_t j01 = (i0 * k[1] + i1) * k[2];
        const int64_t offset01 = (start[0] + i0) * in_stride[0] +
                                 (start[1] + i1) * in_stride[1];
        for (int64_t i2 = lo[2]; i2 < hi[2]; ++i2) {
          f(j01 + i2, offset01 + (start[2] + i2) * in_stride[2]);
        }
      }
    }
  }

  // Offset of output position `o` (channel 0) from the example's first
  // output element.
  int64_t OutputOffset(int64_t o) const {
    int64_t offset = 0;
    for (int d = kSpatial - 1; d >= 0; --d) {
      offset += (o % out[d]) * out_stride[d];
      o /= out[d];
    }
    return offset;
  }
};

Status ParseInts(OpKernelConstruction* c, const char* name, int64_t* values) {
  std::vector<int32_t> list;
  TF_RETURN_IF_ERROR(c->GetAttr(name, &list));
  if (list.size() != kSpatial) {
    return InvalidArgument(std::string("`") + name + "` must have 3 entries");
  }
  for (int d = 0; d < kSpatial; ++d) {
    if (list[d] < 1) {
      return InvalidArgument(std::string("`") + name + "` must be positive");
    }
    values[d] = list[d];
  }
  return Status();
}

class WindowOp : public OpKernel {
 public:
  explicit WindowOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, ParseInts(c, "ksize", ksize_));
    OP_REQUIRES_OK(c, ParseInts(c, "strides", strides_));
    std::string padding, data_format;
    OP_REQUIRES_OK(c, c->GetAttr("padding", &padding));
    OP_REQUIRES_OK(c, c->GetAttr("data_format", &data_format));
    same_ = padding == "SAME";
    channels_last_ = data_format == "NDHWC";
  }

 protected:
  Status MakeGeometry(const TensorShape& shape, Geometry* g) const {
    if (shape.dims() != 5) {
      return InvalidArgument("the input must be 5D, got " +
                             shape.DebugString());
    }
    g->batch = shape.dim_size(0);
    g->channels = shape.dim_size(channels_last_ ? 4 : 1);
    const int first = channels_last_ ? 1 : 2;
    g->out_cells = 1;
    g->window = 1;
    for (int d = 0; d < kSpatial; ++d) {
      const int64_t n = shape.dim_size(first + d);
      const int64_t k = ksize_[d], s = strides_[d];
      g->in[d] = n;
      g->k[d] = k;
      g->s[d] = s;
      if (same_) {
        g->out[d] = (n + s - 1) / s;
        const int64_t total = std::max<int64_t>((g->out[d] - 1) * s + k - n, 0);
        g->pad[d] = total / 2;
      } else {
        if (n < k) {
          return InvalidArgument("a window of " + std::to_string(k) +
                                 " is larger than the input's " +
                                 std::to_string(n) + " under VALID padding");
        }
        g->out[d] = (n - k) / s + 1;
        g->pad[d] = 0;
      }
      g->out_cells *= g->out[d];
      g->window *= k;
    }
    const int64_t c = g->channels;
    const int64_t inner_in = channels_last_ ? c : 1;
    const int64_t inner_out = channels_last_ ? c : 1;
    g->in_stride[2] = inner_in;
    g->out_stride[2] = inner_out;
    for (int d = 1; d >= 0; --d) {
      g->in_stride[d] = g->in_stride[d + 1] * g->in[d + 1];
      g->out_stride[d] = g->out_stride[d + 1] * g->out[d + 1];
    }
    const int64_t in_spatial = g->in_stride[0] * g->in[0] / inner_in;
    const int64_t out_spatial = g->out_cells;
    g->in_channel_stride = channels_last_ ? 1 : in_spatial;
    g->out_channel_stride = channels_last_ ? 1 : out_spatial;
    g->in_example = in_spatial * c;
    g->out_example = out_spatial * c;
    return Status();
  }

  // Runs `work(start, limit)` over output positions of every example (flat
  // `example * out_cells + o`), split over TensorFlow's CPU threads.
  template <typename F>
  void ForEachOutput(OpKernelContext* ctx, const Geometry& g, F&& work) const {
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t cost = std::max<int64_t>(g.window * g.channels * 4, 1);
    ::tensorflow::Shard(workers->num_threads, workers->workers,
                        g.batch * g.out_cells, cost, work);
  }

  int64_t ksize_[kSpatial];
  int64_t strides_[kSpatial];
  bool same_ = false;
  bool channels_last_ = true;
};

// Output shape: the input's, with each spatial dim pooled.
Status PooledShape(InferenceContext* c, int output_count) {
  ShapeHandle input;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 5, &input));
  std::vector<int32_t> ksize, strides;
  std::string padding, data_format;
  TF_RETURN_IF_ERROR(c->GetAttr("ksize", &ksize));
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
  TF_RETURN_IF_ERROR(c->GetAttr("data_format", &data_format));
  if (ksize.size() != kSpatial || strides.size() != kSpatial) {
    return InvalidArgument("`ksize` and `strides` must have 3 entries");
  }
  const bool channels_last = data_format == "NDHWC";
  const int first = channels_last ? 1 : 2;
  std::vector<DimensionHandle> dims;
  for (int i = 0; i < 5; ++i) dims.push_back(c->Dim(input, i));
  for (int d = 0; d < kSpatial; ++d) {
    DimensionHandle n = dims[first + d];
    if (!c->ValueKnown(n)) continue;
    const int64_t size = c->Value(n), k = ksize[d], s = strides[d];
    const int64_t pooled =
        padding == "SAME" ? (size + s - 1) / s : (size - k) / s + 1;
    dims[first + d] = c->MakeDim(std::max<int64_t>(pooled, 0));
  }
  ShapeHandle pooled = c->MakeShape(dims);
  for (int i = 0; i < output_count; ++i) c->set_output(i, pooled);
  return Status();
}

#define KPOOL_WINDOW_ATTRS                          \
  Attr("ksize: list(int)")                          \
      .Attr("strides: list(int)")                   \
      .Attr("padding: {'SAME', 'VALID'}")           \
      .Attr("data_format: {'NDHWC', 'NCDHW'} = 'NDHWC'")

// ---------------------------------------------------------------------------
// KpoolMinPool: the minimum of each window and its position `j` (the first
// one on ties).

REGISTER_OP("KpoolMinPool")
    .Input("x: T")
    .Output("y: T")
    .Output("index: int32")
    .Attr("T: {half, bfloat16, float, double}")
    .KPOOL_WINDOW_ATTRS
    .SetShapeFn([](InferenceContext* c) { return PooledShape(c, 2); });

template <typename T, bool kChannelsLast>
void MinPoolShard(const Geometry& g, const T* x, T* y, int32_t* index,
                  int64_t start, int64_t limit) {
  using A = Acc<T>;
  const int64_t C = g.channels;
  const int64_t ics = kChannelsLast ? 1 : g.in_channel_stride;
  const int64_t ocs = kChannelsLast ? 1 : g.out_channel_stride;
  // Positions are kept as floats (exact below 2**24) so that the compare
  // and both selects vectorize.
  std::vector<A> best(C), where(C);
  for (int64_t unit = start; unit < limit; ++unit) {
    const int64_t n = unit / g.out_cells, o = unit % g.out_cells;
    const T* xn = x + n * g.in_example;
    bool first = true;
    g.ForEachCell(o, [&](int64_t j, int64_t offset) {
      const T* __restrict__ xp = xn + offset;
      A* __restrict__ bp = best.data();
      A* __restrict__ wp = where.data();
      const A position = static_cast<A>(j);
      if (first) {
        for (int64_t c = 0; c < C; ++c) {
          bp[c] = static_cast<A>(xp[c * ics]);
          wp[c] = position;
        }
        first = false;
        return;
      }
      for (int64_t c = 0; c < C; ++c) {
        const A v = static_cast<A>(xp[c * ics]);
        const bool lower = v < bp[c];
        bp[c] = lower ? v : bp[c];
        wp[c] = lower ? position : wp[c];
      }
    });
    const int64_t out = n * g.out_example + g.OutputOffset(o);
    for (int64_t c = 0; c < C; ++c) {
      y[out + c * ocs] = static_cast<T>(best[c]);
      index[out + c * ocs] = static_cast<int32_t>(where[c]);
    }
  }
}

template <typename T>
class MinPoolOp : public WindowOp {
 public:
  using WindowOp::WindowOp;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Geometry g;
    OP_REQUIRES_OK(ctx, MakeGeometry(x.shape(), &g));
    Tensor *y = nullptr, *index = nullptr;
    const TensorShape shape = g.OutputShape(channels_last_);
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, shape, &index));
    const T* xp = x.flat<T>().data();
    T* yp = y->flat<T>().data();
    int32_t* ip = index->flat<int32_t>().data();
    ForEachOutput(ctx, g, [&](int64_t start, int64_t limit) {
      if (channels_last_) {
        MinPoolShard<T, true>(g, xp, yp, ip, start, limit);
      } else {
        MinPoolShard<T, false>(g, xp, yp, ip, start, limit);
      }
    });
  }
};

// ---------------------------------------------------------------------------
// KpoolMixedPool: each window's maximum, its position (the first on ties),
// its mean over the cells inside the input and, with `gated`, the gate's
// logit `sum_j kernel[j, c] * x_j` (padded cells count as zeros). `kernel`
// is (window, 1) for one gate per layer or (window, channels) for one per
// channel; without `gated` it is ignored and `logit` is empty.

REGISTER_OP("KpoolMixedPool")
    .Input("x: T")
    .Input("kernel: T")
    .Output("max: T")
    .Output("mean: T")
    .Output("index: int32")
    .Output("logit: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("gated: bool = false")
    .KPOOL_WINDOW_ATTRS
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(PooledShape(c, 3));
      bool gated;
      TF_RETURN_IF_ERROR(c->GetAttr("gated", &gated));
      if (gated) {
        c->set_output(3, c->output(0));
      } else {
        c->set_output(3, c->Vector(0));
      }
      return Status();
    });

template <typename T, bool kChannelsLast>
void MixedPoolShard(const Geometry& g, const T* x, const T* kernel,
                    int64_t kernel_channels, bool gated, T* max, T* mean,
                    int32_t* index, T* logit, int64_t start, int64_t limit) {
  using A = Acc<T>;
  const int64_t C = g.channels;
  const int64_t ics = kChannelsLast ? 1 : g.in_channel_stride;
  const int64_t ocs = kChannelsLast ? 1 : g.out_channel_stride;
  // Positions as floats, as in `MinPoolShard`.
  std::vector<A> best(C), where(C), sum(C), gate(C);
  for (int64_t unit = start; unit < limit; ++unit) {
    const int64_t n = unit / g.out_cells, o = unit % g.out_cells;
    const T* xn = x + n * g.in_example;
    int64_t count = 0;
    A* __restrict__ bp = best.data();
    A* __restrict__ wp = where.data();
    A* __restrict__ sp = sum.data();
    A* __restrict__ gp = gate.data();
    g.ForEachCell(o, [&](int64_t j, int64_t offset) {
      const T* __restrict__ xp = xn + offset;
      const A position = static_cast<A>(j);
      if (count++ == 0) {
        for (int64_t c = 0; c < C; ++c) {
          const A v = static_cast<A>(xp[c * ics]);
          bp[c] = v;
          wp[c] = position;
          sp[c] = v;
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const A v = static_cast<A>(xp[c * ics]);
          const bool higher = v > bp[c];
          bp[c] = higher ? v : bp[c];
          wp[c] = higher ? position : wp[c];
          sp[c] += v;
        }
      }
      if (gated) {
        const T* w = kernel + j * kernel_channels;
        if (count == 1) std::fill(gp, gp + C, A(0));
        if (kernel_channels == 1) {
          const A w0 = static_cast<A>(w[0]);
          for (int64_t c = 0; c < C; ++c) {
            gp[c] += w0 * static_cast<A>(xp[c * ics]);
          }
        } else {
          for (int64_t c = 0; c < C; ++c) {
            gp[c] += static_cast<A>(w[c]) * static_cast<A>(xp[c * ics]);
          }
        }
      }
    });
    const A inverse = A(1) / static_cast<A>(count);
    const int64_t out = n * g.out_example + g.OutputOffset(o);
    for (int64_t c = 0; c < C; ++c) {
      max[out + c * ocs] = static_cast<T>(bp[c]);
      mean[out + c * ocs] = static_cast<T>(sp[c] * inverse);
      index[out + c * ocs] = static_cast<int32_t>(wp[c]);
    }
    if (gated) {
      for (int64_t c = 0; c < C; ++c) {
        logit[out + c * ocs] = static_cast<T>(gp[c]);
      }
    }
  }
}

template <typename T>
class MixedPoolOp : public WindowOp {
 public:
  explicit MixedPoolOp(OpKernelConstruction* c) : WindowOp(c) {
    OP_REQUIRES_OK(c, c->GetAttr("gated", &gated_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& kernel = ctx->input(1);
    Geometry g;
    OP_REQUIRES_OK(ctx, MakeGeometry(x.shape(), &g));
    int64_t kernel_channels = 0;
    if (gated_) {
      OP_REQUIRES(ctx,
                  kernel.dims() == 2 && kernel.dim_size(0) == g.window &&
                      (kernel.dim_size(1) == 1 ||
                       kernel.dim_size(1) == g.channels),
                  InvalidArgument("`kernel` must be (window, 1) or (window, "
                                  "channels), got " +
                                  kernel.shape().DebugString()));
      kernel_channels = kernel.dim_size(1);
    }
    const TensorShape shape = g.OutputShape(channels_last_);
    Tensor *max = nullptr, *mean = nullptr, *index = nullptr, *logit = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &max));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, shape, &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, shape, &index));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            3, gated_ ? shape : TensorShape({0}), &logit));
    const T* xp = x.flat<T>().data();
    const T* kp = gated_ ? kernel.flat<T>().data() : nullptr;
    T* maxp = max->flat<T>().data();
    T* meanp = mean->flat<T>().data();
    int32_t* ip = index->flat<int32_t>().data();
    T* lp = gated_ ? logit->flat<T>().data() : nullptr;
    const bool gated = gated_;
    ForEachOutput(ctx, g, [&](int64_t start, int64_t limit) {
      if (channels_last_) {
        MixedPoolShard<T, true>(g, xp, kp, kernel_channels, gated, maxp, meanp,
                                ip, lp, start, limit);
      } else {
        MixedPoolShard<T, false>(g, xp, kp, kernel_channels, gated, maxp,
                                 meanp, ip, lp, start, limit);
      }
    });
  }

 private:
  bool gated_ = false;
};

// ---------------------------------------------------------------------------
// KpoolStochasticPool: with `a = max(x, 0)`, running sums `c_j` over each
// window's cells in row-major order and `u` in [0, 1) one per output cell,
// the output is `a_j` for the first `j` with `u * c_last < c_j`, and `index`
// is that `j`; a window with no positive cell outputs 0 with index -1.

REGISTER_OP("KpoolStochasticPool")
    .Input("x: T")
    .Input("u: T")
    .Output("y: T")
    .Output("index: int32")
    .Attr("T: {float, double}")
    .KPOOL_WINDOW_ATTRS
    .SetShapeFn([](InferenceContext* c) { return PooledShape(c, 2); });

template <typename T, bool kChannelsLast>
void StochasticPoolShard(const Geometry& g, const T* x, const T* u, T* y,
                         int32_t* index, int64_t start, int64_t limit) {
  const int64_t C = g.channels;
  const int64_t ics = kChannelsLast ? 1 : g.in_channel_stride;
  const int64_t ocs = kChannelsLast ? 1 : g.out_channel_stride;
  std::vector<T> total(C), threshold(C), running(C), value(C);
  std::vector<int32_t> where(C);
  for (int64_t unit = start; unit < limit; ++unit) {
    const int64_t n = unit / g.out_cells, o = unit % g.out_cells;
    const T* xn = x + n * g.in_example;
    const int64_t out = n * g.out_example + g.OutputOffset(o);
    std::fill(total.begin(), total.end(), T(0));
    g.ForEachCell(o, [&](int64_t, int64_t offset) {
      const T* xp = xn + offset;
      for (int64_t c = 0; c < C; ++c) {
        total[c] += std::max(xp[c * ics], T(0));
      }
    });
    for (int64_t c = 0; c < C; ++c) {
      threshold[c] = u[out + c * ocs] * total[c];
      running[c] = T(0);
      value[c] = T(0);
      where[c] = -1;
    }
    g.ForEachCell(o, [&](int64_t j, int64_t offset) {
      const T* xp = xn + offset;
      const int32_t position = static_cast<int32_t>(j);
      for (int64_t c = 0; c < C; ++c) {
        const T a = std::max(xp[c * ics], T(0));
        running[c] += a;
        const bool first = where[c] < 0 && threshold[c] < running[c];
        where[c] = first ? position : where[c];
        value[c] = first ? a : value[c];
      }
    });
    for (int64_t c = 0; c < C; ++c) {
      y[out + c * ocs] = value[c];
      index[out + c * ocs] = where[c];
    }
  }
}

template <typename T>
class StochasticPoolOp : public WindowOp {
 public:
  using WindowOp::WindowOp;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& u = ctx->input(1);
    Geometry g;
    OP_REQUIRES_OK(ctx, MakeGeometry(x.shape(), &g));
    const TensorShape shape = g.OutputShape(channels_last_);
    OP_REQUIRES(ctx, u.shape() == shape,
                InvalidArgument("`u` must have the output's shape " +
                                shape.DebugString() + ", got " +
                                u.shape().DebugString()));
    Tensor *y = nullptr, *index = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, shape, &index));
    const T* xp = x.flat<T>().data();
    const T* up = u.flat<T>().data();
    T* yp = y->flat<T>().data();
    int32_t* ip = index->flat<int32_t>().data();
    ForEachOutput(ctx, g, [&](int64_t start, int64_t limit) {
      if (channels_last_) {
        StochasticPoolShard<T, true>(g, xp, up, yp, ip, start, limit);
      } else {
        StochasticPoolShard<T, false>(g, xp, up, yp, ip, start, limit);
      }
    });
  }
};

// ---------------------------------------------------------------------------
// KpoolStochasticExpectation: with `a = max(x, 0)`, `total = sum_j a_j` over
// each window and `y = sum_j a_j**2 / total` (0 where `total` is 0).

REGISTER_OP("KpoolStochasticExpectation")
    .Input("x: T")
    .Output("y: T")
    .Output("total: T")
    .Attr("T: {float, double}")
    .KPOOL_WINDOW_ATTRS
    .SetShapeFn([](InferenceContext* c) { return PooledShape(c, 2); });

template <typename T, bool kChannelsLast>
void StochasticExpectationShard(const Geometry& g, const T* x, T* y, T* total,
                                int64_t start, int64_t limit) {
  const int64_t C = g.channels;
  const int64_t ics = kChannelsLast ? 1 : g.in_channel_stride;
  const int64_t ocs = kChannelsLast ? 1 : g.out_channel_stride;
  std::vector<T> sum(C), squares(C);
  for (int64_t unit = start; unit < limit; ++unit) {
    const int64_t n = unit / g.out_cells, o = unit % g.out_cells;
    const T* xn = x + n * g.in_example;
    std::fill(sum.begin(), sum.end(), T(0));
    std::fill(squares.begin(), squares.end(), T(0));
    g.ForEachCell(o, [&](int64_t, int64_t offset) {
      const T* xp = xn + offset;
      for (int64_t c = 0; c < C; ++c) {
        const T a = std::max(xp[c * ics], T(0));
        sum[c] += a;
        squares[c] += a * a;
      }
    });
    const int64_t out = n * g.out_example + g.OutputOffset(o);
    for (int64_t c = 0; c < C; ++c) {
      y[out + c * ocs] = sum[c] > T(0) ? squares[c] / sum[c] : T(0);
      total[out + c * ocs] = sum[c];
    }
  }
}

template <typename T>
class StochasticExpectationOp : public WindowOp {
 public:
  using WindowOp::WindowOp;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Geometry g;
    OP_REQUIRES_OK(ctx, MakeGeometry(x.shape(), &g));
    const TensorShape shape = g.OutputShape(channels_last_);
    Tensor *y = nullptr, *total = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, shape, &total));
    const T* xp = x.flat<T>().data();
    T* yp = y->flat<T>().data();
    T* tp = total->flat<T>().data();
    ForEachOutput(ctx, g, [&](int64_t start, int64_t limit) {
      if (channels_last_) {
        StochasticExpectationShard<T, true>(g, xp, yp, tp, start, limit);
      } else {
        StochasticExpectationShard<T, false>(g, xp, yp, tp, start, limit);
      }
    });
  }
};

// ---------------------------------------------------------------------------
// KpoolWindowGrad: the gradient of every forward op above. Each window adds
// to each of its cells inside the input
//
//   to_index          if the cell is at the window's `index`,
//   to_each           (divided by the window's count of cells inside the
//                     input with `average`),
//   to_value * x      (the cell's input),
//   to_gate * kernel[j, c]
//
// and, with `relu_mask`, a cell whose input is not positive gets 0. Any of
// `index` (with `to_index`), `to_each`, `to_value` and `to_gate` (with
// `kernel`) may be empty, meaning 0. `kernel_grad[n, j, c]` is the sum over
// example `n`'s windows of `to_gate * x_j` (summed over channels for a
// (window, 1) kernel), in float (double for double `T`); empty without
// `to_gate`. The output-sized inputs have
// the forward output's shape.

REGISTER_OP("KpoolWindowGrad")
    .Input("x: T")
    .Input("index: int32")
    .Input("to_index: T")
    .Input("to_each: T")
    .Input("to_value: T")
    .Input("to_gate: T")
    .Input("kernel: T")
    .Output("dx: T")
    .Output("kernel_grad: Tgrad")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tgrad: {float, double} = DT_FLOAT")
    .Attr("average: bool = false")
    .Attr("relu_mask: bool = false")
    .KPOOL_WINDOW_ATTRS
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->UnknownShapeOfRank(3));
      return Status();
    });

template <typename T>
struct GradInputs {
  const T* x = nullptr;
  const int32_t* index = nullptr;
  const T* to_index = nullptr;
  const T* to_each = nullptr;
  const T* to_value = nullptr;
  const T* to_gate = nullptr;
  const T* kernel = nullptr;
  int64_t kernel_channels = 0;
  bool average = false;
  bool relu_mask = false;
};

// One example per call: windows may overlap, so each example's input
// gradient is summed by one thread, into `dx` itself where `T` is the
// accumulation type and into `scratch` (then converted) where it is not.
template <typename T, bool kChannelsLast>
void WindowGradExample(const Geometry& g, const GradInputs<T>& in, int64_t n,
                       std::vector<Acc<T>>& scratch, T* dx,
                       Acc<T>* kernel_grad) {
  using A = Acc<T>;
  constexpr bool kDirect = std::is_same<T, A>::value;
  const int64_t C = g.channels;
  const int64_t ics = kChannelsLast ? 1 : g.in_channel_stride;
  const int64_t ocs = kChannelsLast ? 1 : g.out_channel_stride;
  const T* xn = in.x + n * g.in_example;
  T* dxn = dx + n * g.in_example;
  A* sum = kDirect ? reinterpret_cast<A*>(dxn) : scratch.data();
  std::fill(sum, sum + g.in_example, A(0));
  A* kg = kernel_grad ? kernel_grad + n * g.window * in.kernel_channels
                          : nullptr;
  for (int64_t o = 0; o < g.out_cells; ++o) {
    const int64_t out = n * g.out_example + g.OutputOffset(o);
    A inverse = A(1);
    if (in.to_each && in.average) {
      int64_t count = 0;
      g.ForEachCell(o, [&](int64_t, int64_t) { ++count; });
      inverse = A(1) / static_cast<A>(count);
    }
    const int32_t* __restrict__ index = in.index ? in.index + out : nullptr;
    const T* __restrict__ to_index = in.to_index ? in.to_index + out : nullptr;
    const T* __restrict__ to_each = in.to_each ? in.to_each + out : nullptr;
    const T* __restrict__ to_value = in.to_value ? in.to_value + out : nullptr;
    const T* __restrict__ to_gate = in.to_gate ? in.to_gate + out : nullptr;
    g.ForEachCell(o, [&](int64_t j, int64_t offset) {
      A* __restrict__ sp = sum + offset;
      const T* __restrict__ xp = xn + offset;
      const int32_t position = static_cast<int32_t>(j);
      if (to_index) {
        for (int64_t c = 0; c < C; ++c) {
          const A d = static_cast<A>(to_index[c * ocs]);
          sp[c * ics] += index[c * ocs] == position ? d : A(0);
        }
      }
      if (to_each) {
        for (int64_t c = 0; c < C; ++c) {
          sp[c * ics] += static_cast<A>(to_each[c * ocs]) * inverse;
        }
      }
      if (to_value) {
        for (int64_t c = 0; c < C; ++c) {
          sp[c * ics] +=
              static_cast<A>(to_value[c * ocs]) * static_cast<A>(xp[c * ics]);
        }
      }
      if (to_gate) {
        const T* w = in.kernel + j * in.kernel_channels;
        A* kgj = kg + j * in.kernel_channels;
        if (in.kernel_channels == 1) {
          const A w0 = static_cast<A>(w[0]);
          A dot = A(0);
          for (int64_t c = 0; c < C; ++c) {
            const A d = static_cast<A>(to_gate[c * ocs]);
            sp[c * ics] += d * w0;
            dot += d * static_cast<A>(xp[c * ics]);
          }
          kgj[0] += dot;
        } else {
          for (int64_t c = 0; c < C; ++c) {
            const A d = static_cast<A>(to_gate[c * ocs]);
            sp[c * ics] += d * static_cast<A>(w[c]);
            kgj[c] += d * static_cast<A>(xp[c * ics]);
          }
        }
      }
    });
  }
  if (in.relu_mask) {
    for (int64_t i = 0; i < g.in_example; ++i) {
      dxn[i] = xn[i] > T(0) ? static_cast<T>(sum[i]) : T(0);
    }
  } else if (!kDirect) {
    for (int64_t i = 0; i < g.in_example; ++i) {
      dxn[i] = static_cast<T>(sum[i]);
    }
  }
}

template <typename T>
class WindowGradOp : public WindowOp {
 public:
  explicit WindowGradOp(OpKernelConstruction* c) : WindowOp(c) {
    OP_REQUIRES_OK(c, c->GetAttr("average", &average_));
    OP_REQUIRES_OK(c, c->GetAttr("relu_mask", &relu_mask_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Geometry g;
    OP_REQUIRES_OK(ctx, MakeGeometry(x.shape(), &g));
    const TensorShape shape = g.OutputShape(channels_last_);
    GradInputs<T> in;
    in.x = x.flat<T>().data();
    in.average = average_;
    in.relu_mask = relu_mask_;
    // An output-sized input, or null where it is empty.
    auto output_sized = [&](int i, const char* name, const T** data) {
      const Tensor& t = ctx->input(i);
      if (t.NumElements() == 0 && shape.num_elements() != 0) return Status();
      if (t.shape() != shape) {
        return InvalidArgument(std::string("`") + name +
                               "` must be empty or have the output's shape " +
                               shape.DebugString() + ", got " +
                               t.shape().DebugString());
      }
      *data = t.flat<T>().data();
      return Status();
    };
    OP_REQUIRES_OK(ctx, output_sized(2, "to_index", &in.to_index));
    OP_REQUIRES_OK(ctx, output_sized(3, "to_each", &in.to_each));
    OP_REQUIRES_OK(ctx, output_sized(4, "to_value", &in.to_value));
    OP_REQUIRES_OK(ctx, output_sized(5, "to_gate", &in.to_gate));
    if (in.to_index) {
      const Tensor& index = ctx->input(1);
      OP_REQUIRES(ctx, index.shape() == shape,
                  InvalidArgument("`index` must have the output's shape"));
      in.index = index.flat<int32_t>().data();
    }
    TensorShape kernel_grad_shape({0, 0, 0});
    if (in.to_gate) {
      const Tensor& kernel = ctx->input(6);
      OP_REQUIRES(ctx,
                  kernel.dims() == 2 && kernel.dim_size(0) == g.window &&
                      (kernel.dim_size(1) == 1 ||
                       kernel.dim_size(1) == g.channels),
                  InvalidArgument("`kernel` must be (window, 1) or (window, "
                                  "channels), got " +
                                  kernel.shape().DebugString()));
      in.kernel = kernel.flat<T>().data();
      in.kernel_channels = kernel.dim_size(1);
      kernel_grad_shape = TensorShape({g.batch, g.window, in.kernel_channels});
    }
    Tensor *dx = nullptr, *kernel_grad = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, kernel_grad_shape,
                                             &kernel_grad));
    T* dxp = dx->flat<T>().data();
    Acc<T>* kgp = nullptr;
    if (in.to_gate) {
      kgp = kernel_grad->flat<Acc<T>>().data();
      std::fill(kgp, kgp + kernel_grad->NumElements(), Acc<T>(0));
    }
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t cost = std::max<int64_t>(g.out_cells * g.window * g.channels
                                               * 8, 1);
    ::tensorflow::Shard(
        workers->num_threads, workers->workers, g.batch, cost,
        [&](int64_t start, int64_t limit) {
          std::vector<Acc<T>> scratch(
              std::is_same<T, Acc<T>>::value ? 0 : g.in_example);
          for (int64_t n = start; n < limit; ++n) {
            if (channels_last_) {
              WindowGradExample<T, true>(g, in, n, scratch, dxp, kgp);
            } else {
              WindowGradExample<T, false>(g, in, n, scratch, dxp, kgp);
            }
          }
        });
  }

 private:
  bool average_ = false;
  bool relu_mask_ = false;
};

#define KPOOL_REGISTER(name, op, type)                                      \
  REGISTER_KERNEL_BUILDER(                                                  \
      Name(name).Device(DEVICE_CPU).TypeConstraint<type>("T"), op<type>)

#define KPOOL_REGISTER_ALL_TYPES(name, op)      \
  KPOOL_REGISTER(name, op, Eigen::half);        \
  KPOOL_REGISTER(name, op, Eigen::bfloat16);    \
  KPOOL_REGISTER(name, op, float);              \
  KPOOL_REGISTER(name, op, double)

KPOOL_REGISTER_ALL_TYPES("KpoolMinPool", MinPoolOp);
KPOOL_REGISTER_ALL_TYPES("KpoolMixedPool", MixedPoolOp);
#define KPOOL_REGISTER_GRAD(type)                         \
  REGISTER_KERNEL_BUILDER(Name("KpoolWindowGrad")         \
                              .Device(DEVICE_CPU)         \
                              .TypeConstraint<type>("T")  \
                              .TypeConstraint<Acc<type>>("Tgrad"), \
                          WindowGradOp<type>)
KPOOL_REGISTER_GRAD(Eigen::half);
KPOOL_REGISTER_GRAD(Eigen::bfloat16);
KPOOL_REGISTER_GRAD(float);
KPOOL_REGISTER_GRAD(double);
KPOOL_REGISTER("KpoolStochasticPool", StochasticPoolOp, float);
KPOOL_REGISTER("KpoolStochasticPool", StochasticPoolOp, double);
KPOOL_REGISTER("KpoolStochasticExpectation", StochasticExpectationOp, float);
KPOOL_REGISTER("KpoolStochasticExpectation", StochasticExpectationOp, double);

}  // namespace
}  // namespace kpool
