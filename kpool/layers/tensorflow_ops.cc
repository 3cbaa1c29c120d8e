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
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/kernels/random_ops_util.h"
#include "tensorflow/core/lib/random/random_distributions.h"
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

// Window positions are stored in one byte: a window has at most
// `kMaxWindow` cells, and `kNoIndex` marks a window with none (stochastic
// pooling of a window without a positive input).
constexpr int64_t kMaxWindow = 255;
constexpr uint8_t kNoIndex = 255;

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
    if (g->window > kMaxWindow) {
      return InvalidArgument("a window of " + std::to_string(g->window) +
                             " cells; the kernels take at most " +
                             std::to_string(kMaxWindow));
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

  // Calls `f` with the layout as a compile-time constant:
  // `std::true_type` for channels_last, `std::false_type` otherwise.
  template <typename F>
  void WithLayout(F&& f) const {
    if (channels_last_) {
      f(std::true_type());
    } else {
      f(std::false_type());
    }
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

// Output shape: the input's (the gradient ops).
Status InputShape(InferenceContext* c) {
  c->set_output(0, c->input(0));
  return Status();
}

#define KPOOL_WINDOW_ATTRS                          \
  Attr("ksize: list(int)")                          \
      .Attr("strides: list(int)")                   \
      .Attr("padding: {'SAME', 'VALID'}")           \
      .Attr("data_format: {'NDHWC', 'NCDHW'} = 'NDHWC'")

// SIMD packets. The kernels' channels_last paths for float and double work
// on one packet of channels at a time with Eigen's packet functions (so
// AVX-512, AVX2, SSE or NEON, whatever the build targets): a window's
// running values stay in registers over its cells, and the compare and
// select vectorize even where a compiler would not vectorize the loops
// (GCC at the x86-64 baseline does not vectorize a compare and select).
// The other channels, layouts and dtypes take plain loops.
template <typename T>
using Packet = typename Eigen::internal::packet_traits<T>::type;
template <typename T>
constexpr int64_t kPacketSize =
    Eigen::internal::unpacket_traits<Packet<T>>::size;

namespace ei = Eigen::internal;

// `max(v, 0)` as `std::max(v, T(0))` computes it (NaN stays NaN).
template <typename P>
P PositivePart(const P& v) {
  const P zero = ei::pset1<P>(typename ei::unpacket_traits<P>::type(0));
  return ei::pselect(ei::pcmp_lt(v, zero), zero, v);
}

// Window positions between bytes and `A` (the packet paths compare them
// as `A`), for `count` channels: separate loops, which vectorize.
template <typename A>
void LoadIndex(const uint8_t* __restrict__ index, int64_t count,
               A* __restrict__ where) {
  for (int64_t c = 0; c < count; ++c) where[c] = static_cast<A>(index[c]);
}

// A negative position becomes `kNoIndex`.
template <typename A>
void StoreIndex(const A* __restrict__ where, int64_t count,
                uint8_t* __restrict__ index) {
  for (int64_t c = 0; c < count; ++c) {
    index[c] = where[c] < A(0) ? kNoIndex : static_cast<uint8_t>(where[c]);
  }
}

// Channels from 0 to the returned count go through the packet paths: all
// but the last `C % packet` for channels_last float and double, else none.
template <typename T, bool kChannelsLast>
int64_t PacketChannels(int64_t channels) {
  constexpr int64_t kSize = kPacketSize<T>;
  if (!kChannelsLast || !std::is_same<T, Acc<T>>::value || kSize < 2) return 0;
  return channels - channels % kSize;
}

// Gated (`kGate`), only `y`: the gradient computes the rest again from
// `x`, which it reads anyway for the kernel's gradient. Otherwise also
// `index` and `difference`, and with random mixing `choices`.
// The cells of one output position's window that lie inside the input:
// `j` (position in the whole window) and `offset`, as `ForEachCell` visits
// them. Collected once per position, for the channel blocks to share.
struct Cells {
  int64_t count = 0;
  uint8_t j[kMaxWindow];
  int64_t offset[kMaxWindow];

  void Collect(const Geometry& g, int64_t o) {
    count = 0;
    g.ForEachCell(o, [&](int64_t position, int64_t distance) {
      j[count] = static_cast<uint8_t>(position);
      offset[count] = distance;
      ++count;
    });
  }
};

// ---------------------------------------------------------------------------
// KpoolMinPool: the minimum of each window and its position `j` (the first
// one on ties).

REGISTER_OP("KpoolMinPool")
    .Input("x: T")
    .Output("y: T")
    .Output("index: uint8")
    .Attr("T: {half, bfloat16, float, double}")
    .KPOOL_WINDOW_ATTRS
    .SetShapeFn([](InferenceContext* c) { return PooledShape(c, 2); });

// The minimum of one window and its position, for one packet of channels
// from `c0`, into `y` (at the output position's channel 0) and `where_out`
// (indexed by channel).
template <typename T>
EIGEN_ALWAYS_INLINE void MinPacket(const Cells& cells, const T* xn, int64_t c0, T* y, T* where_out) {
  using P = Packet<T>;
  P best = ei::ploadu<P>(xn + cells.offset[0] + c0);
  P where = ei::pset1<P>(static_cast<T>(cells.j[0]));
  for (int64_t i = 1; i < cells.count; ++i) {
    const P v = ei::ploadu<P>(xn + cells.offset[i] + c0);
    const P lower = ei::pcmp_lt(v, best);
    best = ei::pselect(lower, v, best);
    where = ei::pselect(lower, ei::pset1<P>(static_cast<T>(cells.j[i])), where);
  }
  ei::pstoreu(y + c0, best);
  ei::pstoreu(where_out + c0, where);
}

template <typename T, bool kChannelsLast>
void MinPoolShard(const Geometry& g, const T* x, T* y, uint8_t* index,
                  int64_t start, int64_t limit) {
  using A = Acc<T>;
  const int64_t C = g.channels;
  const int64_t ics = kChannelsLast ? 1 : g.in_channel_stride;
  const int64_t ocs = kChannelsLast ? 1 : g.out_channel_stride;
  const int64_t packed = PacketChannels<T, kChannelsLast>(C);
  // Positions are kept as floats (exact below 2**24) so that the compare
  // and both selects vectorize.
  std::vector<A> best(C), where(C);
  Cells cells;
  for (int64_t unit = start; unit < limit; ++unit) {
    const int64_t n = unit / g.out_cells, o = unit % g.out_cells;
    const T* xn = x + n * g.in_example;
    const int64_t out = n * g.out_example + g.OutputOffset(o);
    cells.Collect(g, o);
    if constexpr (std::is_same<T, A>::value) {
      for (int64_t c0 = 0; c0 < packed; c0 += kPacketSize<T>) {
        MinPacket<T>(cells, xn, c0, y + out, where.data());
      }
      StoreIndex(where.data(), packed, index + out);
    }
    for (int64_t i = 0; i < cells.count; ++i) {
      const T* __restrict__ xp = xn + cells.offset[i];
      A* __restrict__ bp = best.data();
      A* __restrict__ wp = where.data();
      const A position = static_cast<A>(cells.j[i]);
      if (i == 0) {
        for (int64_t c = packed; c < C; ++c) {
          bp[c] = static_cast<A>(xp[c * ics]);
          wp[c] = position;
        }
        continue;
      }
      for (int64_t c = packed; c < C; ++c) {
        const A v = static_cast<A>(xp[c * ics]);
        const bool lower = v < bp[c];
        bp[c] = lower ? v : bp[c];
        wp[c] = lower ? position : wp[c];
      }
    }
    for (int64_t c = packed; c < C; ++c) {
      y[out + c * ocs] = static_cast<T>(best[c]);
      index[out + c * ocs] = static_cast<uint8_t>(where[c]);
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
    uint8_t* ip = index->flat<uint8_t>().data();
    ForEachOutput(ctx, g, [&](int64_t start, int64_t limit) {
      WithLayout([&](auto last) {
        MinPoolShard<T, decltype(last)::value>(g, xp, yp, ip, start, limit);
      });
    });
  }
};

// ---------------------------------------------------------------------------
// Gradients: every gradient op sums, for each example, what each window
// sends to its cells. Windows may overlap, so one thread sums a whole
// example: into `dx` itself where `T` is the accumulation type, into
// `scratch` (then converted) where it is not.

template <typename T, typename F>
void AccumulateExamples(OpKernelContext* ctx, const Geometry& g, T* dx,
                        F&& accumulate) {
  using A = Acc<T>;
  constexpr bool kDirect = std::is_same<T, A>::value;
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  const int64_t cost =
      std::max<int64_t>(g.out_cells * g.window * g.channels * 8, 1);
  ::tensorflow::Shard(
      workers->num_threads, workers->workers, g.batch, cost,
      [&](int64_t start, int64_t limit) {
        std::vector<A> scratch(kDirect ? 0 : g.in_example);
        for (int64_t n = start; n < limit; ++n) {
          T* dxn = dx + n * g.in_example;
          A* sum = kDirect ? reinterpret_cast<A*>(dxn) : scratch.data();
          std::fill(sum, sum + g.in_example, A(0));
          accumulate(n, sum);
          if (!kDirect) {
            for (int64_t i = 0; i < g.in_example; ++i) {
              dxn[i] = static_cast<T>(sum[i]);
            }
          }
        }
      });
}

Status CheckShape(const Tensor& t, const TensorShape& shape, const char* name) {
  if (t.shape() == shape) return Status();
  return InvalidArgument(std::string("`") + name + "` must have the shape " +
                         shape.DebugString() + ", got " +
                         t.shape().DebugString());
}

// A 5D tensor broadcast against the 5D output: each of its dims is 1 or the
// output's.
struct Broadcast {
  int64_t stride[5] = {0, 0, 0, 0, 0};  // 0 along a dim of size 1.
  int first_spatial = 1;
  int channel_axis = 4;

  Status Init(const TensorShape& shape, const TensorShape& output,
              bool channels_last, const char* name) {
    if (shape.dims() != 5) {
      return InvalidArgument(std::string("`") + name + "` must be 5D, got " +
                             shape.DebugString());
    }
    int64_t step = 1;
    for (int i = 4; i >= 0; --i) {
      const int64_t n = shape.dim_size(i);
      if (n != 1 && n != output.dim_size(i)) {
        return InvalidArgument(std::string("`") + name + "` " +
                               shape.DebugString() +
                               " does not broadcast to the output's " +
                               output.DebugString());
      }
      stride[i] = n == 1 ? 0 : step;
      step *= n;
    }
    first_spatial = channels_last ? 1 : 2;
    channel_axis = channels_last ? 4 : 1;
    return Status();
  }

  // Offset of channel 0 of output position `o` of example `n`.
  int64_t Base(const Geometry& g, int64_t n, int64_t o) const {
    int64_t offset = n * stride[0];
    for (int d = kSpatial - 1; d >= 0; --d) {
      offset += (o % g.out[d]) * stride[first_spatial + d];
      o /= g.out[d];
    }
    return offset;
  }

  int64_t ChannelStride() const { return stride[channel_axis]; }
};

// ---------------------------------------------------------------------------
// KpoolScatterGrad: the gradient of KpoolMinPool and KpoolStochasticPool:
// each window sends `upstream` to the cell at its `index` (none for
// `kNoIndex`).

REGISTER_OP("KpoolScatterGrad")
    .Input("x: T")
    .Input("index: uint8")
    .Input("upstream: T")
    .Output("dx: T")
    .Attr("T: {half, bfloat16, float, double}")
    .KPOOL_WINDOW_ATTRS
    .SetShapeFn(InputShape);

template <typename T, bool kChannelsLast>
void ScatterExample(const Geometry& g, const uint8_t* index, const T* upstream,
                    int64_t n, Acc<T>* sum) {
  using A = Acc<T>;
  const int64_t C = g.channels;
  const int64_t ics = kChannelsLast ? 1 : g.in_channel_stride;
  const int64_t ocs = kChannelsLast ? 1 : g.out_channel_stride;
  for (int64_t o = 0; o < g.out_cells; ++o) {
    const int64_t out = n * g.out_example + g.OutputOffset(o);
    const uint8_t* __restrict__ ip = index + out;
    const T* __restrict__ up = upstream + out;
    g.ForEachCell(o, [&](int64_t j, int64_t offset) {
      A* __restrict__ sp = sum + offset;
      const uint8_t position = static_cast<uint8_t>(j);
      for (int64_t c = 0; c < C; ++c) {
        const A d = static_cast<A>(up[c * ocs]);
        sp[c * ics] += ip[c * ocs] == position ? d : A(0);
      }
    });
  }
}

template <typename T>
class ScatterGradOp : public WindowOp {
 public:
  using WindowOp::WindowOp;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Geometry g;
    OP_REQUIRES_OK(ctx, MakeGeometry(x.shape(), &g));
    const TensorShape shape = g.OutputShape(channels_last_);
    OP_REQUIRES_OK(ctx, CheckShape(ctx->input(1), shape, "index"));
    OP_REQUIRES_OK(ctx, CheckShape(ctx->input(2), shape, "upstream"));
    const uint8_t* index = ctx->input(1).flat<uint8_t>().data();
    const T* upstream = ctx->input(2).flat<T>().data();
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    T* dxp = dx->flat<T>().data();
    AccumulateExamples(ctx, g, dxp, [&](int64_t n, Acc<T>* sum) {
      WithLayout([&](auto last) {
        ScatterExample<T, decltype(last)::value>(g, index, upstream, n, sum);
      });
    });
  }
};

#define KPOOL_RANDOM_ATTRS                                     \
  Attr("random: bool = false")                                 \
      .Attr("alpha: float = 0.5")                              \
      .Attr("granularity: {'region', 'channel', 'layer'} = 'region'")

// The draws of `tf.random.stateless_uniform(..., dtype=tf.float32,
// alg="philox")`, which fills its output in groups of four from successive
// Philox-4x32-10 counters (`StatelessRandomUniformV2`, `FillPhiloxRandom`):
// element `i` is lane `i % 4` of the block at counter `counter + i / 4`,
// made a float in [0, 1) from its low 23 bits. TensorFlow's `PhiloxRandom`
// computes one block at a time; this computes up to `kBlocks` side by side
// so that the rounds vectorize, with the same arithmetic.
class Uniforms {
 public:
  static constexpr int64_t kBlocks = 16;

  Uniforms() = default;
  Uniforms(const uint64_t* key, const uint64_t* counter)
      : key_(::tensorflow::GetKeyFromMem(key)),
        counter_(::tensorflow::GetCounterFromMem(counter)) {}

  // `out[k]` = element `first + k * stride`, for `k < count`.
  void Fill(int64_t first, int64_t count, int64_t stride, float* out) const {
    float draws[4 * kBlocks];
    if (stride != 1) {
      for (int64_t k = 0; k < count; ++k) {
        const int64_t i = first + k * stride;
        Blocks(i / 4, 1, draws);
        out[k] = draws[i % 4];
      }
      return;
    }
    int64_t k = 0;
    while (k < count) {
      const int64_t i = first + k;
      const int64_t blocks =
          std::min<int64_t>(kBlocks, (i % 4 + count - k + 3) / 4);
      Blocks(i / 4, blocks, draws);
      const int64_t n = std::min<int64_t>(4 * blocks - i % 4, count - k);
      std::copy(draws + i % 4, draws + i % 4 + n, out + k);
      k += n;
    }
  }

 private:
  // The floats of blocks `first` to `first + blocks - 1` (`blocks <=
  // kBlocks`), four per block.
  void Blocks(int64_t first, int64_t blocks, float* out) const {
    constexpr uint32_t kW32A = 0x9E3779B9, kW32B = 0xBB67AE85;
    constexpr uint32_t kM4x32A = 0xD2511F53, kM4x32B = 0xCD9E8D57;
    uint32_t c0[kBlocks] = {}, c1[kBlocks] = {}, c2[kBlocks] = {},
             c3[kBlocks] = {};
    for (int64_t b = 0; b < blocks; ++b) {
      // `PhiloxRandom::Skip(first + b)`.
      const uint64_t skip = static_cast<uint64_t>(first + b);
      const uint32_t skip_lo = static_cast<uint32_t>(skip);
      uint32_t skip_hi = static_cast<uint32_t>(skip >> 32);
      uint32_t x0 = counter_[0] + skip_lo;
      if (x0 < skip_lo) ++skip_hi;
      uint32_t x1 = counter_[1] + skip_hi, x2 = counter_[2], x3 = counter_[3];
      if (x1 < skip_hi && ++x2 == 0) ++x3;
      c0[b] = x0;
      c1[b] = x1;
      c2[b] = x2;
      c3[b] = x3;
    }
    uint32_t k0 = key_[0], k1 = key_[1];
#if defined(__AVX2__)
    // Eight blocks per vector. Compilers do not vectorize the widening
    // multiplies of the scalar loop below.
    for (int64_t b = 0; b < kBlocks; b += 8) {
      __m256i x0 = Load(c0 + b), x1 = Load(c1 + b), x2 = Load(c2 + b),
              x3 = Load(c3 + b);
      const __m256i ma = _mm256_set1_epi32(static_cast<int>(kM4x32A));
      const __m256i mb = _mm256_set1_epi32(static_cast<int>(kM4x32B));
      uint32_t r0 = k0, r1 = k1;
      for (int round = 0; round < 10; ++round) {
        __m256i hi0, lo0, hi1, lo1;
        MultiplyHighLow(x0, ma, &hi0, &lo0);
        MultiplyHighLow(x2, mb, &hi1, &lo1);
        x0 = _mm256_xor_si256(
            _mm256_xor_si256(hi1, x1), _mm256_set1_epi32(static_cast<int>(r0)));
        x2 = _mm256_xor_si256(
            _mm256_xor_si256(hi0, x3), _mm256_set1_epi32(static_cast<int>(r1)));
        x1 = lo1;
        x3 = lo0;
        r0 += kW32A;
        r1 += kW32B;
      }
      Store(c0 + b, x0);
      Store(c1 + b, x1);
      Store(c2 + b, x2);
      Store(c3 + b, x3);
    }
#else
    for (int round = 0; round < 10; ++round) {
      for (int64_t b = 0; b < kBlocks; ++b) {
        const uint64_t p0 = static_cast<uint64_t>(kM4x32A) * c0[b];
        const uint64_t p1 = static_cast<uint64_t>(kM4x32B) * c2[b];
        const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[b] ^ k0;
        const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[b] ^ k1;
        c1[b] = static_cast<uint32_t>(p1);
        c3[b] = static_cast<uint32_t>(p0);
        c0[b] = n0;
        c2[b] = n2;
      }
      k0 += kW32A;
      k1 += kW32B;
    }
#endif
    for (int64_t b = 0; b < blocks; ++b) {
      out[4 * b] = ToFloat(c0[b]);
      out[4 * b + 1] = ToFloat(c1[b]);
      out[4 * b + 2] = ToFloat(c2[b]);
      out[4 * b + 3] = ToFloat(c3[b]);
    }
  }

#if defined(__AVX2__)
  static __m256i Load(const uint32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static void Store(uint32_t* p, __m256i v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  }
  // The low and high 32 bits of each 32-bit lane of `a` times `m`'s.
  static void MultiplyHighLow(__m256i a, __m256i m, __m256i* high,
                              __m256i* low) {
    const __m256i even = _mm256_mul_epu32(a, m);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *low = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    *high = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  }
#endif

  // `tsl::random::Uint32ToFloat`.
  static float ToFloat(uint32_t x) {
    const uint32_t bits = (127u << 23) | (x & 0x7fffffu);
    float result;
    std::memcpy(&result, &bits, sizeof(bits));
    return result - 1.0f;
  }

  ::tensorflow::random::PhiloxRandom::Key key_;
  ::tensorflow::random::PhiloxRandom::ResultType counter_;
};

// Random mixing: which of max (1) and average (0) pooling each unit takes.
struct RandomMixing {
  bool enabled = false;
  float alpha = 0.5f;
  int granularity = 0;  // 0 region, 1 channel, 2 layer.
  Uniforms uniforms;

  // `a[c]` for every channel of output position `o` of example `n`.
  template <typename A>
  void Choices(const Geometry& g, bool channels_last, int64_t n, int64_t o,
               float* scratch, A* a) const {
    const int64_t C = g.channels;
    if (granularity == 0) {
      const int64_t first = n * g.out_example + g.OutputOffset(o);
      uniforms.Fill(first, C, channels_last ? 1 : g.out_channel_stride,
                    scratch);
    } else if (granularity == 1) {
      uniforms.Fill(n * C, C, 1, scratch);
    } else {
      uniforms.Fill(n, 1, 1, scratch);
      std::fill(scratch + 1, scratch + C, scratch[0]);
    }
    for (int64_t c = 0; c < C; ++c) a[c] = scratch[c] < alpha ? A(1) : A(0);
  }
};

// ---------------------------------------------------------------------------
// KpoolMixedPool: `avg + a * (max - avg)` for each window, with `max` its
// maximum (at `index`, the first on ties) and `avg` its mean over the cells
// inside the input. `a` is `weight` (5D, broadcast against the output; an
// `a` of exactly 1 or 0 gives exactly `max` or `avg`) or, with `gated`,
// `sigmoid(sum_j kernel[j, c] * x_j)` (padded cells count as zeros), for a
// `kernel` of shape (window, 1) (one gate per layer) or (window, channels).
// With `random`, `a` is instead 1 where a uniform draw is below `alpha` and
// 0 elsewhere, each draw as `tf.random.stateless_uniform(shape, seed,
// alg="philox")` makes it from `key` and `counter` (its Philox state for
// `seed`), for `shape` the output's for `granularity` "region", (batch,
// channels) for "channel" and (batch,) for "layer".
// The unused ones of `weight`, `kernel` and `key`/`counter` are ignored.
// For the gradient, `index` (the maximum's position) and `difference`
// (`max - avg`), except gated (empty: the gradient computes them again
// from `x`, which it reads anyway), and `choices` (`a`) with `random`, else
// empty.

REGISTER_OP("KpoolMixedPool")
    .Input("x: T")
    .Input("weight: T")
    .Input("kernel: T")
    .Input("key: uint64")
    .Input("counter: uint64")
    .Output("y: T")
    .Output("index: uint8")
    .Output("difference: T")
    .Output("choices: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("gated: bool = false")
    .KPOOL_RANDOM_ATTRS
    .KPOOL_WINDOW_ATTRS
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(PooledShape(c, 4));
      bool gated;
      TF_RETURN_IF_ERROR(c->GetAttr("gated", &gated));
      bool random;
      TF_RETURN_IF_ERROR(c->GetAttr("random", &random));
      if (gated) {
        c->set_output(1, c->Vector(0));
        c->set_output(2, c->Vector(0));
      }
      if (!random) c->set_output(3, c->Vector(0));
      return Status();
    });

// KpoolMixedPoolGrad: the gradient of KpoolMixedPool for `upstream` `g`,
// with `a` the gate computed again from `x` and `kernel` (gated; `index`
// and `difference` are then ignored), the `choices` (random), else
// `weight` (broadcast): each window sends `g * a` to its maximum, `g * (1
// - a) / count` to each of its cells and, gated, `g * (max - avg) * a * (1
// - a) * kernel[j, c]` to cell `j`.
// `weight_product` is `g * (max - avg)` (the gradient of `a`, before its
// broadcast is summed) with `weight_grad`, else empty; `kernel_grad[n, j,
// c]` sums `g * (max - avg) * a * (1 - a) * x_j` over example `n`'s windows
// (over channels too for a (window, 1) kernel), in float (double for double
// `T`), gated, else empty.

REGISTER_OP("KpoolMixedPoolGrad")
    .Input("x: T")
    .Input("index: uint8")
    .Input("upstream: T")
    .Input("difference: T")
    .Input("weight: T")
    .Input("choices: T")
    .Input("kernel: T")
    .Output("dx: T")
    .Output("weight_product: T")
    .Output("kernel_grad: Tgrad")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tgrad: {float, double} = DT_FLOAT")
    .Attr("gated: bool = false")
    .Attr("weight_grad: bool = false")
    .KPOOL_WINDOW_ATTRS
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      bool weight_grad;
      TF_RETURN_IF_ERROR(c->GetAttr("weight_grad", &weight_grad));
      c->set_output(1, weight_grad ? c->input(2) : c->Vector(0));
      c->set_output(2, c->UnknownShapeOfRank(3));
      return Status();
    });

