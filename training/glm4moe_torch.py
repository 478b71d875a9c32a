"""A small GLM-4.5-shaped model with its NextN (MTP) block, in PyTorch, for training.

It computes what llama.cpp's ``glm4moe`` graph computes (see the numpy
reference in tests/reference/glm4moe.py for the conventions), so the trained
weights can be written to GGUF as they are:

* trunk: token embedding; per layer RMS norm -> attention (q/k/v with bias,
  NeoX RoPE on the first n_rot dims of each head, grouped-query) -> residual;
  RMS norm (post_attention_norm) -> FFN -> residual.  The first n_dense_lead
  layers have a dense SwiGLU FFN, the others a mixture of experts: sigmoid
  scores, top-k chosen on score + selection bias, weights = chosen scores
  normalised to sum 1 times a scale, plus an always-on shared expert.
  output_norm, then the LM head.
* NextN block at position p: eh_proj(enorm(embed(t_p)) ++ hnorm(h_{p-1})) with
  h the trunk's state after output_norm (zeros at p = 0), one decoder block
  with its own attention, shared_head_norm, and the trunk's LM head (tied, as
  GLM-4.6 files store it).  Trained, like GLM's and DeepSeek's, to predict
  t_{p+1}: the token after next, seen from h_{p-1}.

The selection bias is not learnt by gradient: as in DeepSeek-V3's
auxiliary-loss-free balancing it is nudged after each step towards the experts
that got fewer tokens than average.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Shape:
    n_vocab: int = 4096
    n_embd: int = 256
    n_layer: int = 4            # trunk layers
    n_dense_lead: int = 1
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_rot: int = 32             # half the head, as GLM-4.5 (partial_rotary_factor 0.5)
    n_ff: int = 768
    n_expert: int = 8
    n_expert_used: int = 2
    n_expert_shared: int = 1
    n_ff_exp: int = 256
    expert_weights_scale: float = 2.5
    rope_base: float = 10000.0
    eps: float = 1e-5
    n_ctx: int = 512


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(s: Shape, n: int):
    inv = s.rope_base ** (-2.0 * torch.arange(s.n_rot // 2, dtype=torch.float64) / s.n_rot)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().float(), ang.sin().float()


def apply_rope(x, cos, sin, n_rot: int):
    """x (B, H, L, hd); NeoX pairs (i, i + n_rot/2) over the first n_rot dims."""
    h = n_rot // 2
    x0, x1, rest = x[..., :h], x[..., h:n_rot], x[..., n_rot:]
    return torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos, rest], dim=-1)


class Attention(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.s = s
        self.q = nn.Linear(s.n_embd, s.n_head * s.head_dim)
        self.k = nn.Linear(s.n_embd, s.n_head_kv * s.head_dim)
        self.v = nn.Linear(s.n_embd, s.n_head_kv * s.head_dim)
        self.o = nn.Linear(s.n_head * s.head_dim, s.n_embd, bias=False)

    def forward(self, x, cos, sin):
        s, (B, L, _) = self.s, x.shape
        q = self.q(x).view(B, L, s.n_head, s.head_dim).transpose(1, 2)
        k = self.k(x).view(B, L, s.n_head_kv, s.head_dim).transpose(1, 2)
        v = self.v(x).view(B, L, s.n_head_kv, s.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin, s.n_rot), apply_rope(k, cos, sin, s.n_rot)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o(o.transpose(1, 2).reshape(B, L, s.n_head * s.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, d: int, f: int):
        super().__init__()
        self.gate = nn.Linear(d, f, bias=False)
        self.up = nn.Linear(d, f, bias=False)
        self.down = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.s = s
        d, E, f = s.n_embd, s.n_expert, s.n_ff_exp
        self.router = nn.Linear(d, E, bias=False)
        self.register_buffer("select_bias", torch.zeros(E))
        self.gate = nn.Parameter(torch.randn(E, f, d) * d ** -0.5)
        self.up = nn.Parameter(torch.randn(E, f, d) * d ** -0.5)
        self.down = nn.Parameter(torch.randn(E, d, f) * f ** -0.5)
        self.shared = SwiGLU(d, f * s.n_expert_shared) if s.n_expert_shared else None
        self.load = torch.zeros(E)      # tokens per expert in the last forward pass

    def forward(self, y):
        s, shape = self.s, y.shape
        y = y.reshape(-1, shape[-1])
        scores = torch.sigmoid(self.router(y))
        chosen = torch.topk(scores + self.select_bias, s.n_expert_used, dim=-1).indices
        w = scores.gather(1, chosen)
        w = w / w.sum(-1, keepdim=True).clamp_min(6.103515625e-5) * s.expert_weights_scale
        out = torch.zeros_like(y)
        self.load = torch.bincount(chosen.flatten(), minlength=s.n_expert).float()
        for e in range(s.n_expert):
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            ye = y[rows]
            he = F.silu(ye @ self.gate[e].T) * (ye @ self.up[e].T)
            out.index_add_(0, rows, (he @ self.down[e].T) * w[rows, slot, None])
        if self.shared is not None:
            out = out + self.shared(y)
        return out.view(shape)

    @torch.no_grad()
    def balance(self, rate: float) -> None:
        """Auxiliary-loss-free balancing: raise the bias of under-used experts."""
        self.select_bias += rate * torch.sign(self.load.mean() - self.load)


class Block(nn.Module):
    def __init__(self, s: Shape, moe: bool):
        super().__init__()
        self.attn_norm = RMSNorm(s.n_embd, s.eps)
        self.attn = Attention(s)
        self.post_attention_norm = RMSNorm(s.n_embd, s.eps)
        self.ffn = MoE(s) if moe else SwiGLU(s.n_embd, s.n_ff)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.post_attention_norm(x))


class GLM4MoE(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.s = s
        self.embed = nn.Embedding(s.n_vocab, s.n_embd)
        self.layers = nn.ModuleList(Block(s, moe=i >= s.n_dense_lead) for i in range(s.n_layer))
        self.output_norm = RMSNorm(s.n_embd, s.eps)
        self.output = nn.Linear(s.n_embd, s.n_vocab, bias=False)
        # NextN block
        self.enorm = RMSNorm(s.n_embd, s.eps)
        self.hnorm = RMSNorm(s.n_embd, s.eps)
        self.eh_proj = nn.Linear(2 * s.n_embd, s.n_embd, bias=False)
        self.nextn = Block(s, moe=True)
        self.shared_head_norm = RMSNorm(s.n_embd, s.eps)
        self._init()

    def _init(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                continue
            if p.dim() == 1:          # q/k/v biases
                nn.init.zeros_(p)
            elif p.dim() == 2:
                nn.init.normal_(p, std=0.02)
        # residual branches start small (depth-scaled), as GPT-2
        scale = 0.02 / (2 * (self.s.n_layer + 1)) ** 0.5
        for name, p in self.named_parameters():
            if name.endswith(("attn.o.weight", "down.weight")) or name.endswith("ffn.down"):
                nn.init.normal_(p, std=scale)

    def moe_layers(self):
        return [m for m in self.modules() if isinstance(m, MoE)]

    def forward(self, tokens):
        """tokens (B, L) -> (trunk logits, NextN logits), both (B, L, V); row p of either predicts t_{p+1}."""
        B, L = tokens.shape
        cos, sin = rope_tables(self.s, L)
        e = self.embed(tokens)
        x = e
        for layer in self.layers:
            x = layer(x, cos, sin)
        h = self.output_norm(x)
        trunk = self.output(h)
        h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
        m = self.eh_proj(torch.cat([self.enorm(e), self.hnorm(h_prev)], dim=-1))
        m = self.nextn(m, cos, sin)
        mtp = self.output(self.shared_head_norm(m))
        return trunk, mtp

    def gguf_tensors(self) -> dict[str, "np.ndarray"]:
        """The weights under llama.cpp's glm4moe tensor names, numpy layout (rows = outputs)."""
        W = {}

        def put(name, t):
            W[name] = t.detach().float().numpy().copy()

        def block(i, b: Block, p=None):
            p = p or f"blk.{i}."
            put(p + "attn_norm.weight", b.attn_norm.weight)
            for n in ("q", "k", "v"):
                put(p + f"attn_{n}.weight", getattr(b.attn, n).weight)
                put(p + f"attn_{n}.bias", getattr(b.attn, n).bias)
            put(p + "attn_output.weight", b.attn.o.weight)
            put(p + "post_attention_norm.weight", b.post_attention_norm.weight)
            f = b.ffn
            if isinstance(f, SwiGLU):
                for n in ("gate", "up", "down"):
                    put(p + f"ffn_{n}.weight", getattr(f, n).weight)
                return
            put(p + "ffn_gate_inp.weight", f.router.weight)
            put(p + "exp_probs_b.bias", f.select_bias)
            for n in ("gate", "up", "down"):
                put(p + f"ffn_{n}_exps.weight", getattr(f, n))
            if f.shared is not None:
                for n in ("gate", "up", "down"):
                    put(p + f"ffn_{n}_shexp.weight", getattr(f.shared, n).weight)

        put("token_embd.weight", self.embed.weight)
        for i, layer in enumerate(self.layers):
            block(i, layer)
        put("output_norm.weight", self.output_norm.weight)
        put("output.weight", self.output.weight)
        n = self.s.n_layer
        block(n, self.nextn)
        p = f"blk.{n}.nextn."
        put(p + "eh_proj.weight", self.eh_proj.weight)
        put(p + "enorm.weight", self.enorm.weight)
        put(p + "hnorm.weight", self.hnorm.weight)
        put(p + "shared_head_norm.weight", self.shared_head_norm.weight)
        return W
