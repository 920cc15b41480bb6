"""Equality with checkpoints and outputs written by transformers itself, without torch.

tests/fixtures/hf_tiny holds a tiny random BERT and DistilBERT saved by
transformers' ``save_pretrained`` and every hidden state transformers computed
for one padded batch (BERT with segment ids 0 and 1); scripts/make_hf_fixtures.py
wrote them. Loading goes through our name table, so a swapped or misspelt
rule, or an input the encoder ignores, shows up as different numbers.
"""

import pathlib

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from alad_jax.models import load_encoder, save_encoder

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "hf_tiny"
TOLERANCE = 1e-5  # float32 against float32; observed differences are ~1e-6
KINDS = ["bert", "distilbert"]

all_hidden = nnx.jit(
    lambda encoder, ids, mask, types=None: encoder(ids, mask, types, output_hidden_states=True).hidden_states
)


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "reference.npz") as data:  # plain arrays; np.load refuses pickles by default
        return {key: data[key] for key in data.files}


def _inputs(reference, kind):
    return tuple(reference.get(f"{kind}/{key}") for key in ("input_ids", "attention_mask", "token_type_ids"))


@pytest.mark.parametrize("kind", KINDS)
def test_every_hidden_state_matches_transformers_on_a_padded_batch(reference, kind):
    encoder, config = load_encoder(str(FIXTURES / kind))
    assert config.model_type == kind
    ids, mask, types = _inputs(reference, kind)
    want = reference[f"{kind}/hidden_states"]
    got = np.stack([np.asarray(h) for h in all_hidden(encoder, ids, mask, types)])
    assert got.shape == want.shape == (config.num_layers + 1, *ids.shape, config.hidden_size)
    real = mask.astype(bool)
    assert 0 < real.sum() < real.size  # the batch is padded
    for layer in range(len(want)):
        diff = np.abs(got[layer][real] - want[layer][real]).max()
        assert diff < TOLERANCE, f"{kind} hidden state {layer}: max abs diff {diff:.2e} to transformers"


def test_bert_reference_batch_uses_second_segment_and_depends_on_it(reference):
    """The BERT fixture can only catch ignored segment ids if they change its numbers."""
    ids, mask, types = _inputs(reference, "bert")
    assert set(np.unique(types[mask == 1])) == {0, 1}
    encoder, _ = load_encoder(str(FIXTURES / "bert"))
    segment_zero = np.asarray(all_hidden(encoder, ids, mask, np.zeros_like(types))[0])
    second = (types == 1) & (mask == 1)
    per_token = np.abs(segment_zero[second] - reference["bert/hidden_states"][0][second]).max(axis=-1)
    assert per_token.min() > 0.1  # every second-segment token moves by far more than TOLERANCE


@pytest.mark.parametrize("kind", KINDS)
def test_saved_checkpoint_has_transformers_names_and_values(tmp_path, kind):
    """What save_encoder writes is the file transformers wrote, tensor for tensor (the BERT pooler aside)."""
    theirs = load_file(str(FIXTURES / kind / "model.safetensors"))
    encoder, config = load_encoder(str(FIXTURES / kind))
    ours = load_file(str(save_encoder(encoder, tmp_path / kind) / "model.safetensors"))
    assert set(theirs) - set(ours) == ({"pooler.dense.weight", "pooler.dense.bias"} if kind == "bert" else set())
    assert set(ours) <= set(theirs)
    for name, value in ours.items():
        assert value.shape == theirs[name].shape, name
        np.testing.assert_array_equal(value, theirs[name], err_msg=name)
    _, reloaded = load_encoder(str(tmp_path / kind))
    assert reloaded == config
