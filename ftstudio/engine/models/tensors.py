"""Every parameter tensor an architecture creates, derived from its config.json (``shape_from_config``).

Pure Python, no torch: the model panel and the memory plan answer before any weights are loaded. It lists every
parameter tensor the Hugging Face class would create (name → shape), because the optimizer's state
depends on tensor shapes (Adafactor's factored moments, one ``step`` scalar per tensor), not only on N.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ftstudio.core.errors import ModelError
from ftstudio.engine.models.inspect import context_length

# Encoder families: trained as sequence classifiers, so the loss is over a handful of labels, not a vocabulary.
ENCODERS = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2", "mpnet",
            "camembert", "albert", "modernbert"}


@dataclass
class ModelShape:
    """What the memory plan needs to know about an architecture."""
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)  # every trainable tensor, tied ones once
    gated_mlp: bool = True          # SwiGLU/GeGLU (3 matrices) vs a plain GELU MLP (2)
    norm_bias: bool = False         # LayerNorm (weight+bias) vs RMSNorm
    norms_per_layer: int = 2
    dropout: float = 0.0            # hidden/residual dropout probability in training
    attn_dropout: float = 0.0
    is_encoder: bool = False
    tied: bool = False
    exact: bool = False             # tensors read from safetensors headers rather than derived from the config
    context: int | None = None      # max_position_embeddings / n_positions: the longest sequence it was made for

    @property
    def params(self) -> int:
        return sum(_numel(s) for s in self.tensors.values())

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    def largest_tensor(self) -> int:
        return max((_numel(s) for s in self.tensors.values()), default=0)

    def layer_params(self) -> int:
        """Parameters of one transformer block (what FSDP gathers at a time)."""
        own = [n for n in self.tensors if _FIRST_BLOCK.search(n)]   # not experts.0 of every block
        return sum(_numel(self.tensors[n]) for n in own) or self.params // max(self.layers, 1)


_FIRST_BLOCK = re.compile(r"(^|\.)(layers|layer|h|blocks|block)\.0\.")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for x in shape:
        n *= int(x)
    return n


def _get(cfg: dict, *names, default=None):
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    return default


def shape_from_config(cfg: dict) -> ModelShape:
    """Derive the shape and the parameter tensors from a config.json dict (text part for multimodal ones)."""
    if not isinstance(cfg, dict):
        raise ModelError("the model config must be a dict read from config.json")
    if "text_config" in cfg and isinstance(cfg["text_config"], dict) and "hidden_size" not in cfg:
        cfg = {**cfg["text_config"], "tie_word_embeddings": cfg.get("tie_word_embeddings",
                                                                    cfg["text_config"].get("tie_word_embeddings"))}
    mt = str(cfg.get("model_type", "llama")).lower()
    d = _get(cfg, "hidden_size", "n_embd", "d_model", "dim")
    L = _get(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    V = _get(cfg, "vocab_size")
    if not d or not L or not V:
        missing = [n for n, v in (("hidden_size", d), ("num_hidden_layers", L), ("vocab_size", V)) if not v]
        raise ModelError(f"config.json of model_type {mt!r} lacks {', '.join(missing)} (or has it 0); add "
                         f"{'it' if len(missing) == 1 else 'them'} from the model's original config.json")
    heads = _get(cfg, "num_attention_heads", "n_head", "num_heads", default=max(1, d // 64))
    kvh = _get(cfg, "num_key_value_heads", "n_kv_heads", default=heads)
    hd = _get(cfg, "head_dim", default=d // heads)
    if mt == "gpt2" or mt in ("gpt_neo", "gptj", "starcoder2", "phi", "gpt_bigcode", "opt", "falcon", "gpt_neox"):
        shape = _gpt_like(cfg, mt, d, L, V, heads, hd)
    elif mt in ENCODERS:
        shape = _bert_like(cfg, mt, d, L, V, heads, hd)
    else:
        shape = _llama_like(cfg, mt, d, L, V, heads, kvh, hd)
    shape.context = context_length(cfg)
    return shape


def _llama_like(cfg, mt, d, L, V, heads, kvh, hd) -> ModelShape:
    i = _get(cfg, "intermediate_size", default=4 * d)
    # Grouped-query attention: k and v have kv_heads·head_dim rows, not hidden_size.
    qkv_bias = bool(_get(cfg, "attention_bias", default=mt in ("qwen2", "qwen2_moe")))
    mlp_bias = bool(_get(cfg, "mlp_bias", default=False))
    tied = bool(_get(cfg, "tie_word_embeddings", default=mt.startswith("gemma")))
    extra_norms = 2 if mt in ("gemma2", "gemma3", "gemma3_text") else 0  # pre/post feed-forward norms
    qk_norm = mt in ("qwen3", "gemma3", "gemma3_text", "olmo2", "qwen3_moe", "olmoe")
    moe = _Experts.of(cfg, i)
    t: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, d)}
    for l in range(L):
        p = f"model.layers.{l}."
        t[p + "self_attn.q_proj.weight"] = (heads * hd, d)
        t[p + "self_attn.k_proj.weight"] = (kvh * hd, d)
        t[p + "self_attn.v_proj.weight"] = (kvh * hd, d)
        t[p + "self_attn.o_proj.weight"] = (d, heads * hd)
        if qkv_bias:
            t[p + "self_attn.q_proj.bias"] = (heads * hd,)
            t[p + "self_attn.k_proj.bias"] = (kvh * hd,)
            t[p + "self_attn.v_proj.bias"] = (kvh * hd,)
        if qk_norm:
            t[p + "self_attn.q_norm.weight"] = (hd,)
            t[p + "self_attn.k_norm.weight"] = (hd,)
        if moe is not None and moe.sparse(l):
            moe.add(t, p + "mlp.", d)
        else:
            for name, shp in (("gate_proj", (i, d)), ("up_proj", (i, d)), ("down_proj", (d, i))):
                t[p + f"mlp.{name}.weight"] = shp
                if mlp_bias:
                    t[p + f"mlp.{name}.bias"] = (shp[0],)
        for n in range(2 + extra_norms):
            t[p + f"norm{n}.weight"] = (d,)
    t["model.norm.weight"] = (d,)
    if not tied:
        t["lm_head.weight"] = (V, d)
    if moe is not None:   # what one token's MLP computes (its top-k experts and the shared one): the activations
        i = moe.active_intermediate
    return ModelShape(mt, d, L, heads, kvh, hd, i, V, t, gated_mlp=True, norms_per_layer=2,
                      attn_dropout=float(_get(cfg, "attention_dropout", default=0.0) or 0.0), tied=tied)


def _gpt_like(cfg, mt, d, L, V, heads, hd) -> ModelShape:
    i = _get(cfg, "n_inner", "ffn_hidden_size", "intermediate_size", "ffn_dim", default=None) or 4 * d
    P = _get(cfg, "n_positions", "max_position_embeddings", default=2048)
    tied = bool(_get(cfg, "tie_word_embeddings", default=mt != "gpt_neox"))   # Pythia has its own embed_out
    # Keys and values: one head for multi-query attention (SantaCoder, Falcon-7B), the configured heads for
    # grouped-query (StarCoder2, Falcon-40B's new decoder), else as many as the queries.
    if mt == "falcon" and cfg.get("new_decoder_architecture"):
        kvh = _get(cfg, "num_kv_heads", default=heads)
    elif cfg.get("multi_query"):
        kvh = 1
    elif mt in ("starcoder2", "phi"):
        kvh = _get(cfg, "num_key_value_heads", default=heads)
    else:
        kvh = heads
    bias = bool(cfg.get("bias", False)) if mt == "falcon" else bool(cfg.get("use_bias", True))
    # Falcon-7B's parallel block reads one norm; the rest (and Falcon-40B's new decoder) two.
    norms = ("ln_1",) if mt == "falcon" and not cfg.get("new_decoder_architecture") else ("ln_1", "ln_2")
    t: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (V, d)}
    if mt in ("gpt2", "gpt_neo", "gpt_bigcode", "opt"):
        t["transformer.wpe.weight"] = (P, d)
    for l in range(L):
        p = f"transformer.h.{l}."
        for name, shp in (("attn.c_attn", (d, d + 2 * kvh * hd)), ("attn.c_proj", (d, d)),
                          ("mlp.c_fc", (d, i)), ("mlp.c_proj", (i, d))):
            t[p + name + ".weight"] = shp
            if bias:
                t[p + name + ".bias"] = (shp[1],)
        for n in norms:
            t[p + n + ".weight"] = (d,)
            t[p + n + ".bias"] = (d,)
    t["transformer.ln_f.weight"] = (d,)
    t["transformer.ln_f.bias"] = (d,)
    if not tied:
        t["lm_head.weight"] = (V, d)
    drop = float(_get(cfg, "resid_pdrop", "hidden_dropout", "dropout", default=0.0) or 0.0)
    adrop = float(_get(cfg, "attn_pdrop", "attention_dropout", default=0.0) or 0.0)
    return ModelShape(mt, d, L, heads, kvh, hd, i, V, t, gated_mlp=False, norm_bias=True,
                      dropout=drop, attn_dropout=adrop, tied=tied)


def _bert_like(cfg, mt, d, L, V, heads, hd) -> ModelShape:
    i = _get(cfg, "intermediate_size", "hidden_dim", default=4 * d)
    P = _get(cfg, "max_position_embeddings", default=512)
    types = _get(cfg, "type_vocab_size", default=2 if mt == "bert" else 1)
    n_labels = len(cfg.get("id2label") or {}) or 2
    t: dict[str, tuple[int, ...]] = {"embeddings.word_embeddings.weight": (V, d),
                                     "embeddings.position_embeddings.weight": (P, d),
                                     "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,)}
    if types and mt != "distilbert":
        t["embeddings.token_type_embeddings.weight"] = (types, d)
    for l in range(L):
        p = f"encoder.layer.{l}."
        for name, shp in (("q", (d, d)), ("k", (d, d)), ("v", (d, d)), ("o", (d, d)),
                          ("intermediate", (i, d)), ("output", (d, i))):
            t[p + name + ".weight"] = shp
            t[p + name + ".bias"] = (shp[0],)
        for n in ("ln_attn", "ln_out"):
            t[p + n + ".weight"] = (d,)
            t[p + n + ".bias"] = (d,)
    t["pooler.dense.weight"] = (d, d)
    t["pooler.dense.bias"] = (d,)
    t["classifier.weight"] = (n_labels, d)
    t["classifier.bias"] = (n_labels,)
    drop = float(_get(cfg, "hidden_dropout_prob", "dropout", default=0.1) or 0.0)
    adrop = float(_get(cfg, "attention_probs_dropout_prob", "attention_dropout", default=0.1) or 0.0)
    return ModelShape(mt, d, L, heads, heads, hd, i, n_labels, t, gated_mlp=False, norm_bias=True,
                      dropout=drop, attn_dropout=adrop, is_encoder=True)


@dataclass
class _Experts:
    """A mixture-of-experts MLP (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek...) as transformers holds it in memory:
    a router and the experts fused into one tensor per projection, beside an optional shared expert. Counting
    such a block as one dense MLP made Mixtral-8x7B "7.2 B parameters" (it has 46.7 B) and Qwen3-30B-A3B 3.3 B."""
    experts: int
    intermediate: int                 # one expert's
    top_k: int
    shared: int = 0                   # the shared expert's intermediate size (0: none)
    shared_gate: bool = False         # Qwen2-MoE's sigmoid gate on the shared expert
    step: int = 1                     # Qwen's decoder_sparse_step: blocks step-1, 2·step-1, ... are sparse
    first_dense: int = 0              # DeepSeek's first_k_dense_replace: the first blocks keep a dense MLP
    dense_layers: tuple[int, ...] = ()  # Qwen's mlp_only_layers

    @classmethod
    def of(cls, cfg: dict, dense_i: int) -> "_Experts | None":
        n = _get(cfg, "num_local_experts", "num_experts", "n_routed_experts", default=0)
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            return None
        ei = _get(cfg, "moe_intermediate_size", default=dense_i)
        shared = _get(cfg, "shared_expert_intermediate_size", default=0) or \
            (_get(cfg, "n_shared_experts", default=0) or 0) * ei
        return cls(n, ei, int(_get(cfg, "num_experts_per_tok", "moe_topk", default=2)), int(shared),
                   shared_gate="shared_expert_intermediate_size" in cfg and bool(shared),
                   step=int(_get(cfg, "decoder_sparse_step", default=1) or 1),
                   first_dense=int(_get(cfg, "first_k_dense_replace", default=0) or 0),
                   dense_layers=tuple(_get(cfg, "mlp_only_layers", default=()) or ()))

    def sparse(self, layer: int) -> bool:
        return layer >= self.first_dense and layer not in self.dense_layers and (layer + 1) % self.step == 0

    @property
    def active_intermediate(self) -> int:
        return self.top_k * self.intermediate + self.shared

    def add(self, t: dict, p: str, d: int) -> None:
        e, ei = self.experts, self.intermediate
        t[p + "gate.weight"] = (e, d)
        t[p + "experts.gate_up_proj"] = (e, 2 * ei, d)
        t[p + "experts.down_proj"] = (e, d, ei)
        if self.shared:
            for name, shp in (("gate_proj", (self.shared, d)), ("up_proj", (self.shared, d)),
                              ("down_proj", (d, self.shared))):
                t[p + f"shared_expert.{name}.weight"] = shp
            if self.shared_gate:
                t[p + "shared_expert_gate.weight"] = (1, d)