template <typename T>
struct MixInputs {
  const T* x = nullptr;
  const T* weight = nullptr;  // Not gated.
  Broadcast weight_view;
  const T* kernel = nullptr;  // Gated.
  int64_t kernel_channels = 0;
  RandomMixing random;
};

// Mixed pooling's running values over a window, for `width` channels from
// `c0`: maximum, its position, sum and, gated, the gate's logit (`kGate`:
// 0 none, 1 one weight per cell, 2 one per cell and channel).
template <typename T, bool kChannelsLast, int kGate>
void MixWindow(const Geometry& g, const MixInputs<T>& in, const Cells& cells,
               const T* xn, int64_t c0, int64_t width, Acc<T>* __restrict__ bp,
               Acc<T>* __restrict__ wp, Acc<T>* __restrict__ sp,
               Acc<T>* __restrict__ gp) {
  using A = Acc<T>;
  const int64_t ics = kChannelsLast ? 1 : g.in_channel_stride;
  for (int64_t i = 0; i < cells.count; ++i) {
    const T* __restrict__ xp = xn + cells.offset[i] + c0 * ics;
    // Positions are floats (exact below 2**24) so that the compare and
    // both selects are one vector type.
    const A position = static_cast<A>(cells.j[i]);
    const T* __restrict__ w =
        kGate ? in.kernel + cells.j[i] * in.kernel_channels +
                    (kGate == 2 ? c0 : 0)
              : nullptr;
    const A w0 = kGate == 1 ? static_cast<A>(w[0]) : A(0);
    if (i == 0) {
      for (int64_t c = 0; c < width; ++c) {
        const A v = static_cast<A>(xp[c * ics]);
        bp[c] = v;
        wp[c] = position;
        sp[c] = v;
        if (kGate == 1) gp[c] = w0 * v;
        if (kGate == 2) gp[c] = static_cast<A>(w[c]) * v;
      }
      continue;
    }
    for (int64_t c = 0; c < width; ++c) {
      const A v = static_cast<A>(xp[c * ics]);
      const bool higher = v > bp[c];
      bp[c] = higher ? v : bp[c];
      wp[c] = higher ? position : wp[c];
      sp[c] += v;
      if (kGate == 1) gp[c] += w0 * v;
      if (kGate == 2) gp[c] += static_cast<A>(w[c]) * v;
    }
  }
}

