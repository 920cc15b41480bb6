"""alad_jax.xla_cpu: the CPU's bfloat16 matrix instructions, which library runs a train step's dots, and
the compilation cache never serving an executable built under other XLA flags (issue 28)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from alad_jax import xla_cpu
from alad_jax.models.config import EncoderConfig
from alad_jax.models.heads import TaggingHead
from alad_jax.models.modeling import build_encoder
from alad_jax.models.task_model import TaskModel
from alad_jax.sharding import MeshConfig, make_mesh
from alad_train import models
from alad_train.state import train_state_of

XEON = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n"
OLD = "processor\t: 0\nmodel name\t: Old Xeon\nflags\t\t: fpu avx2 fma\nprocessor\t: 1\nflags\t\t: amx_bf16\n"
HERE = xla_cpu.bf16_matrix_engine(xla_cpu.cpu_flags(xla_cpu.read_cpuinfo()))


def test_engine_is_amx_then_avx512_bf16_from_the_first_processor():
    assert xla_cpu.bf16_matrix_engine(xla_cpu.cpu_flags(XEON)) == "amx_bf16"
    assert xla_cpu.bf16_matrix_engine(xla_cpu.cpu_flags(EPYC)) == "avx512_bf16"
    assert xla_cpu.bf16_matrix_engine(xla_cpu.cpu_flags(OLD)) is None  # the first processor's flags
    assert xla_cpu.cpu_model(EPYC) == "AMD EPYC"
    assert xla_cpu.read_cpuinfo("/nonexistent/cpuinfo") == ""
    assert xla_cpu.bf16_matrix_engine(xla_cpu.cpu_flags("")) is None


def test_note_only_where_bfloat16_is_asked_for_and_an_x86_cpu_lacks_it():
    line = xla_cpu.note(None, "bfloat16", machine="x86_64")
    assert line.startswith("note: ") and "avx512_bf16" in line and "matmul_dtype=float32" in line
    assert "\n" not in line
    assert xla_cpu.note(None, "float32", machine="x86_64") is None
    assert xla_cpu.note("avx512_bf16", "bfloat16", machine="x86_64") is None
    assert xla_cpu.note(None, "bfloat16", machine="aarch64") is None  # no cpuinfo flag to tell by
    assert xla_cpu.note("avx512_bf16", "bfloat16", "ynn bf16xbf16->f32", machine="x86_64") is None
    widened = xla_cpu.note("avx512_bf16", "bfloat16", "xla f32xf32->f32", machine="x86_64")
    assert widened.startswith("note: ") and "widened to float32" in widened and "avx512_bf16" in widened


def test_dot_libraries_names_the_library_and_dtypes_of_every_dot():
    a = jax.ShapeDtypeStruct((256, 256), np.float32)
    hlo = jax.jit(lambda a, b: (a @ b) @ b).lower(a, a).compile().as_text()
    found = xla_cpu.dot_libraries(hlo)
    assert sum(found.values()) == 2
    assert all(key.split(" ")[1] == "f32xf32->f32" for key in found)


def _tiny_tagger():
    config = EncoderConfig(model_type="bert", vocab_size=300, hidden_size=128, num_layers=1, num_heads=2,
                           intermediate_size=256, max_position_embeddings=64)
    return TaskModel(build_encoder(config, rngs=nnx.Rngs(0)), TaggingHead(128, 5, 0.1, rngs=nnx.Rngs(1)))


def _batches(rows=8, length=64):
    rng = np.random.default_rng(0)
    dense = {"input_ids": rng.integers(5, 300, (rows, length)).astype(np.int32),
             "attention_mask": np.ones((rows, length), np.int32),
             "labels": rng.integers(0, 5, (rows, length)).astype(np.int32)}
    segments = np.repeat(np.arange(1, 5, dtype=np.int32), length // 4)[None].repeat(rows, 0)
    packed = {**dense, "segment_ids": segments, "position_ids": np.tile(np.arange(length // 4, dtype=np.int32), 4)[None]
              .repeat(rows, 0), "token_type_ids": np.zeros((rows, length), np.int32)}
    return dense, packed


def _step_dots(matmul_dtype: str, batch: dict) -> dict[str, int]:
    state = train_state_of(_tiny_tagger(), nnx.Param, models.tagging_loss, optax.adamw(1e-4),
                           make_mesh(MeshConfig()), matmul_dtype=matmul_dtype)
    return xla_cpu.dot_libraries(state.lower(batch, jax.random.key(0)).compile().as_text())


@pytest.mark.skipif(HERE is None, reason="this CPU reports no avx512_bf16/amx_bf16: XLA widens bfloat16 dots")
def test_packed_and_dense_bf16_steps_run_their_linear_dots_on_the_cpus_bfloat16_path():
    # The regression issue 28 looked for: the run's packed steps must reach the same matmul path as the bench's
    # dense ones. Each nnx.Linear (4 attention projections, 2 feed-forward, the head: 7) gives a forward dot and
    # the two backward ones, every one bfloat16 x bfloat16 -> float32 inside a library fusion.
    dense, packed = _batches()
    by_batch = {name: _step_dots("bfloat16", batch) for name, batch in (("dense", dense), ("packed", packed))}
    assert by_batch["dense"] == by_batch["packed"]
    bf16 = {key: n for key, n in by_batch["packed"].items() if key.endswith("bf16xbf16->f32")}
    assert sum(bf16.values()) == 3 * 7
    assert all(not key.startswith("xla ") for key in bf16), bf16  # a library's bfloat16 kernels, not XLA's loops
    float32 = _step_dots("float32", packed)
    assert not any("bf16" in key for key in float32)


@pytest.mark.skipif(HERE is None, reason="this CPU reports no avx512_bf16/amx_bf16")
def test_describe_records_the_cpu_and_the_path_of_a_bfloat16_dot():
    info = xla_cpu.describe("bfloat16")
    assert info["bf16_matrix_instructions"] == HERE and info["note"] is None
    assert info["bf16_dot"].endswith("bf16xbf16->f32") and not info["bf16_dot"].startswith("xla ")
    assert info["xla_flags"] == os.environ.get("XLA_FLAGS", "") and info["jax"] == jax.__version__
    json.dumps(info)


@pytest.mark.skipif(HERE is None, reason="this CPU reports no avx512_bf16/amx_bf16")
def test_xla_flags_that_widen_bfloat16_dots_are_caught_by_the_probe():
    # With YNNPACK's dot fusions off, XLA widens a bfloat16 x bfloat16 -> float32 dot to float32: the run says so.
    script = ("import json; from alad_jax import xla_cpu; "
              "print(json.dumps([xla_cpu.bf16_dot_path(), xla_cpu.startup_note('bfloat16')]))")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    path, line = json.loads(out.stdout.strip().splitlines()[-1])
    assert path == "xla f32xf32->f32"
    assert "widened to float32" in line and "ynn_fusion_type" in line


_CACHED_JIT = textwrap.dedent("""
    import jax, jax.numpy as jnp
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    print(float(jax.jit(lambda a: jnp.tanh(a @ a).sum())(jnp.ones((64, 64)))))
""")


def test_the_compilation_cache_keys_on_xla_flags(tmp_path):
    # --xla_cpu_use_onednn=true alone compiles the same executable here; it must still miss the cache, so an
    # executable compiled under one set of flags is never served to a run under another.
    cache = tmp_path / "xla"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}

    def run(flags: str) -> set[str]:
        env = {**base, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache), "XLA_FLAGS": flags}
        out = subprocess.run([sys.executable, "-c", _CACHED_JIT], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return {p.name for p in cache.iterdir() if p.name.startswith("jit__lambda-") and p.name.endswith("-cache")}

    first = run("")
    assert len(first) == 1
    assert run("") == first  # same flags: served from the cache
    flagged = run("--xla_cpu_use_onednn=true")
    assert len(flagged) == 2 and first < flagged
    assert run("--xla_cpu_use_onednn=true --xla_dump_to=" + str(tmp_path / "dump")) == flagged  # dumping is not a key
