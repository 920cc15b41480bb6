"""Encoders and heads: equality with transformers (stored fixture + live torch), and module properties."""

import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alad_jax.errors import AladError
from alad_jax.models import (
    EncoderConfig,
    QAHead,
    TaggingHead,
    build_encoder,
    count_params,
    load_encoder,
    load_tokenizer,
    resolve_model_dir,
)
from alad_jax.models import params as params_lib

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "minilm_reference.npz"
TOLERANCE = 1e-4  # max abs difference to the float32 PyTorch reference

TINY_BERT = EncoderConfig("bert", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                          intermediate_size=48, max_position_embeddings=24)
TINY_DISTILBERT = EncoderConfig("distilbert", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                                intermediate_size=48, max_position_embeddings=24, type_vocab_size=0)


# Jitted forwards: one compilation per input shape beats op-by-op dispatch on a 2-core machine.
last_hidden = nnx.jit(lambda encoder, ids, mask, types=None: encoder(ids, mask, types).last_hidden_state)
all_hidden = nnx.jit(
    lambda encoder, ids, mask, types=None: encoder(ids, mask, types, output_hidden_states=True).hidden_states
)


# One padded batch shape for the tiny-model tests, so each jitted forward compiles once.
TINY_IDS = jnp.array([[2, 7, 9, 3, 0, 0, 0], [2, 5, 6, 8, 10, 12, 3]])
TINY_MASK = jnp.array([[1, 1, 1, 1, 0, 0, 0], [1] * 7])


def _random_params(config, seed=0):
    # numpy draws, LayerNorms included: cheaper than compiling initialisers, and nothing sits at 1/0.
    rng = np.random.default_rng(seed)
    return {path: rng.normal(0.0, 0.5, shape).astype(np.float32)
            for path, shape in params_lib.expected_shapes(config).items()}


@pytest.fixture(scope="module")
def tiny_bert():
    return params_lib.create_encoder(TINY_BERT, _random_params(TINY_BERT))


@pytest.fixture(scope="module")
def minilm():
    encoder, _ = load_encoder(MINILM)
    return encoder


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as data:  # plain arrays only; np.load refuses pickles by default
        return {key: data[key] for key in data.files}