// What `MixWindow` computes, for one SIMD packet of channels, gated with
// the gate itself instead of its logit.
template <typename T>
struct MixedPacket {
  Packet<T> best, where, sum, gate;
};

// `MixWindow` for one SIMD packet of channels from `c0`, channels_last and
// `T` its own accumulation type (float, double): the running values stay
// in registers over the window's cells instead of going through memory
// once per cell.
template <typename T, int kGate>
EIGEN_ALWAYS_INLINE MixedPacket<T> MixPacket(const MixInputs<T>& in, const Cells& cells,
                         const T* xn, int64_t c0) {
  using P = Packet<T>;
  const int64_t kc = in.kernel_channels;
  auto weight = [&](int64_t i) {
    const T* w = in.kernel + cells.j[i] * kc;
    return kGate == 1 ? ei::pset1<P>(w[0]) : ei::ploadu<P>(w + c0);
  };
  P v = ei::ploadu<P>(xn + cells.offset[0] + c0);
  P best = v, sum = v;
  P where = ei::pset1<P>(static_cast<T>(cells.j[0]));
  P logit = kGate ? ei::pmul(weight(0), v) : v;
  for (int64_t i = 1; i < cells.count; ++i) {
    v = ei::ploadu<P>(xn + cells.offset[i] + c0);
    const P higher = ei::pcmp_lt(best, v);
    best = ei::pselect(higher, v, best);
    where = ei::pselect(higher, ei::pset1<P>(static_cast<T>(cells.j[i])),
                        where);
    sum = ei::padd(sum, v);
    if (kGate) logit = ei::pmadd(weight(i), v, logit);
  }
  if (kGate) {
    const P one = ei::pset1<P>(T(1));
    logit = ei::pdiv(one, ei::padd(one, ei::pexp(ei::pnegate(logit))));
  }
  return {best, where, sum, logit};
}

