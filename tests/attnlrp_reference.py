"""An explicit, slow AttnLRP for Llama-style decoders (Llama, Qwen2), written independently of the method.

The method under test computes AttnLRP in gradient x input form (modified backward passes under one autograd
call). This reference instead runs the model's forward pass by hand in float64, keeps every intermediate tensor, and
propagates relevance *tensors* backward layer by layer with the rules written out as in the paper (Achtibat et al.,
ICML 2024): ε-rule (ε -> 0) for linear maps and sums, identity rule for RMSNorm and SiLU, uniform rule for the gate
product and both attention matrix products, softmax rule (Proposition 3.1). It also reports the relevance that the
attention softmaxes absorb, so conservation can be checked exactly:

    sum of input relevances + absorbed by softmaxes + absorbed by biases = relevance put on the output.

lxt 2.1 (the authors' implementation) cannot serve as the reference here: see tests/test_attnlrp.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ReferenceRelevance:
    tokens: torch.Tensor  # (tokens,) relevance of each input token (embedding summed over the hidden size)
    output: float  # relevance put on the output: the logit, or the softmax rule's total for a probability
    softmax_absorbed: float  # relevance that the attention softmaxes do not pass on
    bias_absorbed: float  # relevance kept by biases of linear layers


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is 0 (ε-rule with ε -> 0)."""
    return torch.where(denominator == 0, torch.zeros_like(numerator), numerator / denominator)


class _Ledger:
    def __init__(self) -> None:
        self.softmax = 0.0
        self.bias = 0.0


def _linear(x, weight, bias, relevance_out, ledger: _Ledger):
    """ε-rule for z = x W^T + b: R(x_i) = sum_j x_i W_ji R(z_j) / z_j; the bias keeps b_j R(z_j) / z_j."""
    z = x @ weight.T + (0 if bias is None else bias)
    ratio = _safe_divide(relevance_out, z)
    if bias is not None:
        ledger.bias += float((bias * ratio).sum())
    return x * (ratio @ weight)


def _sum(parts, relevance_out):
    """ε-rule for a sum z = a + b + ...: each term gets its proportional share."""
    ratio = _safe_divide(relevance_out, sum(parts))
    return [part * ratio for part in parts]


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rms(x, norm):
    return norm.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)