def _batch(reference):
    return tuple(jnp.asarray(reference[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))


# --- equality with the reference implementation ------------------------------------------------


def test_matches_transformers_reference_fixture_on_minilm(minilm, reference):
    input_ids, attention_mask, token_type_ids = _batch(reference)
    ours = np.asarray(last_hidden(minilm, input_ids, attention_mask, token_type_ids))
    real_tokens = ours[reference["attention_mask"].astype(bool)]
    assert real_tokens.shape == reference["last_hidden_state"].shape == (73, 384)
    max_diff = np.abs(real_tokens - reference["last_hidden_state"]).max()
    assert max_diff < TOLERANCE, f"max abs diff {max_diff:.2e} to transformers BertModel"


def test_tokenizer_reproduces_reference_input_ids(reference):
    tokenizer = load_tokenizer(MINILM)
    batch = tokenizer(list(reference["sentences"]), padding=True, return_tensors="np")
    np.testing.assert_array_equal(batch["input_ids"], reference["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], reference["attention_mask"])
    # word ids: special tokens None, "Hello?" -> [CLS] hello ? [SEP]
    assert batch.word_ids(2)[:4] == [None, 0, 1, None]


@pytest.mark.torch
def test_live_minilm_all_hidden_states_match_transformers(minilm, reference):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.BertModel.from_pretrained(str(resolve_model_dir(MINILM))).eval()
    with torch.no_grad():
        theirs = model(
            **{k: torch.tensor(reference[k], dtype=torch.long) for k in ("input_ids", "attention_mask", "token_type_ids")},
            output_hidden_states=True,
        ).hidden_states
    ours = all_hidden(minilm, *_batch(reference))
    assert len(ours) == len(theirs) == 7
    mask = reference["attention_mask"].astype(bool)
    for layer, (a, b) in enumerate(zip(ours, theirs)):
        max_diff = np.abs(np.asarray(a)[mask] - b.numpy()[mask]).max()
        assert max_diff < TOLERANCE, f"hidden state {layer}: max abs diff {max_diff:.2e}"


def _random_torch_model(tmp_path, kind):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "distilbert":
        config = transformers.DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                               max_position_embeddings=24)
        model = transformers.DistilBertModel(config)
    else:
        config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=48, max_position_embeddings=24, type_vocab_size=3)
        model = transformers.BertModel(config)
    # Random init leaves LayerNorms at (1, 0); perturb every tensor so each mapping is exercised.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.eval().save_pretrained(tmp_path)
    return model


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_live_random_model_matches_transformers(tmp_path, kind):
    torch = pytest.importorskip("torch")
    model = _random_torch_model(tmp_path, kind)
    ids = np.array([[2, 5, 9, 11, 7, 3], [2, 8, 4, 3, 0, 0]], np.int64)
    mask = (np.arange(6) < np.array([[6], [4]])).astype(np.int64)
    types = np.array([[0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 0, 0]], np.int64)
    inputs = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    if kind == "bert":
        inputs["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        theirs = model(**inputs, output_hidden_states=True).hidden_states

    encoder, config = load_encoder(str(tmp_path))
    assert config.model_type == kind
    ours = all_hidden(encoder, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(np.asarray(a)[mask == 1], b.numpy()[mask == 1], atol=1e-5)


# --- module properties -------------------------------------------------------------------------


def test_output_ignores_padding_and_batch_company(tiny_bert):
    short = TINY_IDS[:1, :4]
    alone = last_hidden(tiny_bert, short, jnp.ones_like(short))[0]
    batched = last_hidden(tiny_bert, TINY_IDS, TINY_MASK)[0, :4]
    np.testing.assert_allclose(np.asarray(batched), np.asarray(alone), atol=1e-5)


def test_hidden_states_are_embeddings_then_each_layer(tiny_bert):
    hidden = all_hidden(tiny_bert, TINY_IDS, TINY_MASK)
    assert len(hidden) == TINY_BERT.num_layers + 1
    np.testing.assert_allclose(hidden[-1], last_hidden(tiny_bert, TINY_IDS, TINY_MASK), atol=1e-6)
    embedded = tiny_bert.embeddings(TINY_IDS, jnp.zeros_like(TINY_IDS), deterministic=True, rngs=None)
    np.testing.assert_allclose(hidden[0], embedded, atol=1e-6)


def test_dropout_is_a_pure_function_of_the_key_under_jit(tiny_bert):
    graphdef, state = nnx.split(tiny_bert)

    @jax.jit
    def train_forward(state, key):
        encoder = nnx.merge(graphdef, state)
        return encoder(TINY_IDS, TINY_MASK, deterministic=False, rngs=key).last_hidden_state

    train0, again0 = train_forward(state, jax.random.key(0)), train_forward(state, jax.random.key(0))
    train1 = train_forward(state, jax.random.key(1))
    np.testing.assert_array_equal(train0, again0)
    assert np.abs(np.asarray(train0 - train1)).max() > 1e-2
    eval_out = last_hidden(tiny_bert, TINY_IDS, TINY_MASK)
    assert np.abs(np.asarray(train0 - eval_out)).max() > 1e-2


def test_dropout_without_key_is_refused(tiny_bert):
    ids = jnp.array([[2, 7, 3]])
    with pytest.raises(AladError, match="PRNG key"):
        tiny_bert(ids, jnp.ones_like(ids), deterministic=False)


def test_bfloat16_compute_keeps_float32_params_and_stays_close(tiny_bert):
    encoder16 = params_lib.create_encoder(TINY_BERT, _random_params(TINY_BERT), dtype=jnp.bfloat16)
    params = jax.tree.leaves(nnx.state(encoder16, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    out16 = last_hidden(encoder16, TINY_IDS, TINY_MASK)[TINY_MASK == 1]
    out32 = last_hidden(tiny_bert, TINY_IDS, TINY_MASK)[TINY_MASK == 1]
    assert out16.dtype == jnp.bfloat16
    # LayerNormed outputs are O(1); bfloat16 keeps ~3 significant digits.
    assert np.abs(np.asarray(out16, np.float32) - np.asarray(out32)).max() < 0.1


def test_sequence_longer_than_positions_is_refused(tiny_bert):
    ids = jnp.ones((1, TINY_BERT.max_position_embeddings + 1), jnp.int32)
    with pytest.raises(AladError, match="max_position_embeddings"):
        tiny_bert(ids, jnp.ones_like(ids))


def test_param_paths_follow_documented_scheme():
    layer = {
        "attention.query.kernel", "attention.query.bias", "attention.key.kernel", "attention.key.bias",
        "attention.value.kernel", "attention.value.bias", "attention.output.kernel", "attention.output.bias",
        "attention_norm.scale", "attention_norm.bias", "mlp.intermediate.kernel", "mlp.intermediate.bias",
        "mlp.output.kernel", "mlp.output.bias", "mlp_norm.scale", "mlp_norm.bias",
    }
    embeddings = {"embeddings.word_embeddings.embedding", "embeddings.position_embeddings.embedding",
                  "embeddings.norm.scale", "embeddings.norm.bias"}
    expected_layers = {f"layers.{i}.{name}" for i in range(2) for name in layer}
    for config, extra in ((TINY_BERT, {"embeddings.token_type_embeddings.embedding"}), (TINY_DISTILBERT, set())):
        encoder = nnx.eval_shape(lambda: build_encoder(config, rngs=nnx.Rngs(0)))
        paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(encoder, nnx.Param))}
        assert paths == embeddings | extra | expected_layers
    assert encoder.layers[1].attention.query.kernel.shape == (32, 32)
    assert encoder.layers[0].mlp.intermediate.kernel.shape == (32, 48)


def test_build_encoder_initialises_like_transformers():
    config = EncoderConfig("bert", vocab_size=256, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=16,
                           max_position_embeddings=8)
    encoder = build_encoder(config, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    assert 0.015 < float(jnp.std(encoder.embeddings.word_embeddings.embedding[...])) < 0.025  # normal(0.02)
    layer = encoder.layers[0]
    np.testing.assert_array_equal(layer.mlp_norm.scale[...], np.ones(16, np.float32))
    np.testing.assert_array_equal(layer.attention.query.bias[...], np.zeros(16, np.float32))
    assert layer.attention.query.kernel[...].dtype == jnp.float32  # params stay float32 under bf16 compute


def test_count_params_matches_bert_formula(minilm):
    h, inter, layers = 384, 1536, 6
    embeddings = (30522 + 512 + 2) * h + 2 * h
    per_layer = 4 * (h * h + h) + (h * inter + inter) + (inter * h + h) + 2 * 2 * h
    assert count_params(minilm) == embeddings + layers * per_layer == 22_565_376  # transformers: + 147,840 pooler


# --- heads -------------------------------------------------------------------------------------


def test_tagging_head_is_a_linear_map_of_token_states():
    head = TaggingHead(24, 5, rngs=nnx.Rngs(1))
    hidden = jax.random.normal(jax.random.key(2), (2, 3, 24))
    logits = head(hidden)
    chex.assert_shape(logits, (2, 3, 5))
    expected = np.asarray(hidden) @ np.asarray(head.classifier.kernel[...]) + np.asarray(head.classifier.bias[...])
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)
    dropped = head(hidden, deterministic=False, rngs=jax.random.key(3))
    assert np.abs(np.asarray(dropped - logits)).max() > 1e-3


def test_qa_head_returns_start_and_end_columns():
    head = QAHead(16, rngs=nnx.Rngs(1))
    hidden = jax.random.normal(jax.random.key(2), (2, 7, 16))
    start, end = head(hidden)
    chex.assert_shape([start, end], (2, 7))
    logits = np.asarray(hidden) @ np.asarray(head.qa_outputs.kernel[...]) + np.asarray(head.qa_outputs.bias[...])
    np.testing.assert_allclose(np.asarray(start), logits[..., 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(end), logits[..., 1], rtol=1e-5, atol=1e-5)


def test_heads_refuse_wrong_width_and_missing_dropout_key():
    head = TaggingHead(8, 3, rngs=nnx.Rngs(0))
    with pytest.raises(AssertionError):
        head(jnp.zeros((1, 2, 9)))
    with pytest.raises(AladError, match="PRNG key"):
        head(jnp.zeros((1, 2, 8)), deterministic=False)


# --- config ------------------------------------------------------------------------------------


def test_config_reads_bert_and_distilbert_key_names():
    bert = EncoderConfig.from_hf({"model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 3,
                                  "num_attention_heads": 2, "intermediate_size": 16, "hidden_act": "gelu_new",
                                  "hidden_dropout_prob": 0.2})
    assert (bert.num_layers, bert.hidden_act, bert.hidden_dropout, bert.type_vocab_size) == (3, "gelu_new", 0.2, 2)
    distil = EncoderConfig.from_hf({"model_type": "distilbert", "vocab_size": 10, "dim": 8, "n_layers": 4,
                                    "n_heads": 2, "hidden_dim": 16, "activation": "relu", "dropout": 0.3,
                                    "attention_dropout": 0.0})
    assert (distil.hidden_size, distil.num_layers, distil.num_heads, distil.intermediate_size) == (8, 4, 2, 16)
    assert (distil.type_vocab_size, distil.hidden_act, distil.hidden_dropout, distil.attention_dropout) == (0, "relu", 0.3, 0.0)
    for config in (bert, distil, TINY_BERT, TINY_DISTILBERT):
        assert EncoderConfig.from_hf(config.to_hf()) == config


@pytest.mark.parametrize(
    "hf_config, message",
    [
        ({"model_type": "roberta"}, "unsupported model_type 'roberta'"),
        ({"model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2}, "missing key 'intermediate_size'"),
        ({"model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 3,
          "intermediate_size": 4}, "not divisible"),
        ({"model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
          "intermediate_size": 4, "position_embedding_type": "relative_key"}, "relative_key"),
    ],
)
def test_config_refuses_what_it_cannot_build(hf_config, message):
    with pytest.raises(AladError, match=message):
        EncoderConfig.from_hf(hf_config)


def test_config_to_hf_is_read_by_transformers():
    import transformers  # a required dependency; needs no torch for configs
    for config in (TINY_BERT, TINY_DISTILBERT):
        hf = transformers.AutoConfig.for_model(**config.to_hf())
        assert hf.num_hidden_layers == config.num_layers and hf.hidden_size == config.hidden_size
        assert hf.num_attention_heads == config.num_heads