// `MixWindow` and the gate for channels `c0` to `C`, into `best`,
// `where`, `sum` and `gate` (each indexed by channel).
template <typename T, bool kChannelsLast, int kGate>
void MixChannels(const Geometry& g, const MixInputs<T>& in, const Cells& cells,
                 const T* xn, int64_t c0, std::vector<Acc<T>>* best,
                 std::vector<Acc<T>>* where, std::vector<Acc<T>>* sum,
                 Eigen::Array<Acc<T>, Eigen::Dynamic, 1>* gate) {
  const int64_t width = g.channels - c0;
  if (width == 0) return;
  MixWindow<T, kChannelsLast, kGate>(g, in, cells, xn, c0, width,
                                     best->data() + c0, where->data() + c0,
                                     sum->data() + c0, gate->data() + c0);
  if (kGate) {
    // Eigen's exp vectorizes.
    auto tail = gate->segment(c0, width);
    tail = Acc<T>(1) / (Acc<T>(1) + (-tail).exp());
  }
}

template <typename T, bool kChannelsLast, int kGate>
void MixedPoolShard(const Geometry& g, const MixInputs<T>& in, T* y,
                    uint8_t* index, T* difference, T* choices, int64_t start,
                    int64_t limit) {
  using A = Acc<T>;
  const int64_t C = g.channels;
  const int64_t ocs = kChannelsLast ? 1 : g.out_channel_stride;
  const int64_t packed = PacketChannels<T, kChannelsLast>(C);
  std::vector<A> best(C), where(C), sum(C), chosen(C);
  std::vector<float> draws(C);
  Eigen::Array<A, Eigen::Dynamic, 1> gate(C);
  Cells cells;
  for (int64_t unit = start; unit < limit; ++unit) {
    const int64_t n = unit / g.out_cells, o = unit % g.out_cells;
    const T* xn = in.x + n * g.in_example;
    cells.Collect(g, o);
    const A inverse = A(1) / static_cast<A>(cells.count);
    const int64_t out = n * g.out_example + g.OutputOffset(o);
    if (in.random.enabled) {
      in.random.Choices(g, kChannelsLast, n, o, draws.data(), chosen.data());
    }
    const T* weight = kGate || in.random.enabled
                          ? nullptr
                          : in.weight + in.weight_view.Base(g, n, o);
    const int64_t wcs = in.weight_view.ChannelStride();
    if constexpr (std::is_same<T, A>::value) {
      using P = Packet<T>;
      const P one = ei::pset1<P>(T(1)), zero = ei::pset1<P>(T(0));
      const P scale = ei::pset1<P>(inverse);
      for (int64_t c0 = 0; c0 < packed; c0 += kPacketSize<T>) {
        const MixedPacket<T> r = MixPacket<T, kGate>(in, cells, xn, c0);
        const P a = kGate    ? r.gate
                    : weight ? (wcs ? ei::ploadu<P>(weight + c0)
                                    : ei::pset1<P>(weight[0]))
                             : ei::ploadu<P>(chosen.data() + c0);
        const P avg = ei::pmul(r.sum, scale);
        const P spread = ei::psub(r.best, avg);
        const P mixed = ei::pmadd(a, spread, avg);
        ei::pstoreu(y + out + c0,
                    ei::pselect(ei::pcmp_eq(a, one), r.best,
                                ei::pselect(ei::pcmp_eq(a, zero), avg, mixed)));
        if (kGate) continue;
        ei::pstoreu(where.data() + c0, r.where);
        ei::pstoreu(difference + out + c0, spread);
        if (choices) ei::pstoreu(choices + out + c0, a);
      }
      if (!kGate) {
        for (int64_t c = 0; c < packed; ++c) {
          index[out + c] = static_cast<uint8_t>(where[c]);
        }
      }
    }
    if (packed == C) continue;
    // The other channels, one at a time.
    MixChannels<T, kChannelsLast, kGate>(g, in, cells, xn, packed, &best,
                                         &where, &sum, &gate);
    for (int64_t c = packed; c < C; ++c) {
      const A a = kGate    ? gate[c]
                  : weight ? static_cast<A>(weight[c * wcs])
                           : chosen[c];
      const A avg = sum[c] * inverse;
      const A spread = best[c] - avg;
      const A mixed = avg + a * spread;
      y[out + c * ocs] =
          static_cast<T>(a == A(1) ? best[c] : (a == A(0) ? avg : mixed));
      if (kGate) continue;
      index[out + c * ocs] = static_cast<uint8_t>(where[c]);
      difference[out + c * ocs] = static_cast<T>(spread);
      if (choices) choices[out + c * ocs] = static_cast<T>(a);
    }
  }
}

