"""Sharding: rules, mesh, batch feeding, and sharded steps / checkpoints on 8 simulated CPU devices.

The multi-device checks run in a subprocess (tests/helpers/*.py) because
``--xla_force_host_platform_device_count`` must be set before jax starts; the
rest run here on the default single CPU device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from alad_jax import distributed, sharding
from alad_jax.adapter import AlignmentAdapter
from alad_jax.errors import AladError
from alad_jax.models.config import EncoderConfig
from alad_jax.models.heads import QAHead, TaggingHead
from alad_jax.models.modeling import build_encoder

REPO = Path(__file__).resolve().parents[1]
HELPERS = REPO / "tests" / "helpers"
MESHES = ("8,1", "4,2", "2,4")
TIMEOUT_S = 240


def run_helper(script: str, *args: str) -> dict:
    """Runs a helper in a fresh interpreter (its own XLA_FLAGS); returns the JSON it prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "ALAD_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HELPERS)])
    proc = subprocess.run(
        [sys.executable, str(HELPERS / script), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- rules and mesh (no devices needed) ------------------------------------------------------


def test_mesh_shape_infers_one_axis_and_names_the_counts_when_wrong():
    assert sharding.mesh_shape(sharding.MeshConfig(), 8) == (8, 1)
    assert sharding.mesh_shape(sharding.MeshConfig(data=-1, fsdp=2), 8) == (4, 2)
    assert sharding.mesh_shape(sharding.MeshConfig(data=2, fsdp=-1), 8) == (2, 4)
    with pytest.raises(AladError, match=r"data=2 x fsdp=2 = 4 devices but 8 are present"):
        sharding.mesh_shape(sharding.MeshConfig(data=2, fsdp=2), 8)
    with pytest.raises(AladError, match=r"8 is not divisible by 3"):
        sharding.mesh_shape(sharding.MeshConfig(data=-1, fsdp=3), 8)
    with pytest.raises(AladError, match="both -1"):
        sharding.mesh_shape(sharding.MeshConfig(data=-1, fsdp=-1), 8)


def _abstract_params(model_fn):
    return nnx.state(nnx.eval_shape(model_fn), nnx.Param)


def _specs(state, axis_sizes) -> dict[str, P]:
    return {
        sharding.path_str(path): sharding.spec_for(sharding.path_str(path), leaf.shape, axis_sizes)
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
    }


def test_rules_shard_every_bert_base_kernel_and_table_and_replicate_norms_and_biases():
    config = EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=768, num_layers=2,
                           num_heads=12, intermediate_size=3072)
    specs = _specs(_abstract_params(lambda: build_encoder(config, rngs=nnx.Rngs(0))), {"data": 2, "fsdp": 8})
    assert specs["embeddings/word_embeddings/embedding"] == P(None, "fsdp")  # 30522 rows: split hidden
    assert specs["embeddings/position_embeddings/embedding"] == P(None, "fsdp")
    assert specs["layers/1/attention/query/kernel"] == P("fsdp")
    assert specs["layers/0/mlp/intermediate/kernel"] == P("fsdp")
    assert specs["layers/0/mlp/output/kernel"] == P("fsdp")
    assert specs["embeddings/norm/scale"] == P()
    assert specs["layers/0/attention/query/bias"] == P()
    # Every parameter is either split along fsdp (kernels, tables) or a 1-D norm/bias.
    for path, spec in specs.items():
        assert (spec != P()) == path.endswith(("kernel", "embedding")), path


def test_rules_shard_adapter_and_head_kernels():
    adapter = _specs(_abstract_params(lambda: AlignmentAdapter(256, 768, window=3, rngs=nnx.Rngs(0))),
                     {"data": 1, "fsdp": 8})
    assert adapter == {"fc1/bias": P(), "fc1/kernel": P("fsdp"), "fc2/bias": P(), "fc2/kernel": P("fsdp")}
    tagging = _specs(_abstract_params(lambda: TaggingHead(768, 17, rngs=nnx.Rngs(0))), {"data": 1, "fsdp": 8})
    assert tagging == {"classifier/bias": P(), "classifier/kernel": P("fsdp")}
    qa = _specs(_abstract_params(lambda: QAHead(768, rngs=nnx.Rngs(0))), {"data": 1, "fsdp": 8})
    assert qa == {"qa_outputs/bias": P(), "qa_outputs/kernel": P("fsdp")}


def test_dims_the_mesh_does_not_divide_fall_back_to_replication():
    sizes = {"data": 2, "fsdp": 4}
    assert sharding.fit_spec(P("fsdp", None), (30522, 768), sizes) == P()
    assert sharding.fit_spec(P(None, "fsdp"), (30522, 768), sizes) == P(None, "fsdp")
    assert sharding.fit_spec(P(None, "fsdp"), (512, 30), sizes) == P()
    assert sharding.fit_spec(P(("data", "fsdp")), (16, 3), sizes) == P(("data", "fsdp"))
    assert sharding.fit_spec(P(("data", "fsdp")), (12, 3), sizes) == P()
    assert sharding.fit_spec(P("fsdp", None), (8,), sizes) == P("fsdp")  # spec longer than the rank


def test_optimizer_moments_get_their_parameters_sharding_and_counts_are_replicated():
    params = _abstract_params(lambda: AlignmentAdapter(8, 12, window=3, hidden_dim=16, rngs=nnx.Rngs(0)))
    opt_state = jax.eval_shape(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)).init, params)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1])
    params_sh = sharding.state_shardings(params, mesh)
    opt_sh = sharding.opt_state_shardings(opt_state, params_sh, mesh)
    specs = {
        sharding.path_str(p): s.spec
        for p, s in jax.tree_util.tree_leaves_with_path(
            opt_sh, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding)
        )
    }
    assert specs == {
        "1/0/count": P(),
        "1/0/mu/fc1/bias": P(), "1/0/mu/fc1/kernel": P("fsdp"),
        "1/0/mu/fc2/bias": P(), "1/0/mu/fc2/kernel": P("fsdp"),
        "1/0/nu/fc1/bias": P(), "1/0/nu/fc1/kernel": P("fsdp"),
        "1/0/nu/fc2/bias": P(), "1/0/nu/fc2/kernel": P("fsdp"),
    }


