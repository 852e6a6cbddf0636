#pragma once
/// \file
/// What a backend supplies to the network descriptions of `carousel::nn` (UNet2DConditionModel, VaeDecoder,
/// ClipTextModel): a *layers trait* `L`, a struct of types and static functions, and the option structs its layers are
/// built and called with.
///
/// The networks own the module tree, the checkpoint key prefixes, the channel arithmetic and the forward data flow;
/// the trait owns the tensors, the arithmetic and how a batch is laid out in memory (NCHW on the CPU, NHWC on CUDA:
/// a network never indexes a tensor's dimensions itself, it asks `L::image_size`). Its requirements, as concepts:
///
/// - `LayerTypes<L>` (enough to build a network, e.g. to walk its weights):
///   `L::Tensor`, `L::Context` (what every forward call carries: the CPU's BatchMode, a CUDA Engine),
///   `L::Weights` (where parameters come from: checkpoint::WeightSource, or a source plus an element type),
///   `L::TimestepInput` (one timestep per batch item, as the UNet takes them), `L::name` (for error messages), and
///   the layers `Linear`, `Conv2d`, `GroupNorm`, `LayerNorm`, `Attention`, `Embedding`, `Timesteps`, each
///   constructible as `Layer(weights, prefix, options)` from the option struct of the same name below. A layer takes
///   its parameters from `weights` under `prefix` (prefix + "weight", prefix + "bias", ...), once each, with their
///   expected shapes.
/// - `Layers<L>` (enough to run one): the layers' forward calls and the free operations listed in the concept.
///
/// Residual additions are arguments of the layer that produces the sum (`linear.forward(ctx, x, {.residual = &h})`)
/// so that a backend can fuse them into its GEMM epilogue; the CPU adds them afterwards, with the same result.

#include <concepts>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace carousel::nn {

/// Options of a Linear layer: y = x W^T (+ b) over the last dimension.
struct LinearOptions {
  std::int64_t in = 0;   ///< input features
  std::int64_t out = 0;  ///< output features
  bool bias = true;      ///< prefix + "bias" [out] is loaded and added
  bool conv1x1 = false;  ///< the weight is stored as a 1x1 convolution [out, in, 1, 1] (same matrix)
};

/// Options of a Conv2d layer (square kernel, zero padding, with bias).
struct Conv2dOptions {
  std::int64_t in = 0;        ///< input channels
  std::int64_t out = 0;       ///< output channels
  std::int64_t kernel = 3;    ///< kernel side
  std::int64_t stride = 1;    ///< stride
  std::int64_t padding = -1;  ///< zero padding on every side; -1: kernel / 2 ("same" for odd kernels at stride 1)
};

/// Options of a GroupNorm layer (affine).
struct GroupNormOptions {
  std::int64_t channels = 0;  ///< normalised channels
  std::int64_t groups = 32;   ///< groups of channels / groups channels
  float eps = 1e-5f;          ///< added to the variance
  bool silu = false;          ///< SiLU after the affine transform (diffusers' norm followed by nonlinearity)
};

/// Options of a LayerNorm layer over the last dimension (affine).
struct LayerNormOptions {
  std::int64_t width = 0;  ///< normalised width
  float eps = 1e-5f;       ///< added to the variance
};

/// Parameter names of an attention layer's projections under its prefix.
struct AttentionNames {
  std::string q = "to_q", k = "to_k", v = "to_v", out = "to_out.0";  ///< diffusers' names
  /// transformers' CLIP names: q_proj, k_proj, v_proj, out_proj.
  static AttentionNames clip() { return {"q_proj", "k_proj", "v_proj", "out_proj"}; }
};

/// Options of a multi-head Attention layer (diffusers' Attention with AttnProcessor, or CLIP's self-attention):
/// projections q, k, v [dim, in] (biases optional) and out [dim, dim] (with bias); head h uses the columns
/// h * dim / heads .. (h + 1) * dim / heads.
struct AttentionOptions {
  std::int64_t dim = 0;          ///< query width (and the width of the output)
  std::int64_t heads = 1;        ///< heads; dim % heads == 0
  std::int64_t context_dim = 0;  ///< width of the keys' and values' input; 0: self-attention (the input itself)
  bool qkv_bias = false;         ///< q, k and v have biases
  AttentionNames names{};        ///< the projections' names
};

/// Options of an Embedding table [rows, width] (prefix + "weight").
struct EmbeddingOptions {
  std::int64_t rows = 0;   ///< entries (vocabulary size, positions)
  std::int64_t width = 0;  ///< width of an entry
};

/// Options of the sinusoidal timestep embedding (diffusers' Timesteps, no parameters):
/// f_i = exp(-ln(10000) i / (half - freq_shift)), rows [sin tf, cos tf], or [cos tf, sin tf] with flip_sin_to_cos.
struct TimestepsOptions {
  std::int64_t channels = 0;    ///< embedding width
  bool flip_sin_to_cos = true;  ///< cosines first
  float freq_shift = 0.0f;      ///< downscale_freq_shift
};

/// Extra inputs of a Linear forward call.
template <class Tensor>
struct LinearArgs {
  const Tensor* residual = nullptr;  ///< added to the output (same shape)
};

/// Extra inputs of a Conv2d forward call.
template <class Tensor>
struct Conv2dArgs {
  const Tensor* per_item = nullptr;  ///< [batch, out]: added to every pixel of its item's channel (a time embedding)
  const Tensor* residual = nullptr;  ///< added to the output (same shape)
};