class MixedOp : public WindowOp {
 public:
  explicit MixedOp(OpKernelConstruction* c) : WindowOp(c) {
    OP_REQUIRES_OK(c, c->GetAttr("gated", &gated_));
    if (c->HasAttr("random")) {  // The forward op.
      OP_REQUIRES_OK(c, c->GetAttr("random", &random_));
      OP_REQUIRES_OK(c, c->GetAttr("alpha", &alpha_));
      std::string granularity;
      OP_REQUIRES_OK(c, c->GetAttr("granularity", &granularity));
      granularity_ = granularity == "region" ? 0
                     : granularity == "channel" ? 1
                                                : 2;
    }
  }

 protected:
  // Reads `weight`, `kernel` (gated) or `key` and `counter` (random) into
  // `in`.
  template <typename T>
  Status Mixing(const Tensor& weight, const Tensor& kernel, const Tensor& key,
                const Tensor& counter, const Geometry& g,
                MixInputs<T>* in) const {
    if (random_) {
      if (key.NumElements() != 1 || counter.NumElements() != 2) {
        return InvalidArgument("`key` must have 1 element and `counter` 2");
      }
      in->random.enabled = true;
      in->random.alpha = alpha_;
      in->random.granularity = granularity_;
      in->random.uniforms = Uniforms(key.flat<uint64_t>().data(),
                                     counter.flat<uint64_t>().data());
      return Status();
    }
    if (!gated_) {
      TF_RETURN_IF_ERROR(in->weight_view.Init(
          weight.shape(), g.OutputShape(channels_last_), channels_last_,
          "weight"));
      in->weight = weight.flat<T>().data();
      return Status();
    }
    if (!(kernel.dims() == 2 && kernel.dim_size(0) == g.window &&
          (kernel.dim_size(1) == 1 || kernel.dim_size(1) == g.channels))) {
      return InvalidArgument(
          "`kernel` must be (window, 1) or (window, channels), got " +
          kernel.shape().DebugString());
    }
    in->kernel = kernel.flat<T>().data();
    in->kernel_channels = kernel.dim_size(1);
    return Status();
  }

  bool gated_ = false;
  bool random_ = false;
  float alpha_ = 0.5f;
  int granularity_ = 0;
};

template <typename T>
class MixedPoolOp : public MixedOp {
 public:
  using MixedOp::MixedOp;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Geometry g;
    OP_REQUIRES_OK(ctx, MakeGeometry(x.shape(), &g));
    MixInputs<T> in;
    in.x = x.flat<T>().data();
    OP_REQUIRES_OK(ctx, Mixing(ctx->input(1), ctx->input(2), ctx->input(3),
                               ctx->input(4), g, &in));
    const TensorShape shape = g.OutputShape(channels_last_);
    const TensorShape empty({0});
    Tensor *y = nullptr, *index = nullptr, *difference = nullptr,
           *choices = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &y));
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output(1, gated_ ? empty : shape, &index));
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output(2, gated_ ? empty : shape, &difference));
    OP_REQUIRES_OK(
        ctx, ctx->allocate_output(3, random_ ? shape : empty, &choices));
    T* yp = y->flat<T>().data();
    uint8_t* ip = index->flat<uint8_t>().data();
    T* dp = difference->flat<T>().data();
    T* cp = random_ ? choices->flat<T>().data() : nullptr;
    ForEachOutput(ctx, g, [&](int64_t start, int64_t limit) {
      WithLayout([&](auto last) {
        constexpr bool kLast = decltype(last)::value;
        if (!in.kernel) {
          MixedPoolShard<T, kLast, 0>(g, in, yp, ip, dp, cp, start, limit);
        } else if (in.kernel_channels == 1) {
          MixedPoolShard<T, kLast, 1>(g, in, yp, ip, dp, cp, start, limit);
        } else {
          MixedPoolShard<T, kLast, 2>(g, in, yp, ip, dp, cp, start, limit);
        }
      });
    });
  }
};

template <typename T>
struct MixGradInputs {
  MixInputs<T> mix;
  const T* choices = nullptr;  // Random: `a` for each output cell.
  const uint8_t* index = nullptr;  // Not gated.
  const T* upstream = nullptr;
  const T* difference = nullptr;  // Not gated.
};

