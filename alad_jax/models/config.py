"""Encoder hyper-parameters, read from and written to Hugging Face `config.json` dicts.

One dataclass describes the three supported families. BERT, DistilBERT and
MPNet are the same post-LayerNorm transformer; DistilBERT has no token-type
embeddings (`type_vocab_size == 0`), a fixed LayerNorm epsilon of 1e-12, and
its own key names in `config.json` (`dim`, `n_layers`, `n_heads`,
`hidden_dim`, ...). MPNet has no token types either, counts positions from 2
(RoBERTa style) and adds a relative position bias with
`relative_attention_num_buckets` entries per head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from alad_jax.errors import AladError

MODEL_TYPES = ("bert", "distilbert", "mpnet")
# HF activation names we implement; "gelu" is the exact erf form in transformers.
HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
_DISTILBERT_LAYER_NORM_EPS = 1e-12  # hard-coded in transformers' DistilBERT modules
# transformers' MPNet always buckets relative positions into 32 (compute_position_bias's default),
# whatever the config says; the config only sizes the table, so it needs at least 32 rows.
MPNET_POSITION_BUCKETS = 32
# MPNet's padding index, hard-coded in transformers' MPNetEmbeddings whatever pad_token_id says:
# positions count real tokens from 2 and give padding 1, so n tokens fit max_position_embeddings - 2.
MPNET_PADDING_IDX = 1


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Shape and regularisation of a BERT-family encoder.

    Attributes:
      model_type: "bert", "distilbert" or "mpnet".
      vocab_size, hidden_size, num_layers, num_heads, intermediate_size: sizes.
      max_position_embeddings: learned absolute positions.
      type_vocab_size: token-type (segment) vocabulary; 0 for DistilBERT and MPNet.
      layer_norm_eps: LayerNorm epsilon.
      hidden_act: HF activation name; "gelu" is the exact (erf) GELU.
      hidden_dropout: dropout on embeddings and residual branches.
      attention_dropout: dropout on attention probabilities.
      pad_token_id: id of the padding token ([PAD] = 0 for BERT, <pad> = 1 for MPNet).
      relative_attention_num_buckets: rows of MPNet's relative position bias table; 0 otherwise.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    relative_attention_num_buckets: int = 0

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise AladError(
                f"unsupported model_type {self.model_type!r}; supported: {', '.join(MODEL_TYPES)}"
            )
        if self.hidden_size % self.num_heads:
            raise AladError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; fix the config"
            )
        if self.hidden_act not in HIDDEN_ACTS:
            raise AladError(
                f"unsupported hidden_act {self.hidden_act!r}; supported: {', '.join(HIDDEN_ACTS)}"
            )
        if self.model_type == "distilbert" and self.type_vocab_size != 0:
            raise AladError(
                f"DistilBERT has no token types but type_vocab_size={self.type_vocab_size}; set it to 0"
            )
        if self.model_type == "distilbert" and self.layer_norm_eps != _DISTILBERT_LAYER_NORM_EPS:
            raise AladError(
                f"DistilBERT's LayerNorm epsilon is fixed at 1e-12, got {self.layer_norm_eps}; "
                "use model_type='bert' for other values"
            )
        if self.model_type == "mpnet" and self.type_vocab_size != 0:
            raise AladError(f"MPNet has no token types but type_vocab_size={self.type_vocab_size}; set it to 0")
        if self.model_type == "mpnet" and self.relative_attention_num_buckets < MPNET_POSITION_BUCKETS:
            raise AladError(
                f"relative_attention_num_buckets={self.relative_attention_num_buckets} is too small: MPNet buckets "
                f"relative positions into {MPNET_POSITION_BUCKETS} (as transformers does); use at least that"
            )
        if self.model_type != "mpnet" and self.relative_attention_num_buckets:
            raise AladError(
                f"relative_attention_num_buckets={self.relative_attention_num_buckets} is only for MPNet; "
                f"{self.model_type} uses absolute positions, set it to 0"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_length(self) -> int:
        """The longest input (special tokens included) the position table covers."""
        if self.model_type == "mpnet":
            return self.max_position_embeddings - (MPNET_PADDING_IDX + 1)
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, hf_config: dict) -> EncoderConfig:
        """Reads a transformers `config.json` dict of a BERT, DistilBERT or MPNet model.

        Size keys are required; the optional ones default as in transformers.
        """
        model_type = hf_config.get("model_type")
        if model_type == "bert":
            position_type = hf_config.get("position_embedding_type", "absolute")
            if position_type != "absolute":
                raise AladError(
                    f"config.json: position_embedding_type={position_type!r} is not supported "
                    "(only 'absolute' BERT positions are implemented)"
                )
            return cls(
                model_type="bert",
                vocab_size=_required(hf_config, "vocab_size"),
                hidden_size=_required(hf_config, "hidden_size"),
                num_layers=_required(hf_config, "num_hidden_layers"),
                num_heads=_required(hf_config, "num_attention_heads"),
                intermediate_size=_required(hf_config, "intermediate_size"),
                max_position_embeddings=hf_config.get("max_position_embeddings", 512),
                type_vocab_size=hf_config.get("type_vocab_size", 2),
                layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
                hidden_act=hf_config.get("hidden_act", "gelu"),
                hidden_dropout=hf_config.get("hidden_dropout_prob", 0.1),
                attention_dropout=hf_config.get("attention_probs_dropout_prob", 0.1),
                pad_token_id=_pad_id(hf_config),
            )
        if model_type == "distilbert":
            return cls(
                model_type="distilbert",
                vocab_size=_required(hf_config, "vocab_size"),
                hidden_size=_required(hf_config, "dim"),
                num_layers=_required(hf_config, "n_layers"),
                num_heads=_required(hf_config, "n_heads"),
                intermediate_size=_required(hf_config, "hidden_dim"),
                max_position_embeddings=hf_config.get("max_position_embeddings", 512),
                type_vocab_size=0,
                layer_norm_eps=_DISTILBERT_LAYER_NORM_EPS,
                hidden_act=hf_config.get("activation", "gelu"),
                hidden_dropout=hf_config.get("dropout", 0.1),
                attention_dropout=hf_config.get("attention_dropout", 0.1),
                pad_token_id=_pad_id(hf_config),
            )
        if model_type == "mpnet":
            return cls(
                model_type="mpnet",
                vocab_size=_required(hf_config, "vocab_size"),
                hidden_size=_required(hf_config, "hidden_size"),
                num_layers=_required(hf_config, "num_hidden_layers"),
                num_heads=_required(hf_config, "num_attention_heads"),
                intermediate_size=_required(hf_config, "intermediate_size"),
                max_position_embeddings=hf_config.get("max_position_embeddings", 512),
                type_vocab_size=0,
                layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
                hidden_act=hf_config.get("hidden_act", "gelu"),
                hidden_dropout=hf_config.get("hidden_dropout_prob", 0.1),
                attention_dropout=hf_config.get("attention_probs_dropout_prob", 0.1),
                pad_token_id=_pad_id(hf_config, default=1),
                relative_attention_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
            )
        raise AladError(
            f"config.json: unsupported model_type {model_type!r}; supported: {', '.join(MODEL_TYPES)} "
            "(pass a BERT, DistilBERT or MPNet checkpoint)"
        )

    def to_hf(self) -> dict[str, Any]:
        """A `config.json` dict that transformers' BertModel / DistilBertModel / MPNetModel loads."""
        if self.model_type == "bert":
            return {
                "model_type": "bert",
                "architectures": ["BertModel"],
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_heads,
                "intermediate_size": self.intermediate_size,
                "max_position_embeddings": self.max_position_embeddings,
                "type_vocab_size": self.type_vocab_size,
                "layer_norm_eps": self.layer_norm_eps,
                "hidden_act": self.hidden_act,
                "hidden_dropout_prob": self.hidden_dropout,
                "attention_probs_dropout_prob": self.attention_dropout,
                "pad_token_id": self.pad_token_id,
                "position_embedding_type": "absolute",
                "initializer_range": 0.02,
            }
        if self.model_type == "mpnet":
            return {
                "model_type": "mpnet",
                "architectures": ["MPNetModel"],
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_heads,
                "intermediate_size": self.intermediate_size,
                "max_position_embeddings": self.max_position_embeddings,
                "layer_norm_eps": self.layer_norm_eps,
                "hidden_act": self.hidden_act,
                "hidden_dropout_prob": self.hidden_dropout,
                "attention_probs_dropout_prob": self.attention_dropout,
                "pad_token_id": self.pad_token_id,
                "relative_attention_num_buckets": self.relative_attention_num_buckets,
                "initializer_range": 0.02,
            }
        return {
            "model_type": "distilbert",
            "architectures": ["DistilBertModel"],
            "vocab_size": self.vocab_size,
            "dim": self.hidden_size,
            "n_layers": self.num_layers,
            "n_heads": self.num_heads,
            "hidden_dim": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "activation": self.hidden_act,
            "dropout": self.hidden_dropout,
            "attention_dropout": self.attention_dropout,
            "pad_token_id": self.pad_token_id,
            "sinusoidal_pos_embds": False,
            "initializer_range": 0.02,
        }


def _required(hf_config: dict, key: str) -> int:
    if key not in hf_config:
        raise AladError(
            f"config.json: missing key {key!r} for model_type {hf_config.get('model_type')!r}; "
            "the checkpoint's config is incomplete"
        )
    return hf_config[key]


def _pad_id(hf_config: dict, default: int = 0) -> int:
    # transformers allows pad_token_id null; [PAD] is id 0 in every BERT vocabulary we support, <pad> 1 in MPNet's.
    pad = hf_config.get("pad_token_id", default)
    return default if pad is None else pad
