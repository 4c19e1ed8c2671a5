// The native model engine: the DeepSeek-V2/V3 forward pass (DeepseekV2DecoderLayer of the
// published modeling code) run in C++ on one Backend, over a paged latent KV cache, for a
// batch of sequences per step — the runtime behind `--device cuda`, where a decode step is
// enqueued on one stream with no host synchronisation until its tokens (or logits) are read.
// The same code runs on the CPU backend, where it is tested against the TypeScript forward.
//
// Per layer: h = RMSNorm(x) (fused with the residual add of the previous sublayer);
// MLA: q (q_proj, or q_a → norm → q_b), kv_a → (norm(c_kv), rope(k_pe)) appended to the
// cache; prefill: attention over K/V expanded from the latent (mla_prefill); decode: absorbed
// (q_nope·W_UK, mla_decode on the latent, ·W_UV); o_proj; MLP: dense SwiGLU, or the router +
// routed and shared experts. Final norm and lm_head on the rows whose logits are wanted.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend.h"
#include "dsv2/moe.h"

namespace dsv2::model {

// Shapes and hyper-parameters, from config.json (lib/model/config.ts).
struct ModelDims {
  int64_t vocab = 0, hidden = 0, inter = 0, moe_inter = 0, layers = 0, heads = 0;
  int64_t q_lora = 0;  // 0: plain q_proj
  int64_t d_c = 0, d_nope = 0, d_r = 0, d_v = 0;
  int64_t n_experts = 0, top_k = 0, n_group = 1, topk_group = 1;
  int64_t inter_shared = 0;  // n_shared_experts · moe_intermediate_size (0: none)
  MoeMethod method = MoeMethod::kGreedy;
  MoeScoring scoring = MoeScoring::kSoftmax;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
  float eps = 1e-6f;
  float softmax_scale = 1.0f;
  std::vector<uint8_t> moe_layer;  // [layers]: 1 for a DeepSeekMoE layer, 0 for a dense MLP
  int64_t qk_dim() const { return d_nope + d_r; }
};

// One weight in backend memory. 8-bit 2-D weights (i8 / fp8_e4m3 codes) carry their f32
// block scales [ceil(n / 128), ceil(k / 128)] in `scale` (the routed experts keep theirs in
// the experts_*_scale weights, the layout of MoeExpertsParams).
struct Weight {
  void* data = nullptr;
  DType dtype = DType::kBF16;
  std::vector<int64_t> shape;
  size_t bytes = 0;
  void* scale = nullptr;
  size_t scale_bytes = 0;
};

struct Limits {
  int64_t max_tokens = 0;   // tokens per step
  int64_t max_seqs = 0;     // sequences per step
  int64_t max_seqlen = 0;   // keys per sequence (the rope table's rows bound it too)
};

// Query tokens per sequence a decode step may carry (speculative / multi-token decode);
// longer runs are prefill steps.
constexpr int64_t kMaxDecodeQ = 4;

enum class LogitsRows { kNone, kLast, kAll };

// One step, host data. Sequence i's query tokens are rows [cu_q[i], cu_q[i + 1]) of tokens;
// they are the last cu_q[i+1] - cu_q[i] of its seqlens[i] keys, whose pages are row i of
// block_table. decode = absorbed attention (every sequence then has the same number of query
// tokens); otherwise prefill over expanded K/V.
struct StepInput {
  int64_t n_tokens = 0, b = 0, max_blocks = 0;
  const int32_t* tokens = nullptr;       // [n_tokens]
  const int32_t* positions = nullptr;    // [n_tokens]
  const int32_t* slots = nullptr;        // [n_tokens] cache slots
  const int32_t* seqlens = nullptr;      // [b]
  const int32_t* cu_q = nullptr;         // [b + 1]
  const int32_t* block_table = nullptr;  // [b, max_blocks]
  bool decode = false;
  LogitsRows logits = LogitsRows::kLast;
  bool sample = false;  // draw one token per sequence from its last row (on the backend)
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  const uint64_t* seeds = nullptr;  // [b]
};

struct StepOutput {
  std::vector<float> logits;    // [rows, vocab]: rows = n_tokens (all) or b (last)
  std::vector<int32_t> tokens;  // [b] when sampling
};

struct MemoryReport {
  size_t weights = 0, cache = 0, workspace = 0;
  int64_t graphs_captured = 0, graphs_failed = 0, graph_launches = 0;  // CUDA graphs of decode steps
};

class Engine {
 public:
  // The cache: `layers` × `cache_pages` pages of `cache_layout` at cache_data, in the backend's
  // memory, kept alive by `cache_owner` (the JS KvCache's storage, whose page allocator the
  // caller uses).
  Engine(std::unique_ptr<Backend> backend, const ModelDims& dims, KvLayout cache_layout, int64_t cache_pages,
         uint8_t* cache_data, std::shared_ptr<void> cache_owner, const Limits& limits);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const ModelDims& dims() const { return d_; }
  Backend& backend() { return *be_; }
  // Checks name/shape/dtype against the config and copies the host data to the backend.
  // Names: embed, norm, lm_head; per layer (layer >= 0): the LayerWeights field names of
  // lib/model/weights.ts (input_norm, post_norm, q_proj | q_a, q_a_norm, q_b, kv_a,
  // kv_a_norm, kv_b, w_uk_t, w_uv, o_proj, and gate_up, down (dense) or gate, bias,
  // experts_gate_up, experts_down, shared_gate_up, shared_down (MoE)).
  // `first` >= 0 uploads a part: `host` holds rows [first, first + bytes / row bytes) along dim 0
  // of the weight whose full shape is `shape` (row bytes = the product of the other dims ×
  // dtype size). first == 0 (re)allocates the weight; later parts must follow in the same
  // dtype and shape. Loading streams big stacked weights (a layer's routed experts) this way,
  // so the host never holds more than one part of them. Setting kv_b (whole) also sets w_uk_t
  // and w_uv, split from it here.
  void set_weight(int64_t layer, const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                  const void* host, size_t bytes, int64_t first = -1);
  // Weights given in f32/bf16/f16 after this call are stored as 8-bit codes with one f32 scale
  // per 128 × 128 block (ops::quantize_weight), quantised here on the worker thread: every
  // linear layer — q_proj | q_a, q_b, kv_a, o_proj, the dense MLP, the routed and shared
  // experts, lm_head. Kept as given: the embedding (one row read per token), the norms, the
  // router (its scores pick the experts; 0.1% of a token's bytes) and kv_b with its absorbed
  // halves W_UK / W_UV (read by the attention ops, which take float weights). `to` is kI8,
  // kFP8E4M3, or kF32 for none (the default). Both backends (the CUDA gemm and expert kernels
  // take 8-bit codes with their scales).
  void set_weight_quantization(DType to);
  DType weight_quantization() const { return quant_; }
  // Every weight the config implies, random (seeded; the same values on every backend), in
  // `dtype` (bf16 or f32; the noaux_tc bias f32), made in the backend's memory — nothing is
  // read from files: the benchmarks' random-weight models.
  void random_weights(uint64_t seed, DType dtype);
  // cos/sin tables [max_pos, d_r / 2] of the rope (host f32).
  void set_rope(const float* cos, const float* sin, int64_t max_pos);
  // Throws E_CHECKPOINT naming the first weight never set.
  void check_complete() const;
  // The cache the engine writes (one backend allocation of layers × pages).
  KvCacheView cache_layer(int64_t l) const;
  // Validates the input (E_RANGE / E_ARG naming the value) and runs the step; thread-safe
  // (steps of one engine run one at a time).
  StepOutput step(const StepInput& in);
  MemoryReport memory() const;
  // Workspace bytes an engine of these sizes allocates on `device` (activations + kernel
  // scratch), without allocating: `dsv2 info --model` (cuda needs a usable device).
  static size_t plan_workspace(Device device, const ModelDims& d, const KvLayout& layout, const Limits& limits);
  const Limits& limits() const { return limits_; }