// The gradient for one output position's window, for one SIMD packet of
// channels from `c0` (channels_last, `T` float or double): `sum_dx` gets
// what each cell receives, `per_channel` (window, C) the kernel's gradient
// per channel (gated), `weight_product` the gradient of `a` (if wanted).
// Not gated, `positions` holds `index` as `T`, by channel.
template <typename T, int kGate>
EIGEN_ALWAYS_INLINE void MixGradPacket(const Geometry& g, const MixGradInputs<T>& in,
                   const Cells& cells, const T* xn, int64_t out, int64_t c0,
                   T inverse, const T* weight, int64_t wcs,
                   const T* positions, T* weight_product, T* sum_dx,
                   T* per_channel) {
  using P = Packet<T>;
  const int64_t kc = in.mix.kernel_channels;
  const P one = ei::pset1<P>(T(1));
  const P u = ei::ploadu<P>(in.upstream + out + c0);
  P a, where, spread;
  if (kGate) {
    const MixedPacket<T> r = MixPacket<T, kGate>(in.mix, cells, xn, c0);
    a = r.gate;
    where = r.where;
    spread = ei::psub(r.best, ei::pmul(r.sum, ei::pset1<P>(inverse)));
  } else {
    a = in.choices ? ei::ploadu<P>(in.choices + out + c0)
        : wcs      ? ei::ploadu<P>(weight + c0)
                   : ei::pset1<P>(weight[0]);
    where = ei::ploadu<P>(positions + c0);
    spread = ei::ploadu<P>(in.difference + out + c0);
  }
  const P product = ei::pmul(u, spread);
  const P to_max = ei::pmul(u, a);
  const P to_each = ei::pmul(ei::psub(u, to_max), ei::pset1<P>(inverse));
  const P to_gate = ei::pmul(ei::pmul(product, a), ei::psub(one, a));
  if (weight_product) ei::pstoreu(weight_product + out + c0, product);
  const P zero = ei::pset1<P>(T(0));
  for (int64_t i = 0; i < cells.count; ++i) {
    const int64_t j = cells.j[i], offset = cells.offset[i] + c0;
    const P is_max = ei::pcmp_eq(where, ei::pset1<P>(static_cast<T>(j)));
    P add = ei::padd(ei::pselect(is_max, to_max, zero), to_each);
    if (kGate) {
      const T* w = in.mix.kernel + j * kc;
      const P weight_j =
          kGate == 1 ? ei::pset1<P>(w[0]) : ei::ploadu<P>(w + c0);
      add = ei::pmadd(to_gate, weight_j, add);
      T* kg = per_channel + j * g.channels + c0;
      ei::pstoreu(kg, ei::pmadd(to_gate, ei::ploadu<P>(xn + offset),
                                ei::ploadu<P>(kg)));
    }
    ei::pstoreu(sum_dx + offset,
                ei::padd(ei::ploadu<P>(sum_dx + offset), add));
  }
}

template <typename T, bool kChannelsLast, int kGate>
void MixedPoolGradExample(const Geometry& g, const MixGradInputs<T>& in,
                          T* weight_product, Acc<T>* kernel_grad, int64_t n,
                          Acc<T>* sum_dx) {
  using A = Acc<T>;
  const int64_t C = g.channels;
  const int64_t ics = kChannelsLast ? 1 : g.in_channel_stride;
  const int64_t ocs = kChannelsLast ? 1 : g.out_channel_stride;
  const MixInputs<T>& mix = in.mix;
  const T* xn = mix.x + n * g.in_example;
  const int64_t kc = mix.kernel_channels;
  const int64_t packed = PacketChannels<T, kChannelsLast>(C);
  // The kernel's gradient is summed per channel (a sum over channels does
  // not vectorize without reassociating), then over channels for a (window,
  // 1) kernel.
  std::vector<A> per_channel(kGate ? g.window * C : 0, A(0));
  std::vector<A> best(C), where(C), sum(C);
  Eigen::Array<A, Eigen::Dynamic, 1> gate(C);
  std::vector<A> to_max(C), to_each(C), to_gate(C);
  Cells cells;
  for (int64_t o = 0; o < g.out_cells; ++o) {
    cells.Collect(g, o);
    const A inverse = A(1) / static_cast<A>(cells.count);
    const int64_t out = n * g.out_example + g.OutputOffset(o);
    const T* weight = in.choices ? in.choices + out
                                 : mix.weight + mix.weight_view.Base(g, n, o);
    const int64_t wcs = in.choices ? ocs : mix.weight_view.ChannelStride();
    if constexpr (std::is_same<T, A>::value) {
      if (!kGate) LoadIndex(in.index + out, packed, where.data());
      for (int64_t c0 = 0; c0 < packed; c0 += kPacketSize<T>) {
        MixGradPacket<T, kGate>(g, in, cells, xn, out, c0, inverse, weight,
                                wcs, where.data(), weight_product, sum_dx,
                                per_channel.data());
      }
    }
    if (packed == C) continue;
    // The other channels, one at a time.
    if (kGate) {
      MixChannels<T, kChannelsLast, kGate>(g, mix, cells, xn, packed, &best,
                                           &where, &sum, &gate);
    }
    const T* __restrict__ up = in.upstream + out;
    for (int64_t c = packed; c < C; ++c) {
      const A a = kGate ? gate[c] : static_cast<A>(weight[c * wcs]);
      const A u = static_cast<A>(up[c * ocs]);
      const A spread =
          kGate ? best[c] - sum[c] * inverse
                : static_cast<A>(in.difference[out + c * ocs]);
      const A product = u * spread;
      if (!kGate) where[c] = static_cast<A>(in.index[out + c * ocs]);
      to_max[c] = u * a;
      to_each[c] = (u - u * a) * inverse;
      to_gate[c] = product * a * (A(1) - a);
      if (weight_product) {
        weight_product[out + c * ocs] = static_cast<T>(product);
      }
    }
    const A* __restrict__ wp = where.data();
    for (int64_t i = 0; i < cells.count; ++i) {
      const int64_t j = cells.j[i], offset = cells.offset[i];
      A* __restrict__ sp = sum_dx + offset;
      const A position = static_cast<A>(j);
      if (!kGate) {
        for (int64_t c = packed; c < C; ++c) {
          sp[c * ics] += (wp[c] == position ? to_max[c] : A(0)) + to_each[c];
        }
        continue;
      }
      const T* __restrict__ xp = xn + offset;
      const T* w = mix.kernel + j * kc;
      A* __restrict__ kgj = per_channel.data() + j * C;
      for (int64_t c = packed; c < C; ++c) {
        const A wc = static_cast<A>(w[kGate == 1 ? 0 : c]);
        sp[c * ics] += (wp[c] == position ? to_max[c] : A(0)) + to_each[c] +
                       to_gate[c] * wc;
        kgj[c] += to_gate[c] * static_cast<A>(xp[c * ics]);
      }
    }
  }
  if (!kGate) return;
  A* kg = kernel_grad + n * g.window * kc;
  for (int64_t j = 0; j < g.window; ++j) {
    const A* kgj = per_channel.data() + j * C;
    if (kc == 1) {
      A total = A(0);
      for (int64_t c = 0; c < C; ++c) total += kgj[c];
      kg[j] = total;
    } else {
      std::copy(kgj, kgj + C, kg + j * C);
    }
  }
}