@torch.no_grad()
def explicit_attnlrp(model, input_ids: torch.Tensor, target_id: int, target: str = "logit") -> ReferenceRelevance:
    """AttnLRP relevance of ``input_ids`` (1-D, no padding) for ``target_id`` predicted at the last position.

    Args:
        model: A Llama or Qwen2 causal LM (converted to float64 inside; the caller's model is not changed).
        target: ``"logit"`` (relevance starts as the target's logit) or ``"probability"`` (starts as its
            probability, pushed through the output softmax with the softmax rule).
    """
    ledger = _Ledger()
    weights = {name: param.detach().double() for name, param in model.named_parameters()}
    config = model.config
    base = model.model
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    groups = heads // kv_heads
    n = input_ids.shape[0]
    inv_freq = base.rotary_emb.inv_freq.double()
    angles = torch.arange(n, dtype=torch.float64)[:, None] * inv_freq[None]
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos(), angles.sin()  # (tokens, head_dim)
    causal = torch.ones(n, n, dtype=torch.bool).tril()

    def w(name):
        return weights[name]

    def b(name):
        return weights.get(name)

    hidden = w("model.embed_tokens.weight")[input_ids]
    saved = []
    for idx, layer in enumerate(base.layers):
        p = f"model.layers.{idx}."
        x1 = _rms(hidden, _DoubleNorm(layer.input_layernorm, w(p + "input_layernorm.weight")))
        q, k, v = (
            x1 @ w(f"{p}self_attn.{name}_proj.weight").T + _or_zero(b(f"{p}self_attn.{name}_proj.bias"))
            for name in "qkv"
        )
        qh = q.view(n, heads, head_dim).transpose(0, 1)
        kh = k.view(n, kv_heads, head_dim).transpose(0, 1)
        vh = v.view(n, kv_heads, head_dim).transpose(0, 1)
        q_rot = qh * cos + _rotate_half(qh) * sin
        k_rot = kh * cos + _rotate_half(kh) * sin
        k_rep = k_rot.repeat_interleave(groups, dim=0)
        v_rep = vh.repeat_interleave(groups, dim=0)
        scale = layer.self_attn.scaling
        scores = scale * q_rot @ k_rep.transpose(1, 2)
        weights_attn = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        context = weights_attn @ v_rep  # (heads, tokens, head_dim)
        context_flat = context.transpose(0, 1).reshape(n, heads * head_dim)
        attn_out = context_flat @ w(p + "self_attn.o_proj.weight").T
        mid = hidden + attn_out
        x2 = _rms(mid, _DoubleNorm(layer.post_attention_layernorm, w(p + "post_attention_layernorm.weight")))
        gate = x2 @ w(p + "mlp.gate_proj.weight").T
        act = torch.nn.functional.silu(gate)
        up = x2 @ w(p + "mlp.up_proj.weight").T
        product = act * up
        mlp_out = product @ w(p + "mlp.down_proj.weight").T
        saved.append(
            {
                "hidden": hidden, "x1": x1, "qh": qh, "kh": kh, "q_rot": q_rot, "k_rot": k_rot, "k_rep": k_rep,
                "v_rep": v_rep, "scale": scale, "scores": scores, "weights_attn": weights_attn, "context": context,
                "context_flat": context_flat, "attn_out": attn_out, "mid": mid, "x2": x2, "product": product,
                "mlp_out": mlp_out,
            }
        )  # fmt: skip
        hidden = mid + mlp_out
    final = _rms(hidden, _DoubleNorm(base.norm, w("model.norm.weight")))
    lm_head = w("lm_head.weight") if "lm_head.weight" in weights else w("model.embed_tokens.weight")
    logits = final[-1] @ lm_head.T

    relevance_logits = torch.zeros_like(logits)
    if target == "logit":
        relevance_logits[target_id] = logits[target_id]
    else:
        probs = torch.softmax(logits, dim=-1)
        relevance_probs = torch.zeros_like(probs)
        relevance_probs[target_id] = probs[target_id]
        # Softmax rule: R(z_i) = z_i (R(p_i) - p_i sum_j R(p_j)).
        relevance_logits = logits * (relevance_probs - probs * relevance_probs.sum())
    output_relevance = float(relevance_logits.sum())
    relevance_final = torch.zeros_like(final)
    relevance_final[-1] = _linear(final[-1], lm_head, None, relevance_logits, ledger)
    relevance_hidden = relevance_final  # identity rule through the final RMSNorm

    for idx in reversed(range(len(base.layers))):
        s = saved[idx]
        p = f"model.layers.{idx}."
        relevance_mid, relevance_mlp = _sum([s["mid"], s["mlp_out"]], relevance_hidden)
        relevance_product = _linear(s["product"], w(p + "mlp.down_proj.weight"), None, relevance_mlp, ledger)
        # Uniform rule for the gate product, identity rule for SiLU.
        relevance_gate = relevance_up = relevance_product / 2
        relevance_x2 = _linear(s["x2"], w(p + "mlp.gate_proj.weight"), None, relevance_gate, ledger)
        relevance_x2 = relevance_x2 + _linear(s["x2"], w(p + "mlp.up_proj.weight"), None, relevance_up, ledger)
        relevance_mid = relevance_mid + relevance_x2  # identity rule through post_attention_layernorm
        relevance_prev, relevance_attn = _sum([s["hidden"], s["attn_out"]], relevance_mid)
        relevance_context = _linear(
            s["context_flat"], w(p + "self_attn.o_proj.weight"), None, relevance_attn, ledger
        ).view(n, heads, head_dim)
        relevance_context = relevance_context.transpose(0, 1)
        # context = A V: contributions A_ij V_jd, ε-rule over j, uniform rule within each product.
        ratio = _safe_divide(relevance_context, s["context"])
        relevance_weights = s["weights_attn"] * (ratio @ s["v_rep"].transpose(1, 2)) / 2
        relevance_v_rep = s["v_rep"] * (s["weights_attn"].transpose(1, 2) @ ratio) / 2
        # Softmax rule on the allowed (causal) entries.
        scores = s["scores"]
        row_total = relevance_weights.sum(-1, keepdim=True)
        relevance_scores = torch.where(
            causal, scores * (relevance_weights - s["weights_attn"] * row_total), torch.zeros_like(scores)
        )
        ledger.softmax += float(relevance_weights.sum() - relevance_scores.sum())
        # scores = scale q k^T: contributions scale q_id k_jd, ε-rule over d, uniform rule within each product.
        ratio = _safe_divide(relevance_scores, scores) * s["scale"]
        relevance_q_rot = s["q_rot"] * (ratio @ s["k_rep"]) / 2
        relevance_k_rep = s["k_rep"] * (ratio.transpose(1, 2) @ s["q_rot"]) / 2
        relevance_k_rot = relevance_k_rep.view(kv_heads, groups, n, head_dim).sum(1)
        relevance_v = relevance_v_rep.view(kv_heads, groups, n, head_dim).sum(1)

        def unrotate(value, rotated, relevance_rotated):
            # ε-rule for the rotation y = x cos + rotate_half(x) sin (a linear map M): R(x) = x * M^T (R(y) / y).
            r = _safe_divide(relevance_rotated, rotated)
            return value * (r * cos - _rotate_half(r * sin))

        relevance_q = unrotate(s["qh"], s["q_rot"], relevance_q_rot).transpose(0, 1).reshape(n, -1)
        relevance_k = unrotate(s["kh"], s["k_rot"], relevance_k_rot).transpose(0, 1).reshape(n, -1)
        relevance_v = relevance_v.transpose(0, 1).reshape(n, -1)
        relevance_x1 = sum(
            _linear(s["x1"], w(p + f"self_attn.{name}_proj.weight"), b(p + f"self_attn.{name}_proj.bias"), rel, ledger)
            for name, rel in (("q", relevance_q), ("k", relevance_k), ("v", relevance_v))
        )
        relevance_hidden = relevance_prev + relevance_x1  # identity rule through input_layernorm
    return ReferenceRelevance(
        tokens=relevance_hidden.sum(-1),
        output=output_relevance,
        softmax_absorbed=ledger.softmax,
        bias_absorbed=ledger.bias,
    )


def _or_zero(bias):
    return 0 if bias is None else bias


class _DoubleNorm:
    """The epsilon of a model's RMSNorm with its weight in float64."""

    def __init__(self, norm, weight) -> None:
        self.weight = weight
        self.variance_epsilon = norm.variance_epsilon
