"""Checkpoint formats, name mapping errors, saving, Hub resolution and the truncate recipe."""

import json
import pathlib
import pickle

import huggingface_hub
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx, serialization
from safetensors.numpy import save_file

from alad_jax.errors import AladError
from alad_jax.models import (
    EncoderConfig,
    hub,
    load_encoder,
    load_tokenizer,
    resolve_model_dir,
    save_encoder,
    truncate,
)
from alad_jax.models import params as params_lib
from alad_jax.models.compress import MARKER

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "minilm_reference.npz"

TINY = {
    "bert": EncoderConfig("bert", vocab_size=40, hidden_size=16, num_layers=2, num_heads=2,
                          intermediate_size=24, max_position_embeddings=12, type_vocab_size=3),
    "distilbert": EncoderConfig("distilbert", vocab_size=40, hidden_size=16, num_layers=2, num_heads=2,
                                intermediate_size=24, max_position_embeddings=12, type_vocab_size=0),
}

last_hidden = nnx.jit(lambda encoder, ids, mask, types=None: encoder(ids, mask, types).last_hidden_state)
all_hidden = nnx.jit(
    lambda encoder, ids, mask, types=None: encoder(ids, mask, types, output_hidden_states=True).hidden_states
)


def random_params(config, seed=0):
    """Random values for every parameter (LayerNorms too, so a swapped scale/bias shows)."""
    rng = np.random.default_rng(seed)
    return {path: rng.normal(0.0, 0.5, shape).astype(np.float32)
            for path, shape in params_lib.expected_shapes(config).items()}


def write_checkpoint(directory, config, tensors, *, metadata=None):
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config.to_hf()))
    save_file(tensors, str(directory / "model.safetensors"), metadata=metadata or {"format": "pt"})
    return directory


def assert_params_equal(encoder, expected):
    loaded = params_lib.encoder_params(encoder)
    assert set(loaded) == set(expected)
    for path, value in expected.items():
        assert loaded[path].dtype == np.float32
        np.testing.assert_array_equal(loaded[path], value, err_msg=str(path))


def old_flax_layout(torch_tensors):
    """transformers' PyTorch -> Flax rule, written independently of params.py's table:
    LayerNorm weight -> scale, *embeddings weight -> embedding, Linear weight -> kernel (transposed)."""
    tree = {}
    for name, array in torch_tensors.items():
        *parents, leaf = name.split(".")
        if leaf == "weight":
            if parents[-1] in ("LayerNorm", "sa_layer_norm", "output_layer_norm"):
                leaf = "scale"
            elif parents[-1].endswith("embeddings"):
                leaf = "embedding"
            else:
                leaf, array = "kernel", array.T
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = np.ascontiguousarray(array)
    return tree


def flatten(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# --- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_safetensors_loads_exact_params(tmp_path, kind):
    config = TINY[kind]
    params = random_params(config)
    write_checkpoint(tmp_path, config, params_lib.params_to_hf(params, config))
    encoder, loaded_config = load_encoder(str(tmp_path))
    assert loaded_config == config
    assert type(encoder).__name__ == {"bert": "BertEncoder", "distilbert": "DistilBertEncoder"}[kind]
    assert_params_equal(encoder, params)


def test_sharded_safetensors_index_loads_exact_params(tmp_path):
    config = TINY["bert"]
    params = random_params(config, seed=1)
    tensors = params_lib.params_to_hf(params, config)
    split = huggingface_hub.split_state_dict_into_shards_factory(
        tensors, get_storage_size=lambda array: array.nbytes,
        filename_pattern="model{suffix}.safetensors", max_shard_size=8_000,
    )
    assert split.is_sharded and len(split.filename_to_tensors) >= 2
    for filename, names in split.filename_to_tensors.items():
        save_file({name: tensors[name] for name in names}, str(tmp_path / filename), metadata={"format": "pt"})
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf()))
    encoder, _ = load_encoder(str(tmp_path))
    assert_params_equal(encoder, params)