template <typename T>
class MixedPoolGradOp : public MixedOp {
 public:
  explicit MixedPoolGradOp(OpKernelConstruction* c) : MixedOp(c) {
    OP_REQUIRES_OK(c, c->GetAttr("weight_grad", &weight_grad_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Geometry g;
    OP_REQUIRES_OK(ctx, MakeGeometry(x.shape(), &g));
    MixGradInputs<T> in;
    in.mix.x = x.flat<T>().data();
    const TensorShape shape = g.OutputShape(channels_last_);
    const Tensor& choices = ctx->input(5);
    if (choices.NumElements() == 0) {
      OP_REQUIRES_OK(ctx, Mixing(ctx->input(4), ctx->input(6), Tensor(),
                                 Tensor(), g, &in.mix));
    } else {
      OP_REQUIRES_OK(ctx, CheckShape(choices, shape, "choices"));
      in.choices = choices.flat<T>().data();
    }
    OP_REQUIRES_OK(ctx, CheckShape(ctx->input(2), shape, "upstream"));
    in.upstream = ctx->input(2).flat<T>().data();
    if (!gated_) {
      OP_REQUIRES_OK(ctx, CheckShape(ctx->input(1), shape, "index"));
      OP_REQUIRES_OK(ctx, CheckShape(ctx->input(3), shape, "difference"));
      in.index = ctx->input(1).flat<uint8_t>().data();
      in.difference = ctx->input(3).flat<T>().data();
    }
    Tensor *dx = nullptr, *weight_product = nullptr, *kernel_grad = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            1, weight_grad_ ? shape : TensorShape({0}),
                            &weight_product));
    const TensorShape kernel_grad_shape =
        gated_ ? TensorShape({g.batch, g.window, in.mix.kernel_channels})
               : TensorShape({0, 0, 0});
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output(2, kernel_grad_shape, &kernel_grad));
    T* wp = weight_grad_ ? weight_product->flat<T>().data() : nullptr;
    Acc<T>* kgp = nullptr;
    if (gated_) {
      kgp = kernel_grad->flat<Acc<T>>().data();
      std::fill(kgp, kgp + kernel_grad->NumElements(), Acc<T>(0));
    }
    T* dxp = dx->flat<T>().data();
    AccumulateExamples(ctx, g, dxp, [&](int64_t n, Acc<T>* sum) {
      WithLayout([&](auto last) {
        constexpr bool kLast = decltype(last)::value;
        if (!in.mix.kernel) {
          MixedPoolGradExample<T, kLast, 0>(g, in, wp, kgp, n, sum);
        } else if (in.mix.kernel_channels == 1) {
          MixedPoolGradExample<T, kLast, 1>(g, in, wp, kgp, n, sum);
        } else {
          MixedPoolGradExample<T, kLast, 2>(g, in, wp, kgp, n, sum);
        }
      });
    });
  }

 private:
  bool weight_grad_ = false;
};

// ---------------------------------------------------------------------------
// KpoolStochasticPool: with `a = max(x, 0)`, running sums `c_j` over each
// window's cells in row-major order and `u` in [0, 1) one per output cell,
// the output is `a_j` for the first `j` with `u * c_last < c_j`, and `index`
// is that `j`; a window with no positive cell outputs 0 with index
// `kNoIndex`.

REGISTER_OP("KpoolStochasticPool")
    .Input("x: T")
    .Input("u: T")
    .Output("y: T")
    .Output("index: uint8")
    .Attr("T: {float, double}")
    .KPOOL_WINDOW_ATTRS
    .SetShapeFn([](InferenceContext* c) { return PooledShape(c, 2); });

