"""Hugging Face checkpoint tensors <-> our nnx parameters, by explicit name tables.

Each rule is one tensor pattern (`{i}` = layer index) in three spellings:

- `torch`: the PyTorch layout transformers writes to `model.safetensors`
  (nn.Linear weight is [out, in], nn.Embedding/LayerNorm `weight`);
- `flax`: the old transformers Flax layout of `flax_model.msgpack` (nested
  dicts joined with "."; Dense `kernel` is [in, out], Embed `embedding`,
  LayerNorm `scale`); None for MPNet, which transformers never shipped in Flax;
- `ours`: the path in our nnx module (see modeling.py), kernels [in, out].

`transpose` says whether the torch tensor is transposed on the way to ours
(every nn.Linear weight); flax tensors never are. Both directions use the
same table, so what we save is what we load.

Accepted beyond the table, and listed as ignored rather than unexpected:
a base-model prefix ("bert." / "distilbert." / "mpnet.", from
*ForTokenClassification and friends) whose sibling tensors are task heads; the
BERT / MPNet pooler; the `position_ids` / `token_type_ids` buffers old
transformers versions saved.
Legacy `LayerNorm.gamma` / `LayerNorm.beta` names read as `weight` / `bias`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alad_jax.errors import AladError
from alad_jax.models.config import EncoderConfig
from alad_jax.models.modeling import build_encoder

Path = tuple[str | int, ...]


class Rule(NamedTuple):
    torch: str
    flax: str | None
    ours: str
    transpose: bool


_BERT_RULES = (
    #    torch (model.safetensors)                        flax (flax_model.msgpack)                        ours                                    transpose
    Rule("embeddings.word_embeddings.weight",             "embeddings.word_embeddings.embedding",          "embeddings.word_embeddings.embedding", False),
    Rule("embeddings.position_embeddings.weight",         "embeddings.position_embeddings.embedding",      "embeddings.position_embeddings.embedding", False),
    Rule("embeddings.token_type_embeddings.weight",       "embeddings.token_type_embeddings.embedding",    "embeddings.token_type_embeddings.embedding", False),
    Rule("embeddings.LayerNorm.weight",                   "embeddings.LayerNorm.scale",                    "embeddings.norm.scale", False),
    Rule("embeddings.LayerNorm.bias",                     "embeddings.LayerNorm.bias",                     "embeddings.norm.bias", False),
    Rule("encoder.layer.{i}.attention.self.query.weight", "encoder.layer.{i}.attention.self.query.kernel", "layers.{i}.attention.query.kernel", True),
    Rule("encoder.layer.{i}.attention.self.query.bias",   "encoder.layer.{i}.attention.self.query.bias",   "layers.{i}.attention.query.bias", False),
    Rule("encoder.layer.{i}.attention.self.key.weight",   "encoder.layer.{i}.attention.self.key.kernel",   "layers.{i}.attention.key.kernel", True),
    Rule("encoder.layer.{i}.attention.self.key.bias",     "encoder.layer.{i}.attention.self.key.bias",     "layers.{i}.attention.key.bias", False),
    Rule("encoder.layer.{i}.attention.self.value.weight", "encoder.layer.{i}.attention.self.value.kernel", "layers.{i}.attention.value.kernel", True),
    Rule("encoder.layer.{i}.attention.self.value.bias",   "encoder.layer.{i}.attention.self.value.bias",   "layers.{i}.attention.value.bias", False),
    Rule("encoder.layer.{i}.attention.output.dense.weight", "encoder.layer.{i}.attention.output.dense.kernel", "layers.{i}.attention.output.kernel", True),
    Rule("encoder.layer.{i}.attention.output.dense.bias", "encoder.layer.{i}.attention.output.dense.bias", "layers.{i}.attention.output.bias", False),
    Rule("encoder.layer.{i}.attention.output.LayerNorm.weight", "encoder.layer.{i}.attention.output.LayerNorm.scale", "layers.{i}.attention_norm.scale", False),
    Rule("encoder.layer.{i}.attention.output.LayerNorm.bias", "encoder.layer.{i}.attention.output.LayerNorm.bias", "layers.{i}.attention_norm.bias", False),
    Rule("encoder.layer.{i}.intermediate.dense.weight",   "encoder.layer.{i}.intermediate.dense.kernel",   "layers.{i}.mlp.intermediate.kernel", True),
    Rule("encoder.layer.{i}.intermediate.dense.bias",     "encoder.layer.{i}.intermediate.dense.bias",     "layers.{i}.mlp.intermediate.bias", False),
    Rule("encoder.layer.{i}.output.dense.weight",         "encoder.layer.{i}.output.dense.kernel",         "layers.{i}.mlp.output.kernel", True),
    Rule("encoder.layer.{i}.output.dense.bias",           "encoder.layer.{i}.output.dense.bias",           "layers.{i}.mlp.output.bias", False),
    Rule("encoder.layer.{i}.output.LayerNorm.weight",     "encoder.layer.{i}.output.LayerNorm.scale",      "layers.{i}.mlp_norm.scale", False),
    Rule("encoder.layer.{i}.output.LayerNorm.bias",       "encoder.layer.{i}.output.LayerNorm.bias",       "layers.{i}.mlp_norm.bias", False),
)

_DISTILBERT_RULES = (
    #    torch (model.safetensors)                           flax (flax_model.msgpack)                           ours                                    transpose
    Rule("embeddings.word_embeddings.weight",                "embeddings.word_embeddings.embedding",             "embeddings.word_embeddings.embedding", False),
    Rule("embeddings.position_embeddings.weight",            "embeddings.position_embeddings.embedding",         "embeddings.position_embeddings.embedding", False),
    Rule("embeddings.LayerNorm.weight",                      "embeddings.LayerNorm.scale",                       "embeddings.norm.scale", False),
    Rule("embeddings.LayerNorm.bias",                        "embeddings.LayerNorm.bias",                        "embeddings.norm.bias", False),
    Rule("transformer.layer.{i}.attention.q_lin.weight",     "transformer.layer.{i}.attention.q_lin.kernel",     "layers.{i}.attention.query.kernel", True),
    Rule("transformer.layer.{i}.attention.q_lin.bias",       "transformer.layer.{i}.attention.q_lin.bias",       "layers.{i}.attention.query.bias", False),
    Rule("transformer.layer.{i}.attention.k_lin.weight",     "transformer.layer.{i}.attention.k_lin.kernel",     "layers.{i}.attention.key.kernel", True),
    Rule("transformer.layer.{i}.attention.k_lin.bias",       "transformer.layer.{i}.attention.k_lin.bias",       "layers.{i}.attention.key.bias", False),
    Rule("transformer.layer.{i}.attention.v_lin.weight",     "transformer.layer.{i}.attention.v_lin.kernel",     "layers.{i}.attention.value.kernel", True),
    Rule("transformer.layer.{i}.attention.v_lin.bias",       "transformer.layer.{i}.attention.v_lin.bias",       "layers.{i}.attention.value.bias", False),
    Rule("transformer.layer.{i}.attention.out_lin.weight",   "transformer.layer.{i}.attention.out_lin.kernel",   "layers.{i}.attention.output.kernel", True),
    Rule("transformer.layer.{i}.attention.out_lin.bias",     "transformer.layer.{i}.attention.out_lin.bias",     "layers.{i}.attention.output.bias", False),
    Rule("transformer.layer.{i}.sa_layer_norm.weight",       "transformer.layer.{i}.sa_layer_norm.scale",        "layers.{i}.attention_norm.scale", False),
    Rule("transformer.layer.{i}.sa_layer_norm.bias",         "transformer.layer.{i}.sa_layer_norm.bias",         "layers.{i}.attention_norm.bias", False),
    Rule("transformer.layer.{i}.ffn.lin1.weight",            "transformer.layer.{i}.ffn.lin1.kernel",            "layers.{i}.mlp.intermediate.kernel", True),
    Rule("transformer.layer.{i}.ffn.lin1.bias",              "transformer.layer.{i}.ffn.lin1.bias",              "layers.{i}.mlp.intermediate.bias", False),
    Rule("transformer.layer.{i}.ffn.lin2.weight",            "transformer.layer.{i}.ffn.lin2.kernel",            "layers.{i}.mlp.output.kernel", True),
    Rule("transformer.layer.{i}.ffn.lin2.bias",              "transformer.layer.{i}.ffn.lin2.bias",              "layers.{i}.mlp.output.bias", False),
    Rule("transformer.layer.{i}.output_layer_norm.weight",   "transformer.layer.{i}.output_layer_norm.scale",    "layers.{i}.mlp_norm.scale", False),
    Rule("transformer.layer.{i}.output_layer_norm.bias",     "transformer.layer.{i}.output_layer_norm.bias",     "layers.{i}.mlp_norm.bias", False),
)

_MPNET_RULES = (
    #    torch (model.safetensors)                             flax  ours                                         transpose
    Rule("embeddings.word_embeddings.weight",                  None, "embeddings.word_embeddings.embedding",      False),
    Rule("embeddings.position_embeddings.weight",              None, "embeddings.position_embeddings.embedding",  False),
    Rule("embeddings.LayerNorm.weight",                        None, "embeddings.norm.scale",                     False),
    Rule("embeddings.LayerNorm.bias",                          None, "embeddings.norm.bias",                      False),
    # [num_buckets, heads] in both: an nn.Embedding, one bias per (bucket, head), not transposed.
    Rule("encoder.relative_attention_bias.weight",             None, "relative_attention_bias.embedding",         False),
    Rule("encoder.layer.{i}.attention.attn.q.weight",          None, "layers.{i}.attention.query.kernel",         True),
    Rule("encoder.layer.{i}.attention.attn.q.bias",            None, "layers.{i}.attention.query.bias",           False),
    Rule("encoder.layer.{i}.attention.attn.k.weight",          None, "layers.{i}.attention.key.kernel",           True),
    Rule("encoder.layer.{i}.attention.attn.k.bias",            None, "layers.{i}.attention.key.bias",             False),
    Rule("encoder.layer.{i}.attention.attn.v.weight",          None, "layers.{i}.attention.value.kernel",         True),
    Rule("encoder.layer.{i}.attention.attn.v.bias",            None, "layers.{i}.attention.value.bias",           False),
    Rule("encoder.layer.{i}.attention.attn.o.weight",          None, "layers.{i}.attention.output.kernel",        True),
    Rule("encoder.layer.{i}.attention.attn.o.bias",            None, "layers.{i}.attention.output.bias",          False),
    Rule("encoder.layer.{i}.attention.LayerNorm.weight",       None, "layers.{i}.attention_norm.scale",           False),
    Rule("encoder.layer.{i}.attention.LayerNorm.bias",         None, "layers.{i}.attention_norm.bias",            False),
    Rule("encoder.layer.{i}.intermediate.dense.weight",        None, "layers.{i}.mlp.intermediate.kernel",        True),
    Rule("encoder.layer.{i}.intermediate.dense.bias",          None, "layers.{i}.mlp.intermediate.bias",          False),
    Rule("encoder.layer.{i}.output.dense.weight",              None, "layers.{i}.mlp.output.kernel",              True),
    Rule("encoder.layer.{i}.output.dense.bias",                None, "layers.{i}.mlp.output.bias",                False),
    Rule("encoder.layer.{i}.output.LayerNorm.weight",          None, "layers.{i}.mlp_norm.scale",                 False),
    Rule("encoder.layer.{i}.output.LayerNorm.bias",            None, "layers.{i}.mlp_norm.bias",                  False),
)

RULES = {"bert": _BERT_RULES, "distilbert": _DISTILBERT_RULES, "mpnet": _MPNET_RULES}
# transformers' base_model_prefix: task models nest the encoder under it.
PREFIXES = {"bert": "bert.", "distilbert": "distilbert.", "mpnet": "mpnet."}
# Encoder-level tensors we do not model: the pooler and saved index buffers.
_IGNORED = {
    "bert": re.compile(r"pooler\..*|embeddings\.position_ids|embeddings\.token_type_ids"),
    "distilbert": re.compile(r"embeddings\.position_ids"),
    "mpnet": re.compile(r"pooler\..*|embeddings\.position_ids"),
}
_LEGACY = ((re.compile(r"LayerNorm\.gamma$"), "LayerNorm.weight"), (re.compile(r"LayerNorm\.beta$"), "LayerNorm.bias"))
LAYOUTS = ("torch", "flax")


class LoadedParams(NamedTuple):
    """params: our path -> float32 array; ignored: checkpoint names deliberately left out."""

    params: dict[Path, np.ndarray]
    ignored: list[str]


def expand_rules(config: EncoderConfig) -> list[Rule]:
    """The table with `{i}` replaced by every layer index of `config`."""
    rules = []
    for rule in RULES[config.model_type]:
        indices = range(config.num_layers) if "{i}" in rule.ours else [None]
        for i in indices:
            rules.append(Rule(*(s.format(i=i) if isinstance(s, str) else s for s in rule)))
    if not config.type_vocab_size:
        rules = [r for r in rules if "token_type" not in r.ours]
    return rules


def to_path(dotted: str) -> Path:
    """'layers.3.mlp.output.kernel' -> ('layers', 3, 'mlp', 'output', 'kernel')."""
    return tuple(int(part) if part.isdigit() else part for part in dotted.split("."))


def to_dotted(path: Path) -> str:
    return ".".join(str(part) for part in path)


@functools.lru_cache(maxsize=8)
def _abstract_encoder(config: EncoderConfig, dtype, seed: int):
    """(graphdef, flat abstract state) of an encoder, built without allocating; cached per config."""
    abstract = nnx.eval_shape(lambda: build_encoder(config, rngs=nnx.Rngs(seed), dtype=dtype))
    graphdef, state = nnx.split(abstract)
    return graphdef, nnx.to_flat_state(state)


def expected_shapes(config: EncoderConfig) -> dict[Path, tuple[int, ...]]:
    """Our parameter paths and shapes for `config`."""
    _, flat = _abstract_encoder(config, jnp.dtype(jnp.float32), 0)
    return {path: tuple(var.shape) for path, var in flat if isinstance(var, nnx.Param)}


def hf_to_params(
    tensors: Mapping[str, np.ndarray], config: EncoderConfig, *, layout: str = "torch", source: str = "checkpoint"
) -> LoadedParams:
    """Maps HF tensors onto our parameter paths, checking names and shapes.

    Args:
      tensors: checkpoint name -> array (values are read only for mapped names,
        so a lazy Mapping avoids reading task heads).
      config: the encoder the checkpoint must fill.
      layout: "torch" (model.safetensors names) or "flax" (flax_model.msgpack names).
      source: where the tensors came from, for error messages.

    Returns:
      LoadedParams with float32 arrays in our layout and the ignored names.

    Raises:
      AladError: a tensor is missing, unexpected, or has the wrong shape.
    """
    if layout not in LAYOUTS:
        raise AladError(f"unknown checkpoint layout {layout!r}; expected one of {LAYOUTS}")
    if layout == "flax" and any(rule.flax is None for rule in RULES[config.model_type]):
        raise AladError(
            f"{source}: a {config.model_type} checkpoint in the Flax layout is not supported "
            "(transformers never had Flax weights for it); use model.safetensors"
        )
    prefix = PREFIXES[config.model_type]
    has_prefix = any(name.startswith(prefix) for name in tensors)
    ignored, encoder_names = [], {}
    for name in tensors:
        if has_prefix and not name.startswith(prefix):
            ignored.append(name)  # a task head beside the prefixed encoder
            continue
        short = name[len(prefix):] if has_prefix else name
        if layout == "torch":
            for pattern, replacement in _LEGACY:
                short = pattern.sub(replacement, short)
        if _IGNORED[config.model_type].fullmatch(short):
            ignored.append(name)
        else:
            encoder_names[short] = name

    shapes = expected_shapes(config)
    rules = expand_rules(config)
    params, missing = {}, []
    for rule in rules:
        hf_name = rule.torch if layout == "torch" else rule.flax
        if hf_name not in encoder_names:
            missing.append((prefix if has_prefix else "") + hf_name)
            continue
        stored_name = encoder_names.pop(hf_name)
        array = np.asarray(tensors[stored_name])
        if layout == "torch" and rule.transpose:
            array = array.T
        path = to_path(rule.ours)
        if array.shape != shapes[path]:
            stored_shape = array.T.shape if layout == "torch" and rule.transpose else array.shape
            want = shapes[path][::-1] if layout == "torch" and rule.transpose else shapes[path]
            raise AladError(
                f"{source}: tensor {stored_name} has shape {tuple(stored_shape)}, expected {tuple(want)} "
                f"from config.json ({config.model_type}, hidden {config.hidden_size}); "
                "the weights do not match their config"
            )
        params[path] = np.ascontiguousarray(array, dtype=np.float32)
    if missing:
        raise AladError(
            f"{source}: missing tensor {_listing(missing)} for a {config.model_type} encoder with "
            f"{config.num_layers} layers ({layout} layout); the checkpoint is incomplete or does not match config.json"
        )
    if encoder_names:
        raise AladError(
            f"{source}: unexpected tensor {_listing(sorted(encoder_names.values()))} in a {config.model_type} "
            f"encoder with {config.num_layers} layers ({layout} layout); the checkpoint has another architecture "
            "or layer count than config.json says"
        )
    assert set(params) == set(shapes), "name table out of sync with modeling.py"
    return LoadedParams(params, sorted(ignored))


def params_to_hf(params: Mapping[Path, np.ndarray], config: EncoderConfig) -> dict[str, np.ndarray]:
    """Our parameters -> transformers' PyTorch-layout names (no prefix), float32, contiguous."""
    tensors = {}
    for rule in expand_rules(config):
        array = np.asarray(params[to_path(rule.ours)], dtype=np.float32)
        tensors[rule.torch] = np.ascontiguousarray(array.T if rule.transpose else array)
    return tensors


def encoder_params(module: nnx.Module) -> dict[Path, np.ndarray]:
    """The float32 parameters of an encoder as host arrays, keyed by path."""
    state = nnx.state(module, nnx.Param)
    return {path: np.asarray(jax.device_get(var.get_value())) for path, var in nnx.to_flat_state(state)}


def create_encoder(config: EncoderConfig, params: Mapping[Path, np.ndarray], *, dtype=jnp.float32, seed: int = 0):
    """An encoder whose parameters are `params`, built without a random initialisation pass.

    `seed` only seeds the abstract construction: every parameter comes from `params`.
    """
    graphdef, flat = _abstract_encoder(config, jnp.dtype(dtype), seed)
    if set(flat.paths) != set(params):
        raise AladError(
            f"parameters do not fit a {config.model_type} encoder: missing "
            f"{_listing([to_dotted(p) for p in set(flat.paths) - set(params)])}, extra "
            f"{_listing([to_dotted(p) for p in set(params) - set(flat.paths)])}"
        )
    filled = [(path, var.replace(jnp.asarray(params[path], jnp.float32))) for path, var in flat]
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")