/// Extra inputs of an Attention forward call.
template <class Tensor>
struct AttentionArgs {
  const Tensor* context = nullptr;   ///< keys' and values' input [batch, lk, context_dim]; required iff context_dim > 0
  bool causal = false;               ///< query i sees keys j <= i only
  const Tensor* residual = nullptr;  ///< added to the output (same shape as the input)
};

/// Element-wise activations the networks apply.
enum class Activation {
  silu,        ///< x * sigmoid(x)
  gelu,        ///< exact erf GELU
  quick_gelu,  ///< x * sigmoid(1.702 x) (CLIP)
};

/// Extents of a batch of images, whatever the layout.
struct ImageSize {
  std::int64_t batch = 0;     ///< items
  std::int64_t channels = 0;  ///< channels per pixel
  std::int64_t height = 0;    ///< rows
  std::int64_t width = 0;     ///< columns
};

/// Token id rows, one per batch item (the text encoder's input on every backend).
using TokenIds = std::span<const std::vector<std::int32_t>>;

/// Building a network: L's types and its layers' constructors.
template <class L>
concept LayerTypes = requires {
  typename L::Tensor;
  typename L::Context;
  typename L::Weights;
  typename L::TimestepInput;
}
&&std::convertible_to<decltype(L::name), std::string_view>&& std::constructible_from<
    typename L::Linear, typename L::Weights&, const std::string&, const LinearOptions&>&&
    std::constructible_from<typename L::Conv2d, typename L::Weights&, const std::string&, const Conv2dOptions&>&&
        std::constructible_from<typename L::GroupNorm, typename L::Weights&, const std::string&,
                                const GroupNormOptions&>&&
            std::constructible_from<typename L::LayerNorm, typename L::Weights&, const std::string&,
                                    const LayerNormOptions&>&&
                std::constructible_from<typename L::Attention, typename L::Weights&, const std::string&,
                                        const AttentionOptions&>&&
                    std::constructible_from<typename L::Embedding, typename L::Weights&, const std::string&,
                                            const EmbeddingOptions&>&&
                        std::constructible_from<typename L::Timesteps, typename L::Weights&, const TimestepsOptions&>;

/// Running a network: the layers' forward calls and the free operations, on L::Tensor under an L::Context.
template <class L>
concept Layers = LayerTypes<L> &&
    requires(const typename L::Context& ctx, const typename L::Tensor& x, typename L::Tensor& inout,
             std::vector<typename L::Tensor>& parts, typename L::TimestepInput t, TokenIds ids, std::int64_t n, float f,
             const typename L::Linear& linear, const typename L::Conv2d& conv, const typename L::GroupNorm& group_norm,
             const typename L::LayerNorm& layer_norm, const typename L::Attention& attention,
             const typename L::Embedding& embedding, const typename L::Timesteps& timesteps) {
  // Layers. Linear: over the last dimension. Conv2d, GroupNorm: images. LayerNorm, Attention: tokens [batch, l, C]
  // as to_tokens makes them. Timesteps: [batch, channels].
  { linear.forward(ctx, x, LinearArgs<typename L::Tensor>{}) } -> std::same_as<typename L::Tensor>;
  { conv.forward(ctx, x, Conv2dArgs<typename L::Tensor>{}) } -> std::same_as<typename L::Tensor>;
  { group_norm.forward(ctx, x) } -> std::same_as<typename L::Tensor>;
  { layer_norm.forward(ctx, x) } -> std::same_as<typename L::Tensor>;
  { attention.forward(ctx, x, AttentionArgs<typename L::Tensor>{}) } -> std::same_as<typename L::Tensor>;
  { timesteps.forward(ctx, t) } -> std::same_as<typename L::Tensor>;
  // The extents of an image batch, or nullopt when x is not one.
  { L::image_size(x) } -> std::same_as<std::optional<ImageSize>>;
  // Element-wise: activation in place; GEGLU (first half * gelu(second half) over the last dimension);
  // scale * x + shift.
  L::activate(ctx, inout, Activation::silu);
  { L::geglu(ctx, x) } -> std::same_as<typename L::Tensor>;
  { L::affine(ctx, x, f, f) } -> std::same_as<typename L::Tensor>;
  // Images: concatenation along channels, nearest-neighbour resize to (height, width), and the token view of an
  // image (one token per pixel) and back (to the shape of `like`).
  { L::concat_channels(ctx, x, x) } -> std::same_as<typename L::Tensor>;
  { L::upsample_nearest(ctx, x, n, n) } -> std::same_as<typename L::Tensor>;
  { L::to_tokens(ctx, x) } -> std::convertible_to<const typename L::Tensor&>;
  { L::from_tokens(ctx, x, x) } -> std::same_as<typename L::Tensor>;
  // Text: token + position embeddings of the id rows [batch, l, width].
  { L::text_embeddings(ctx, embedding, embedding, ids) } -> std::same_as<typename L::Tensor>;
  // Batches in groups: how many of `batch` items to run through a layer stack together (extent: GEMM rows or
  // columns per item; floats: the stack's widest buffer per item), slicing items [first, first + count) and joining
  // slices back along the batch.
  { L::items_per_group(ctx, n, n, n) } -> std::same_as<std::int64_t>;
  { L::items(ctx, x, n, n) } -> std::same_as<typename L::Tensor>;
  { L::join_items(ctx, parts) } -> std::same_as<typename L::Tensor>;
};

}  // namespace carousel::nn