# --- single process helpers ------------------------------------------------------------------


def test_shard_batch_on_one_device_keeps_values_and_rejects_scalars():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1])
    batch = {"input_ids": np.arange(12, dtype=np.int32).reshape(3, 4)}
    out = sharding.shard_batch(batch, mesh)
    np.testing.assert_array_equal(np.asarray(out["input_ids"]), batch["input_ids"])
    assert out["input_ids"].sharding.spec == P(("data", "fsdp"))
    with pytest.raises(AladError, match="batch field 'step'"):
        sharding.shard_batch({"step": np.int32(3)}, mesh)


def test_process_rows_is_the_whole_batch_for_one_process_and_checks_divisibility():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1])
    assert sharding.process_rows(32, mesh) == slice(0, 32)


def test_initialize_distributed_is_a_no_op_alone_and_rejects_half_set_environments(monkeypatch):
    for name in ("ALAD_COORDINATOR", "ALAD_NUM_PROCESSES", "ALAD_PROCESS_ID", "ALAD_DISTRIBUTED"):
        monkeypatch.delenv(name, raising=False)
    distributed.initialize_distributed()
    assert jax.process_count() == 1 and distributed.is_primary()
    monkeypatch.setenv("ALAD_COORDINATOR", "localhost:1234")
    with pytest.raises(AladError, match="ALAD_NUM_PROCESSES"):
        distributed.initialize_distributed()
    monkeypatch.setenv("ALAD_NUM_PROCESSES", "2")
    monkeypatch.setenv("ALAD_PROCESS_ID", "2")
    with pytest.raises(AladError, match=r"ALAD_PROCESS_ID=2 is outside 0..1"):
        distributed.initialize_distributed()
    monkeypatch.setenv("ALAD_PROCESS_ID", "x")
    with pytest.raises(AladError, match="not an integer"):
        distributed.initialize_distributed()


def test_throughput_metrics_divide_tokens_by_seconds_and_devices():
    metrics = distributed.throughput_metrics(num_tokens=3000, seconds=1.5)
    assert metrics["tokens_per_s"] == pytest.approx(2000.0)
    assert metrics["tokens_per_s_per_device"] == pytest.approx(2000.0 / jax.device_count())