def test_sharded_index_with_missing_shard_names_the_shard(tmp_path):
    config = TINY["bert"]
    tensors = params_lib.params_to_hf(random_params(config), config)
    save_file(tensors, str(tmp_path / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    weight_map = {name: "model-00001-of-00002.safetensors" for name in tensors}
    weight_map["embeddings.LayerNorm.bias"] = "model-00002-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf()))
    with pytest.raises(AladError, match="model-00002-of-00002.safetensors"):
        load_encoder(str(tmp_path))


@pytest.mark.parametrize("kind, prefix", [("bert", None), ("distilbert", None), ("bert", "bert")])
def test_flax_msgpack_old_transformers_layout_loads_exact_params(tmp_path, kind, prefix):
    config = TINY[kind]
    params = random_params(config, seed=2)
    tree = old_flax_layout(params_lib.params_to_hf(params, config))
    assert tree["embeddings"]["word_embeddings"]["embedding"].shape == (40, 16)  # the old naming, by hand
    if prefix:  # e.g. FlaxBertForTokenClassification: encoder under "bert", head and pooler beside it
        tree["pooler"] = {"dense": {"kernel": np.ones((16, 16), np.float32), "bias": np.zeros(16, np.float32)}}
        tree = {prefix: tree, "classifier": {"kernel": np.ones((16, 5), np.float32), "bias": np.zeros(5, np.float32)}}
    (tmp_path / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf()))
    encoder, _ = load_encoder(str(tmp_path))
    assert_params_equal(encoder, params)


def test_flax_named_safetensors_loads_exact_params(tmp_path):
    config = TINY["bert"]
    params = random_params(config, seed=3)
    flat = dict(flatten(old_flax_layout(params_lib.params_to_hf(params, config))))
    write_checkpoint(tmp_path, config, flat, metadata={"format": "flax"})
    encoder, _ = load_encoder(str(tmp_path))
    assert_params_equal(encoder, params)


def test_bfloat16_checkpoint_is_upcast_to_float32_params(tmp_path):
    config = TINY["bert"]
    params = random_params(config, seed=4)
    tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in params_lib.params_to_hf(params, config).items()}
    write_checkpoint(tmp_path, config, tensors)
    encoder, _ = load_encoder(str(tmp_path))
    rounded = {p: v.astype(ml_dtypes.bfloat16).astype(np.float32) for p, v in params.items()}
    assert_params_equal(encoder, rounded)


def test_pickled_bin_is_refused_without_unpickling(tmp_path, monkeypatch):
    marker = tmp_path / "unpickled"

    class RunsCodeWhenUnpickled:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": RunsCodeWhenUnpickled()}))
    (tmp_path / "config.json").write_text(json.dumps(TINY["bert"].to_hf()))

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    with pytest.raises(AladError) as error:
        load_encoder(str(tmp_path))
    message = str(error.value)
    assert "pytorch_model.bin" in message and "never" in message
    assert "AutoModel.from_pretrained" in message and "save_pretrained" in message and str(tmp_path) in message
    assert not marker.exists()


def test_directory_without_weights_lists_what_it_found(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY["bert"].to_hf()))
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(AladError, match=r"no model.safetensors.*found: config.json, vocab.txt"):
        load_encoder(str(tmp_path))


def test_invalid_config_json_names_file_and_line(tmp_path):
    (tmp_path / "config.json").write_text('{\n  "model_type": "bert",\n  oops\n}')
    with pytest.raises(AladError, match=r"config.json:3: invalid JSON"):
        load_encoder(str(tmp_path))


# --- name mapping errors and explicit ignores --------------------------------------------------


def test_missing_tensor_names_itself(tmp_path):
    config = TINY["bert"]
    tensors = params_lib.params_to_hf(random_params(config), config)
    del tensors["encoder.layer.1.attention.self.key.weight"]
    write_checkpoint(tmp_path, config, tensors)
    with pytest.raises(AladError, match=r"missing tensor encoder\.layer\.1\.attention\.self\.key\.weight"):
        load_encoder(str(tmp_path))


