"""DeepSeek-V2 (DeepseekV2ForCausalLM) in plain torch, following the forward of the published
Hugging Face modeling_deepseek.py of DeepSeek-V2 step by step:

- DeepseekV2RMSNorm (f32 variance, weight * x);
- DeepseekV2Attention (MLA): q = q_b_proj(q_a_layernorm(q_a_proj(x))) split [nope | rope];
  kv_a_proj_with_mqa(x) -> (c_kv, k_pe); kv = kv_b_proj(kv_a_layernorm(c_kv)) -> (k_nope, v);
  decoupled RoPE on the rope part (one shared k_pe head), with the interleaved -> half layout
  permutation `x.view(b, h, s, d//2, 2).transpose(4, 3).reshape(b, h, s, d)` before
  rotate_half; DeepseekV2YarnRotaryEmbedding's frequencies and cos/sin mscale; softmax scale
  q_head_dim^-0.5 * yarn_get_mscale(factor, mscale_all_dim)^2; causal softmax in f32;
- DeepseekV2MLP (SwiGLU) for layers < first_k_dense_replace, DeepseekV2MoE after: MoEGate
  (softmax scores in f32, greedy or group_limited_greedy top-k, norm_topk_prob or
  routed_scaling_factor, the sequence-level auxiliary balance loss while training, added
  through AddAuxiliaryLoss) + routed experts + shared experts (one MLP of width
  moe_intermediate_size * n_shared_experts);
- pre-norm residual decoder layers, final norm, untied lm_head.

The routed experts' weights are held stacked ([E, I, H] / [H, I] per expert) for speed and
exported under the HF names mlp.experts.{e}.{gate,up,down}_proj.weight.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def yarn_find_correction_dim(num_rotations, dim, base=10000, max_position_embeddings=2048):
    return (dim * math.log(max_position_embeddings / (num_rotations * 2 * math.pi))) / (2 * math.log(base))


def yarn_find_correction_range(low_rot, high_rot, dim, base=10000, max_position_embeddings=2048):
    low = math.floor(yarn_find_correction_dim(low_rot, dim, base, max_position_embeddings))
    high = math.ceil(yarn_find_correction_dim(high_rot, dim, base, max_position_embeddings))
    return max(low, 0), min(high, dim - 1)


def yarn_get_mscale(scale=1, mscale=1):
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_linear_ramp_mask(lo, hi, dim):
    if lo == hi:
        hi += 0.001
    linear_func = (torch.arange(dim, dtype=torch.float32) - lo) / (hi - lo)
    return torch.clamp(linear_func, 0, 1)


def rope_cos_sin(cfg, seq_len):
    """cos/sin [seq_len, rope_dim] exactly as DeepseekV2YarnRotaryEmbedding (or the plain
    DeepseekV2RotaryEmbedding without rope_scaling) builds them, in f32."""
    dim = cfg['qk_rope_head_dim']
    base = cfg.get('rope_theta', 10000)
    rs = cfg.get('rope_scaling')
    ar = torch.arange(0, dim, 2, dtype=torch.float32)
    mscale = 1.0
    if rs is None:
        inv_freq = 1.0 / (base ** (ar / dim))
    else:
        assert rs['type'] == 'yarn'
        factor = rs['factor']
        freq_extra = 1.0 / (base ** (ar / dim))
        freq_inter = 1.0 / (factor * base ** (ar / dim))
        low, high = yarn_find_correction_range(rs.get('beta_fast', 32), rs.get('beta_slow', 1), dim, base,
                                               rs.get('original_max_position_embeddings', 4096))
        inv_freq_mask = 1.0 - yarn_linear_ramp_mask(low, high, dim // 2)
        inv_freq = freq_inter * (1 - inv_freq_mask) + freq_extra * inv_freq_mask
        mscale = float(yarn_get_mscale(factor, rs.get('mscale', 1)) / yarn_get_mscale(factor, rs.get('mscale_all_dim', 0)))
    t = torch.arange(seq_len, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * mscale, emb.sin() * mscale


def softmax_scale(cfg):
    scale = (cfg['qk_nope_head_dim'] + cfg['qk_rope_head_dim']) ** -0.5
    rs = cfg.get('rope_scaling')
    if rs is not None:
        mscale_all_dim = rs.get('mscale_all_dim', 0)
        if mscale_all_dim:
            m = yarn_get_mscale(rs['factor'], mscale_all_dim)
            scale = scale * m * m
    return scale


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    """q [b, h, s, d], k [b, 1, s, d], cos/sin [s, d] (positions 0..s-1)."""
    cos = cos.unsqueeze(0).unsqueeze(0)
    sin = sin.unsqueeze(0).unsqueeze(0)
    b, h, s, d = q.shape
    q = q.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
    b, h, s, d = k.shape
    k = k.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        x = x.to(torch.float32) if dt != torch.float64 else x
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(dt) * x.to(dt)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H, h = cfg['hidden_size'], cfg['num_attention_heads']
        self.h = h
        self.nope, self.rope, self.dv = cfg['qk_nope_head_dim'], cfg['qk_rope_head_dim'], cfg['v_head_dim']
        self.qhd = self.nope + self.rope
        self.kv_lora = cfg['kv_lora_rank']
        eps = cfg['rms_norm_eps']
        self.q_a_proj = nn.Linear(H, cfg['q_lora_rank'], bias=False)
        self.q_a_layernorm = RMSNorm(cfg['q_lora_rank'], eps)
        self.q_b_proj = nn.Linear(cfg['q_lora_rank'], h * self.qhd, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(H, self.kv_lora + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(self.kv_lora, eps)
        self.kv_b_proj = nn.Linear(self.kv_lora, h * (self.nope + self.dv), bias=False)
        self.o_proj = nn.Linear(h * self.dv, H, bias=False)
        self.scale = softmax_scale(cfg)

    def forward(self, x, cos, sin, mask):
        b, s, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(b, s, self.h, self.qhd).transpose(1, 2)
        q_nope, q_pe = torch.split(q, [self.nope, self.rope], dim=-1)
        ckv = self.kv_a_proj_with_mqa(x)
        ckv, k_pe = torch.split(ckv, [self.kv_lora, self.rope], dim=-1)
        k_pe = k_pe.view(b, s, 1, self.rope).transpose(1, 2)
        kv = self.kv_b_proj(self.kv_a_layernorm(ckv)).view(b, s, self.h, self.nope + self.dv).transpose(1, 2)
        k_nope, v = torch.split(kv, [self.nope, self.dv], dim=-1)
        q_pe, k_pe = apply_rotary_pos_emb(q_pe, k_pe, cos.to(x.dtype), sin.to(x.dtype))
        qs = torch.cat([q_nope, q_pe], dim=-1)
        ks = torch.cat([k_nope, k_pe.expand(b, self.h, s, self.rope)], dim=-1)
        w = torch.matmul(qs, ks.transpose(2, 3)) * self.scale
        w = w + mask
        w = F.softmax(w, dim=-1, dtype=torch.float32 if x.dtype != torch.float64 else torch.float64).to(x.dtype)
        o = torch.matmul(w, v).transpose(1, 2).reshape(b, s, self.h * self.dv)
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, H, I):
        super().__init__()
        self.gate_proj = nn.Linear(H, I, bias=False)
        self.up_proj = nn.Linear(H, I, bias=False)
        self.down_proj = nn.Linear(I, H, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class AddAuxiliaryLoss(torch.autograd.Function):
    """HF's trick: returns x unchanged; the aux loss gets gradient 1 in backward."""

    @staticmethod
    def forward(ctx, x, loss):
        assert loss.numel() == 1
        ctx.dtype = loss.dtype
        ctx.required_aux_loss = loss.requires_grad
        return x

    @staticmethod
    def backward(ctx, grad_output):
        grad_loss = None
        if ctx.required_aux_loss:
            grad_loss = torch.ones(1, dtype=ctx.dtype, device=grad_output.device)
        return grad_output, grad_loss


class MoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H, I, E = cfg['hidden_size'], cfg['moe_intermediate_size'], cfg['n_routed_experts']
        self.E, self.k = E, cfg['num_experts_per_tok']
        self.topk_method = cfg['topk_method']
        self.n_group, self.topk_group = cfg['n_group'], cfg['topk_group']
        self.norm_topk_prob = cfg['norm_topk_prob']
        self.routed_scaling_factor = cfg['routed_scaling_factor']
        self.alpha, self.seq_aux = cfg['aux_loss_alpha'], cfg['seq_aux']
        assert cfg['scoring_func'] == 'softmax'
        self.gate_weight = nn.Parameter(torch.empty(E, H))  # mlp.gate.weight
        nn.init.kaiming_uniform_(self.gate_weight, a=math.sqrt(5))
        self.w_gate = nn.Parameter(torch.empty(E, I, H))  # experts.e.gate_proj.weight
        self.w_up = nn.Parameter(torch.empty(E, I, H))  # experts.e.up_proj.weight
        self.w_down = nn.Parameter(torch.empty(E, H, I))  # experts.e.down_proj.weight
        self.shared_experts = MLP(H, I * cfg['n_shared_experts'])
        self.last_aux = None
        self.last_counts = None

    def route(self, x):
        """MoEGate.forward: x [b, s, H] -> topk_idx [n, k], topk_weight [n, k], aux_loss."""
        bsz, seq_len, h = x.shape
        n = bsz * seq_len
        logits = F.linear(x.reshape(n, h).to(torch.float32 if x.dtype != torch.float64 else x.dtype),
                          self.gate_weight.to(torch.float32 if x.dtype != torch.float64 else x.dtype))
        scores = logits.softmax(dim=-1)
        if self.topk_method == 'greedy':
            topk_weight, topk_idx = torch.topk(scores, k=self.k, dim=-1, sorted=False)
        elif self.topk_method == 'group_limited_greedy':
            group_scores = scores.view(n, self.n_group, -1).max(dim=-1).values
            group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
            group_mask = torch.zeros_like(group_scores)
            group_mask.scatter_(1, group_idx, 1)
            score_mask = group_mask.unsqueeze(-1).expand(n, self.n_group, self.E // self.n_group).reshape(n, -1)
            tmp_scores = scores.masked_fill(~score_mask.bool(), 0.0)
            topk_weight, topk_idx = torch.topk(tmp_scores, k=self.k, dim=-1, sorted=False)
        else:
            raise ValueError(self.topk_method)
        if self.k > 1 and self.norm_topk_prob:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
        else:
            topk_weight = topk_weight * self.routed_scaling_factor
        aux_loss = None
        if self.training and self.alpha > 0.0:
            idx_aux = topk_idx.view(bsz, -1)
            if self.seq_aux:
                scores_seq = scores.view(bsz, seq_len, -1)
                ce = torch.zeros(bsz, self.E, device=x.device)
                ce.scatter_add_(1, idx_aux, torch.ones(bsz, seq_len * self.k, device=x.device)).div_(
                    seq_len * self.k / self.E)
                aux_loss = (ce * scores_seq.mean(dim=1)).sum(dim=1).mean() * self.alpha
            else:
                ce = F.one_hot(idx_aux.view(-1), num_classes=self.E).float().mean(0)
                aux_loss = (scores.mean(0) * ce * self.E).sum() * self.alpha
        return topk_idx, topk_weight, aux_loss

    def forward(self, x):
        shape = x.shape
        topk_idx, topk_weight, aux_loss = self.route(x)
        flat = x.reshape(-1, shape[-1])
        n = flat.shape[0]
        # Sort the (token, slot) pairs by expert and run each expert on its tokens (the same
        # math as HF's training loop and moe_infer).
        fidx = topk_idx.reshape(-1)
        order = torch.argsort(fidx, stable=True)
        counts = torch.bincount(fidx, minlength=self.E).tolist()
        self.last_counts = counts
        xs = flat[order // self.k]
        outs = []
        start = 0
        for e, c in enumerate(counts):
            if c == 0:
                continue
            xe = xs[start:start + c]
            he = F.silu(xe @ self.w_gate[e].t()) * (xe @ self.w_up[e].t())
            outs.append(he @ self.w_down[e].t())
            start += c
        ys = torch.cat(outs, dim=0)
        y = torch.empty_like(ys).index_copy(0, order, ys)  # back to (token, slot) order
        y = (y.view(n, self.k, -1) * topk_weight.unsqueeze(-1).to(y.dtype)).sum(dim=1).view(shape)
        if aux_loss is not None:
            y = AddAuxiliaryLoss.apply(y, aux_loss)
        self.last_aux = aux_loss
        return y + self.shared_experts(x)


class DecoderLayer(nn.Module):
    def __init__(self, cfg, i):
        super().__init__()
        eps = cfg['rms_norm_eps']
        self.input_layernorm = RMSNorm(cfg['hidden_size'], eps)
        self.post_attention_layernorm = RMSNorm(cfg['hidden_size'], eps)
        self.self_attn = Attention(cfg)
        moe = cfg.get('n_routed_experts') is not None and i >= cfg['first_k_dense_replace'] and i % cfg['moe_layer_freq'] == 0
        self.mlp = MoE(cfg) if moe else MLP(cfg['hidden_size'], cfg['intermediate_size'])

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class DeepseekV2ForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg['vocab_size'], cfg['hidden_size'])
        self.layers = nn.ModuleList([DecoderLayer(cfg, i) for i in range(cfg['num_hidden_layers'])])
        self.norm = RMSNorm(cfg['hidden_size'], cfg['rms_norm_eps'])
        self.lm_head = nn.Linear(cfg['hidden_size'], cfg['vocab_size'], bias=False)
        assert not cfg['tie_word_embeddings']
        self._rope = {}

    def init_weights(self, std):
        for name, p in self.named_parameters():
            if name.endswith('gate_weight'):
                continue  # MoEGate: kaiming_uniform (its reset_parameters)
            if p.dim() == 1:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, std)

    def rope(self, s, dtype):
        key = (s, dtype)
        if key not in self._rope:
            cos, sin = rope_cos_sin(self.cfg, s)
            self._rope[key] = (cos.to(dtype), sin.to(dtype))
        return self._rope[key]

    def forward(self, ids):
        b, s = ids.shape
        x = self.embed_tokens(ids)
        dtype = x.dtype
        cos, sin = self.rope(s, dtype)
        mask = torch.full((s, s), torch.finfo(dtype).min, dtype=dtype).triu(1)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x)).float() if dtype != torch.float64 else self.lm_head(self.norm(x))

    def aux_losses(self):
        return [l.mlp.last_aux for l in self.layers if isinstance(l.mlp, MoE) and l.mlp.last_aux is not None]

    # ---- HF-named state dict ------------------------------------------------------------
    def hf_state_dict(self):
        out = {'model.embed_tokens.weight': self.embed_tokens.weight}
        for i, l in enumerate(self.layers):
            p = f'model.layers.{i}'
            out[f'{p}.input_layernorm.weight'] = l.input_layernorm.weight
            out[f'{p}.post_attention_layernorm.weight'] = l.post_attention_layernorm.weight
            a = l.self_attn
            for n in ['q_a_proj', 'q_b_proj', 'kv_a_proj_with_mqa', 'kv_b_proj', 'o_proj']:
                out[f'{p}.self_attn.{n}.weight'] = getattr(a, n).weight
            out[f'{p}.self_attn.q_a_layernorm.weight'] = a.q_a_layernorm.weight
            out[f'{p}.self_attn.kv_a_layernorm.weight'] = a.kv_a_layernorm.weight
            m = l.mlp
            if isinstance(m, MoE):
                out[f'{p}.mlp.gate.weight'] = m.gate_weight
                for e in range(m.E):
                    out[f'{p}.mlp.experts.{e}.gate_proj.weight'] = m.w_gate[e]
                    out[f'{p}.mlp.experts.{e}.up_proj.weight'] = m.w_up[e]
                    out[f'{p}.mlp.experts.{e}.down_proj.weight'] = m.w_down[e]
                for n in ['gate_proj', 'up_proj', 'down_proj']:
                    out[f'{p}.mlp.shared_experts.{n}.weight'] = getattr(m.shared_experts, n).weight
            else:
                for n in ['gate_proj', 'up_proj', 'down_proj']:
                    out[f'{p}.mlp.{n}.weight'] = getattr(m, n).weight
        out['model.norm.weight'] = self.norm.weight
        out['lm_head.weight'] = self.lm_head.weight
        return out

    @torch.no_grad()
    def load_hf_state_dict(self, sd):
        mine = self.hf_state_dict()
        assert set(mine) == set(sd), (set(mine) ^ set(sd))
        for k, v in mine.items():
            assert tuple(v.shape) == tuple(sd[k].shape), k
            v.copy_(sd[k].to(v.dtype))