def test_device_memory_stats_is_none_where_the_backend_reports_nothing():
    if jax.default_backend() != "cpu":
        pytest.skip("CPU-only expectation")
    assert distributed.device_memory_stats() is None


# --- 8 simulated devices -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded_run() -> dict:
    return run_helper("sharded_step.py", "--meshes", *MESHES, "--steps", "2")


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_step_matches_single_device_step(sharded_run, mesh):
    got = sharded_run["meshes"][mesh]
    np.testing.assert_allclose(got["losses"], sharded_run["reference_losses"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["grad_norms"], sharded_run["reference_grad_norms"], rtol=1e-5, atol=0)
    # Adam divides by sqrt(v), which magnifies rounding differences in near-zero
    # gradients; parameter differences therefore scale with lr (1e-3 here; seen <= 6e-7).
    assert got["max_param_diff"] < 1e-5
    assert got["max_opt_state_diff"] < 1e-6


def test_bf16_sharded_step_matches_the_single_device_bf16_step(sharded_run):
    """bfloat16 step matmuls (the default recipe) under data x fsdp meshes equal them on one device."""
    got = run_helper("sharded_step.py", "--meshes", "4,2", "2,4", "--steps", "2", "--matmul-dtype", "bfloat16")
    # It is the bfloat16 step: its losses are not the float32 ones.
    assert got["reference_losses"][1] != sharded_run["reference_losses"][1]
    for mesh in ("4,2", "2,4"):
        run = got["meshes"][mesh]
        assert run["specs"]["encoder/layers/0/mlp/output/kernel"] == "('fsdp',)"
        np.testing.assert_allclose(run["losses"], got["reference_losses"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(run["grad_norms"], got["reference_grad_norms"], rtol=1e-5, atol=0)
        # A float32 reduction-order difference can flip a bfloat16 rounding; Adam magnifies it (seen 2.7e-5).
        assert run["max_param_diff"] < 1e-4
        assert run["max_opt_state_diff"] < 1e-6


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_step_really_splits_parameters_along_fsdp(sharded_run, mesh):
    got = sharded_run["meshes"][mesh]
    fsdp = got["mesh_shape"]["fsdp"]
    kernel = "encoder/layers/0/mlp/output/kernel"  # [64, 32]
    table = "encoder/embeddings/word_embeddings/embedding"  # [50, 32], frozen
    assert got["full_shapes"][kernel] == [64, 32]
    assert got["shard_shapes"][kernel] == [64 // fsdp, 32]
    assert got["shard_shapes"][table] == [50, 32 // fsdp]
    assert got["shard_shapes"]["adapter/fc1/kernel"] == [96 // fsdp, 64]
    assert got["shard_shapes"]["head/classifier/kernel"] == [48 // fsdp, 5]
    assert got["shard_shapes"]["encoder/layers/0/mlp_norm/scale"] == [32]
    kernels = [k for k in got["specs"] if k.endswith(("kernel", "embedding"))]
    assert kernels and all(got["specs"][k] in ("('fsdp',)", "(None, 'fsdp')") for k in kernels)
    # Adam moments live where their parameter lives.
    for moment in ("mu", "nu"):
        assert got["opt_specs"][f"1/0/{moment}/{kernel}"] == got["specs"][kernel]
    assert got["opt_specs"]["1/0/count"] == "()"
    assert got["batch_error"].startswith("batch field 'input_ids' has shape (12, 8)")


def test_checkpoint_from_one_mesh_restores_onto_another_and_onto_one_device(tmp_path):
    report = run_helper("checkpoint_roundtrip.py", str(tmp_path))
    kernel = "params/encoder/layers/0/mlp/output/kernel"  # [64, 32]
    assert report["saved_layout"][kernel] == "{'data': 4, 'fsdp': 2} ('fsdp',) (32, 32)"
    for target, expected in (("mesh 2,4", "{'data': 2, 'fsdp': 4} ('fsdp',) (16, 32)"),
                             ("single device", "{'data': 1, 'fsdp': 1} ('fsdp',) (64, 32)")):
        got = report[target]
        assert got["same_keys"]
        assert got["max_abs_diff"] == 0.0
        assert got["restored_layout"][kernel] == expected
        assert got["restored_layout"] == got["asked_layout"]
    assert any(k.startswith("opt_state/1/0/mu/") for k in report["saved_layout"])