def test_unexpected_tensor_names_itself(tmp_path):
    config = TINY["distilbert"]
    tensors = params_lib.params_to_hf(random_params(config), config)
    tensors["transformer.layer.2.ffn.lin1.bias"] = np.zeros(24, np.float32)  # a third layer config.json lacks
    write_checkpoint(tmp_path, config, tensors)
    with pytest.raises(AladError, match=r"unexpected tensor transformer\.layer\.2\.ffn\.lin1\.bias"):
        load_encoder(str(tmp_path))


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
    config = TINY["bert"]
    tensors = params_lib.params_to_hf(random_params(config), config)
    tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((16, 24), np.float32)  # torch wants [out, in]
    write_checkpoint(tmp_path, config, tensors)
    with pytest.raises(AladError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight has shape \(16, 24\), expected \(24, 16\)"):
        load_encoder(str(tmp_path))


def test_task_checkpoint_with_prefix_pooler_and_legacy_names_loads_encoder():
    config = TINY["bert"]
    params = random_params(config, seed=5)
    tensors = {f"bert.{name}": value for name, value in params_lib.params_to_hf(params, config).items()}
    tensors["bert.embeddings.LayerNorm.gamma"] = tensors.pop("bert.embeddings.LayerNorm.weight")
    tensors["bert.embeddings.LayerNorm.beta"] = tensors.pop("bert.embeddings.LayerNorm.bias")
    extras = {
        "bert.pooler.dense.weight": np.zeros((16, 16), np.float32),
        "bert.pooler.dense.bias": np.zeros(16, np.float32),
        "bert.embeddings.position_ids": np.arange(12)[None],
        "classifier.weight": np.zeros((5, 16), np.float32),
        "classifier.bias": np.zeros(5, np.float32),
    }
    loaded = params_lib.hf_to_params({**tensors, **extras}, config)
    assert loaded.ignored == sorted(extras)
    for path, value in params.items():
        np.testing.assert_array_equal(loaded.params[path], value)


# --- saving ------------------------------------------------------------------------------------


def test_save_encoder_round_trips_params_and_tokenizer(tmp_path):
    config = TINY["bert"]
    params = random_params(config, seed=6)
    encoder = params_lib.create_encoder(config, params)
    tokenizer = load_tokenizer(MINILM)
    out = save_encoder(encoder, tmp_path / "saved", tokenizer=tokenizer)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    reloaded, reloaded_config = load_encoder(str(out))
    assert reloaded_config == config
    assert_params_equal(reloaded, params)
    sentence = "Não é fácil, é?"
    assert load_tokenizer(str(out))(sentence)["input_ids"] == tokenizer(sentence)["input_ids"]


def test_save_encoder_refuses_directory_with_other_weights(tmp_path):
    (tmp_path / "flax_model.msgpack").write_bytes(b"")
    encoder = params_lib.create_encoder(TINY["bert"], random_params(TINY["bert"]))
    with pytest.raises(AladError, match="flax_model.msgpack"):
        save_encoder(encoder, tmp_path)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_live_saved_encoder_loads_in_transformers_with_equal_outputs(tmp_path, kind):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = TINY[kind]
    encoder = params_lib.create_encoder(config, random_params(config, seed=7))
    save_encoder(encoder, tmp_path)
    model = transformers.AutoModel.from_pretrained(str(tmp_path)).eval()
    assert type(model).__name__ == {"bert": "BertModel", "distilbert": "DistilBertModel"}[kind]
    ids = np.array([[2, 5, 9, 11, 7, 3], [2, 8, 4, 3, 0, 0]])
    mask = (ids > 0).astype(np.int64)
    types = np.array([[0, 0, 1, 1, 2, 2], [0, 1, 2, 0, 0, 0]])
    inputs = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    if kind == "bert":
        inputs["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        theirs = model(**inputs).last_hidden_state.numpy()
    ours = np.asarray(last_hidden(encoder, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)))
    np.testing.assert_allclose(ours[mask == 1], theirs[mask == 1], atol=1e-5)


# --- resolution --------------------------------------------------------------------------------


def test_resolve_prefers_local_dir_then_packaged_snapshot(tmp_path):
    assert resolve_model_dir(str(tmp_path)) == tmp_path
    packaged = resolve_model_dir(MINILM)
    assert (packaged / "config.json").is_file() and (packaged / "model.safetensors").is_file()
    assert packaged.name == "model" and packaged.parent.name == hub.PACKAGED_MODELS[MINILM]


def test_unknown_hub_id_offline_says_what_was_tried_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setitem(hub.PACKAGED_MODELS, "acme/tiny-bert", "acme_tiny_bert_not_installed")
    with pytest.raises(AladError) as error:
        resolve_model_dir("acme/tiny-bert", cache_dir=str(tmp_path))
    message = str(error.value)
    assert "acme/tiny-bert" in message and "no such local directory" in message
    assert "pip install acme-tiny-bert-not-installed" in message and "HF_HUB_OFFLINE" in message


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(AladError, match="does not exist"):
        resolve_model_dir(str(tmp_path / "nope"))


# --- truncate ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def truncated_minilm(tmp_path_factory):
    return truncate(MINILM, 2, tmp_path_factory.mktemp("student") / "minilm_l2")


@pytest.fixture(scope="module")
def reference_batch():
    with np.load(FIXTURE) as data:
        return tuple(jnp.asarray(data[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))


def test_truncate_keeps_embeddings_and_first_layers(truncated_minilm, reference_batch):
    student, config = load_encoder(str(truncated_minilm))
    assert config.num_layers == 2 and config.hidden_size == 384
    teacher, _ = load_encoder(MINILM)
    mask = np.asarray(reference_batch[1]).astype(bool)
    expected = np.asarray(all_hidden(teacher, *reference_batch)[2])[mask]
    np.testing.assert_allclose(np.asarray(last_hidden(student, *reference_batch))[mask], expected, atol=1e-5)
    assert {"vocab.txt", "tokenizer.json", MARKER} <= {p.name for p in truncated_minilm.iterdir()}
    assert load_tokenizer(str(truncated_minilm)).is_fast


@pytest.mark.torch
def test_live_truncated_checkpoint_loads_in_transformers(truncated_minilm, reference_batch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.BertModel.from_pretrained(str(truncated_minilm)).eval()
    assert model.config.num_hidden_layers == 2
    with torch.no_grad():
        theirs = model(*(torch.tensor(np.asarray(x), dtype=torch.long) for x in reference_batch)).last_hidden_state
    student, _ = load_encoder(str(truncated_minilm))
    mask = np.asarray(reference_batch[1]).astype(bool)
    ours = np.asarray(last_hidden(student, *reference_batch))
    assert np.abs(ours[mask] - theirs.numpy()[mask]).max() < 1e-4


def test_truncate_refuses_bad_layer_counts_and_foreign_output(tmp_path):
    source = write_checkpoint(
        tmp_path / "src", TINY["bert"], params_lib.params_to_hf(random_params(TINY["bert"]), TINY["bert"])
    )
    with pytest.raises(AladError, match="at least 1"):
        truncate(str(source), 0, tmp_path / "a")
    with pytest.raises(AladError, match="exceeds the 2 layers"):
        truncate(str(source), 3, tmp_path / "b")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(AladError, match="not a previous truncate output"):
        truncate(str(source), 1, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_truncate_may_overwrite_its_own_previous_output(tmp_path):
    config = TINY["distilbert"]
    params = random_params(config, seed=8)
    source = write_checkpoint(tmp_path / "src", config, params_lib.params_to_hf(params, config))
    out = tmp_path / "student"
    truncate(str(source), 2, out)
    truncate(str(source), 1, out)
    student, student_config = load_encoder(str(out))
    assert student_config.num_layers == 1 and student_config.model_type == "distilbert"
    assert_params_equal(student, {p: v for p, v in params.items() if p[0] != "layers" or p[1] < 1})
    assert json.loads((out / MARKER).read_text())["num_layers"] == 1