  // Per-op wall time of the steps run while profiling is on (`Model.startProfile()`,
  // `npm run bench -- decode`): each op is timed between backend syncs, so CUDA decode steps
  // run uncaptured and pay the syncs; on the CPU every op is synchronous and the timers add
  // about 50 ns per op. "step" is each step's whole time (checks, uploads, downloads too).
  struct OpTime {
    std::string op;
    int64_t calls = 0;
    double seconds = 0;
  };
  void set_profiling(bool on);
  // The totals per op (in order of first use) since the last reset; then resets when asked.
  std::vector<OpTime> profile(bool reset);

 private:
  // Times its scope into op `name` when profiling is on (a no-op otherwise).
  class OpScope {
   public:
    OpScope(Engine* e, const char* name);
    ~OpScope();
    OpScope(const OpScope&) = delete;
    OpScope& operator=(const OpScope&) = delete;

   private:
    Engine* e_;
    const char* name_;
    int64_t t0_ = 0;
  };
  OpScope timed(const char* name) { return OpScope(this, name); }
  std::atomic<bool> prof_{false};
  std::mutex prof_mu_;  // guards prof_ops_ (not mu_: reading a profile never waits for a step)
  std::vector<OpTime> prof_ops_;
  void set_weight_locked(int64_t layer, const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                         const void* host, size_t bytes, int64_t first, const float* scales = nullptr);
  // set_weight_locked of float host data quantised to quant_ (see set_weight_quantization).
  void set_quantized_locked(int64_t layer, const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                            const void* host, size_t bytes, int64_t first);
  static bool quantizable(const std::string& name);
  DType quant_ = DType::kF32;
  struct Layer;
  struct ScratchDims {
    MlaDecodeParams decode;
    MlaPrefillParams prefill;
    MoeExpertsParams moe;
  };
  static std::vector<int64_t> buffer_elems(const ModelDims& d, const KvLayout& layout, const Limits& limits);
  static ScratchDims scratch_dims(const ModelDims& d, const KvLayout& layout, const Limits& limits);
  struct WeightSpec {
    int64_t layer;
    std::string name;
    std::vector<int64_t> shape;
    float mean, std;
  };
  std::vector<WeightSpec> weight_specs() const;
  Weight* slot(int64_t layer, const std::string& name);
  void check_step(const StepInput& in) const;
  void attention(int64_t l, const StepInput& in, const SeqSizes& sz);
  void mlp(int64_t l, int64_t t);
  void linear(const float* x, int64_t m, const Weight& w, float* y);
  float* buf(size_t i) const { return bufs_[i]; }

  std::unique_ptr<Backend> be_;
  ModelDims d_;
  KvLayout layout_;
  int64_t pages_ = 0;
  Limits limits_;
  uint8_t* cache_ = nullptr;
  std::shared_ptr<void> cache_owner_;
  std::vector<Weight*> all_;
  Weight embed_, norm_, lm_head_;
  std::vector<std::unique_ptr<Layer>> layers_;
  float* cos_ = nullptr;
  float* sin_ = nullptr;
  int64_t max_pos_ = 0;
  std::vector<float*> bufs_;
  size_t workspace_bytes_ = 0, weight_bytes_ = 0;
  std::mutex mu_;
};

}  // namespace dsv2::model
