"""Encoder hyper-parameters, read from and written to Hugging Face `config.json` dicts.

One dataclass describes both supported families. BERT and DistilBERT are the
same post-LayerNorm transformer; DistilBERT has no token-type embeddings
(`type_vocab_size == 0`), a fixed LayerNorm epsilon of 1e-12, and its own key
names in `config.json` (`dim`, `n_layers`, `n_heads`, `hidden_dim`, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from alad_jax.errors import AladError

MODEL_TYPES = ("bert", "distilbert")
# HF activation names we implement; "gelu" is the exact erf form in transformers.
HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
_DISTILBERT_LAYER_NORM_EPS = 1e-12  # hard-coded in transformers' DistilBERT modules


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Shape and regularisation of a BERT-family encoder.

    Attributes:
      model_type: "bert" or "distilbert".
      vocab_size, hidden_size, num_layers, num_heads, intermediate_size: sizes.
      max_position_embeddings: learned absolute positions.
      type_vocab_size: token-type (segment) vocabulary; 0 for DistilBERT.
      layer_norm_eps: LayerNorm epsilon.
      hidden_act: HF activation name; "gelu" is the exact (erf) GELU.
      hidden_dropout: dropout on embeddings and residual branches.
      attention_dropout: dropout on attention probabilities.
      pad_token_id: id of [PAD] in the vocabulary.
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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, hf_config: dict) -> EncoderConfig:
        """Reads a transformers `config.json` dict of a BERT or DistilBERT model.

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
        raise AladError(
            f"config.json: unsupported model_type {model_type!r}; supported: {', '.join(MODEL_TYPES)} "
            "(pass a BERT or DistilBERT checkpoint)"
        )

    def to_hf(self) -> dict[str, Any]:
        """A `config.json` dict that transformers' BertModel / DistilBertModel loads."""
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


def _pad_id(hf_config: dict) -> int:
    # transformers allows pad_token_id null; [PAD] is id 0 in every BERT vocabulary we support.
    pad = hf_config.get("pad_token_id", 0)
    return 0 if pad is None else pad