template <typename T, bool kChannelsLast>
void StochasticPoolShard(const Geometry& g, const T* x, const T* u, T* y,
                         uint8_t* index, int64_t start, int64_t limit) {
  const int64_t C = g.channels;
  const int64_t ics = kChannelsLast ? 1 : g.in_channel_stride;
  const int64_t ocs = kChannelsLast ? 1 : g.out_channel_stride;
  const int64_t packed = PacketChannels<T, kChannelsLast>(C);
  std::vector<T> total(C), threshold(C), running(C), value(C), positions(C);
  std::vector<int32_t> where(C);
  Cells cells;
  for (int64_t unit = start; unit < limit; ++unit) {
    const int64_t n = unit / g.out_cells, o = unit % g.out_cells;
    const T* xn = x + n * g.in_example;
    const int64_t out = n * g.out_example + g.OutputOffset(o);
    cells.Collect(g, o);
    using P = Packet<T>;
    for (int64_t c0 = 0; c0 < packed; c0 += kPacketSize<T>) {
      const P zero = ei::pset1<P>(T(0));
      P sum = zero;
      for (int64_t i = 0; i < cells.count; ++i) {
        sum = ei::padd(sum,
                       PositivePart(ei::ploadu<P>(xn + cells.offset[i] + c0)));
      }
      const P cut = ei::pmul(ei::ploadu<P>(u + out + c0), sum);
      P run = zero, chosen = zero, at = ei::pset1<P>(T(-1));
      for (int64_t i = 0; i < cells.count; ++i) {
        const P a = PositivePart(ei::ploadu<P>(xn + cells.offset[i] + c0));
        run = ei::padd(run, a);
        const P first =
            ei::pand(ei::pcmp_lt(at, zero), ei::pcmp_lt(cut, run));
        at = ei::pselect(first, ei::pset1<P>(static_cast<T>(cells.j[i])), at);
        chosen = ei::pselect(first, a, chosen);
      }
      ei::pstoreu(y + out + c0, chosen);
      ei::pstoreu(positions.data() + c0, at);
    }
    StoreIndex(positions.data(), packed, index + out);
    if (packed == C) continue;
    std::fill(total.begin() + packed, total.end(), T(0));
    for (int64_t i = 0; i < cells.count; ++i) {
      const T* xp = xn + cells.offset[i];
      for (int64_t c = packed; c < C; ++c) {
        total[c] += std::max(xp[c * ics], T(0));
      }
    }
    for (int64_t c = packed; c < C; ++c) {
      threshold[c] = u[out + c * ocs] * total[c];
      running[c] = T(0);
      value[c] = T(0);
      where[c] = -1;
    }
    for (int64_t i = 0; i < cells.count; ++i) {
      const T* xp = xn + cells.offset[i];
      const uint8_t position = cells.j[i];
      for (int64_t c = packed; c < C; ++c) {
        const T a = std::max(xp[c * ics], T(0));
        running[c] += a;
        const bool first = where[c] < 0 && threshold[c] < running[c];
        where[c] = first ? position : where[c];
        value[c] = first ? a : value[c];
      }
    }
    for (int64_t c = packed; c < C; ++c) {
      y[out + c * ocs] = value[c];
      index[out + c * ocs] =
          where[c] < 0 ? kNoIndex : static_cast<uint8_t>(where[c]);
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
    uint8_t* ip = index->flat<uint8_t>().data();
    ForEachOutput(ctx, g, [&](int64_t start, int64_t limit) {
      WithLayout([&](auto last) {
        StochasticPoolShard<T, decltype(last)::value>(
            g, xp, up, yp, ip, start, limit);
      });
    });
  }
};

// ---------------------------------------------------------------------------
// KpoolStochasticExpectation: with `a = max(x, 0)`, `sum_j a_j**2 / sum_j a_j`
// over each window (0 where the sum is 0).

REGISTER_OP("KpoolStochasticExpectation")
    .Input("x: T")
    .Output("y: T")
    .Attr("T: {float, double}")
    .KPOOL_WINDOW_ATTRS
    .SetShapeFn([](InferenceContext* c) { return PooledShape(c, 1); });

// KpoolStochasticExpectationGrad: each window sends `g * (2 a_j - y) /
// sum_j a_j` to each cell `j` with a positive input, and nothing from a
// window summing to 0.

REGISTER_OP("KpoolStochasticExpectationGrad")
    .Input("x: T")
    .Input("upstream: T")
    .Output("dx: T")
    .Attr("T: {float, double}")
    .KPOOL_WINDOW_ATTRS
    .SetShapeFn(InputShape);

// Per-channel sums of `a` and `a**2` over one window (`cells`).
template <typename T, bool kChannelsLast>
void PositiveSums(const Geometry& g, const T* xn, const Cells& cells, T* sum,
                  T* squares) {
  const int64_t C = g.channels;
  const int64_t ics = kChannelsLast ? 1 : g.in_channel_stride;
  const int64_t packed = PacketChannels<T, kChannelsLast>(C);
  using P = Packet<T>;
  for (int64_t c0 = 0; c0 < packed; c0 += kPacketSize<T>) {
    P total = ei::pset1<P>(T(0)), total_squares = total;
    for (int64_t i = 0; i < cells.count; ++i) {
      const P a = PositivePart(ei::ploadu<P>(xn + cells.offset[i] + c0));
      total = ei::padd(total, a);
      total_squares = ei::padd(total_squares, ei::pmul(a, a));
    }
    ei::pstoreu(sum + c0, total);
    ei::pstoreu(squares + c0, total_squares);
  }
  std::fill(sum + packed, sum + C, T(0));
  std::fill(squares + packed, squares + C, T(0));
  for (int64_t i = 0; i < cells.count; ++i) {
    const T* __restrict__ xp = xn + cells.offset[i];
    for (int64_t c = packed; c < C; ++c) {
      const T a = std::max(xp[c * ics], T(0));
      sum[c] += a;
      squares[c] += a * a;
    }
  }
}

template <typename T, bool kChannelsLast>
void StochasticExpectationShard(const Geometry& g, const T* x, T* y,
                                int64_t start, int64_t limit) {
  const int64_t C = g.channels;
  const int64_t ocs = kChannelsLast ? 1 : g.out_channel_stride;
  std::vector<T> sum(C), squares(C);
  Cells cells;
  for (int64_t unit = start; unit < limit; ++unit) {
    const int64_t n = unit / g.out_cells, o = unit % g.out_cells;
    cells.Collect(g, o);
    PositiveSums<T, kChannelsLast>(g, x + n * g.in_example, cells, sum.data(),
                                   squares.data());
    const int64_t out = n * g.out_example + g.OutputOffset(o);
    for (int64_t c = 0; c < C; ++c) {
      y[out + c * ocs] = sum[c] > T(0) ? squares[c] / sum[c] : T(0);
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
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output(0, g.OutputShape(channels_last_), &y));
    const T* xp = x.flat<T>().data();
    T* yp = y->flat<T>().data();
    ForEachOutput(ctx, g, [&](int64_t start, int64_t limit) {
      WithLayout([&](auto last) {
        StochasticExpectationShard<T, decltype(last)::value>(
            g, xp, yp, start, limit);
      });
    });
  }
};

template <typename T, bool kChannelsLast>
void StochasticExpectationGradExample(const Geometry& g, const T* x,
                                      const T* upstream, int64_t n, T* sum_dx) {
  const int64_t C = g.channels;
  const int64_t ics = kChannelsLast ? 1 : g.in_channel_stride;
  const int64_t ocs = kChannelsLast ? 1 : g.out_channel_stride;
  const int64_t packed = PacketChannels<T, kChannelsLast>(C);
  const T* xn = x + n * g.in_example;
  std::vector<T> sum(C), squares(C), scale(C), shift(C);
  Cells cells;
  for (int64_t o = 0; o < g.out_cells; ++o) {
    cells.Collect(g, o);
    PositiveSums<T, kChannelsLast>(g, xn, cells, sum.data(), squares.data());
    const int64_t out = n * g.out_example + g.OutputOffset(o);
    for (int64_t c = 0; c < C; ++c) {
      const bool positive = sum[c] > T(0);
      const T safe = positive ? sum[c] : T(1);
      // d y / d a_j = (2 a_j - y) / sum = scale * a_j - shift.
      scale[c] = positive ? T(2) * upstream[out + c * ocs] / safe : T(0);
      shift[c] = scale[c] * T(0.5) * (squares[c] / safe);
    }
    using P = Packet<T>;
    const P zero = ei::pset1<P>(T(0));
    for (int64_t i = 0; i < cells.count; ++i) {
      const T* __restrict__ xp = xn + cells.offset[i];
      T* __restrict__ sp = sum_dx + cells.offset[i];
      for (int64_t c0 = 0; c0 < packed; c0 += kPacketSize<T>) {
        const P v = ei::ploadu<P>(xp + c0);
        const P send = ei::psub(ei::pmul(ei::ploadu<P>(scale.data() + c0), v),
                                ei::ploadu<P>(shift.data() + c0));
        ei::pstoreu(sp + c0,
                    ei::padd(ei::ploadu<P>(sp + c0),
                             ei::pselect(ei::pcmp_lt(zero, v), send, zero)));
      }
      for (int64_t c = packed; c < C; ++c) {
        const T v = xp[c * ics];
        sp[c * ics] += v > T(0) ? scale[c] * v - shift[c] : T(0);
      }
    }
  }
}

template <typename T>
class StochasticExpectationGradOp : public WindowOp {
 public:
  using WindowOp::WindowOp;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Geometry g;
    OP_REQUIRES_OK(ctx, MakeGeometry(x.shape(), &g));
    OP_REQUIRES_OK(ctx, CheckShape(ctx->input(1),
                                   g.OutputShape(channels_last_), "upstream"));
    const T* xp = x.flat<T>().data();
    const T* up = ctx->input(1).flat<T>().data();
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    AccumulateExamples(ctx, g, dx->flat<T>().data(), [&](int64_t n, T* sum) {
      WithLayout([&](auto last) {
        StochasticExpectationGradExample<T, decltype(last)::value>(
            g, xp, up, n, sum);
      });
    });
  }
};

#define KPOOL_REGISTER(name, op, type)                                      \
  REGISTER_KERNEL_BUILDER(                                                  \
      Name(name).Device(DEVICE_CPU).TypeConstraint<type>("T"), op<type>)

#define KPOOL_REGISTER_ALL_TYPES(name, op)      \
  KPOOL_REGISTER(name, op, Eigen::half);        \
  KPOOL_REGISTER(name, op, Eigen::bfloat16);    \
  KPOOL_REGISTER(name, op, float);              \
  KPOOL_REGISTER(name, op, double)

#define KPOOL_REGISTER_MIXED_GRAD(type)                        \
  REGISTER_KERNEL_BUILDER(Name("KpoolMixedPoolGrad")           \
                              .Device(DEVICE_CPU)              \
                              .TypeConstraint<type>("T")       \
                              .TypeConstraint<Acc<type>>("Tgrad"), \
                          MixedPoolGradOp<type>)

KPOOL_REGISTER_ALL_TYPES("KpoolMinPool", MinPoolOp);
KPOOL_REGISTER_ALL_TYPES("KpoolScatterGrad", ScatterGradOp);
KPOOL_REGISTER_ALL_TYPES("KpoolMixedPool", MixedPoolOp);
KPOOL_REGISTER_MIXED_GRAD(Eigen::half);
KPOOL_REGISTER_MIXED_GRAD(Eigen::bfloat16);
KPOOL_REGISTER_MIXED_GRAD(float);
KPOOL_REGISTER_MIXED_GRAD(double);
KPOOL_REGISTER("KpoolStochasticPool", StochasticPoolOp, float);
KPOOL_REGISTER("KpoolStochasticPool", StochasticPoolOp, double);
KPOOL_REGISTER("KpoolStochasticExpectation", StochasticExpectationOp, float);
KPOOL_REGISTER("KpoolStochasticExpectation", StochasticExpectationOp, double);
KPOOL_REGISTER("KpoolStochasticExpectationGrad", StochasticExpectationGradOp,
               float);
KPOOL_REGISTER("KpoolStochasticExpectationGrad", StochasticExpectationGradOp,
               double);

}  // namespace
}  // namespace kpool
