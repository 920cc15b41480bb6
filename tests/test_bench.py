"""``alad bench --quick`` on tiny models: the JSON keys, and figures consistent with what was timed."""

import importlib.util
import io
import json
import sys
from contextlib import redirect_stdout

import pytest
from flax import nnx

from alad_train import cli
from alad_jax.models import EncoderConfig, build_encoder, hub
from alad_train.bench import effort, flops

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _save_tiny(path, hidden: int, layers: int, seed: int, tokenizer):
    config = EncoderConfig(model_type="bert", vocab_size=30522, hidden_size=hidden, num_layers=layers, num_heads=2,
                           intermediate_size=2 * hidden, max_position_embeddings=128)
    return hub.save_encoder(build_encoder(config, rngs=nnx.Rngs(seed)), path, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root, tokenizer = tmp_path_factory.mktemp("models"), hub.load_tokenizer(MINILM)
    return _save_tiny(root / "teacher", 32, 2, 0, tokenizer), _save_tiny(root / "student", 16, 2, 1, tokenizer)


@pytest.fixture(scope="module")
def report(tiny_dirs):
    """One quick run (48 sentences of stage-2 text; the PyTorch recipe too where torch is installed)."""
    teacher, student = tiny_dirs
    argv = ["bench", "--quick", f"teacher={teacher}", f"student={student}", "student_layers=1", "adapter_hidden=48"]
    captured = _run_cli(argv + (["--vs-torch"] if HAS_TORCH else []))
    return json.loads(captured)


def _run_cli(argv) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(argv) == 0
    return out.getvalue()


def test_report_has_every_required_key(report):
    assert report["matmul_peak_gflops"] > 0
    assert report["xla_cpu"]["matmul_dtype"] == report["matmul_dtype"] and report["xla_cpu"]["bf16_dot"]
    assert set(report["latency_ms"]) == {"student", "alad_w1", "alad_w3", "alad_w5", "teacher"}
    for entry in report["latency_ms"].values():
        for batch in ("b1", "b32"):
            assert 0 < entry[batch]["p50"] <= entry[batch]["p95"]
    assert report["align_tokens_per_s"]["uncached"] > 0 and report["align_tokens_per_s"]["cached"] > 0
    assert report["stage2_10epoch_speedup"] > 0 and 0 < report["adapter_step_mfu"]
    assert report["peak_rss_mb"] > 100  # jax alone takes more
    assert report["student"].endswith("(first 1 layers)") and report["seq_len"] == 128


def test_onnxruntime_latency_sits_next_to_the_jitted_one(report):
    onnx = report["onnxruntime_latency_ms"]
    if "note" in onnx:
        assert importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("jax2onnx") is None
        pytest.skip(onnx["note"])
    for name in ("alad_w3_onnxruntime", "alad_w3_jit"):
        for batch in ("b1", "b32"):
            assert 0 < onnx[name][batch]["p50"] <= onnx[name][batch]["p95"]
    assert onnx["export_s"] > 0


def test_derived_figures_follow_from_the_timings(report):
    s2 = report["stage2"]
    assert s2["window"] == 3 and s2["rows"] >= 48 and 0 < s2["tokens"] <= s2["padded_tokens"]
    rel = pytest.approx
    assert report["align_tokens_per_s"]["uncached"] == rel(s2["tokens"] / s2["uncached_epoch_s"], rel=1e-3)
    assert report["align_tokens_per_s"]["cached"] == rel(s2["tokens"] / s2["cached_epoch_s"], rel=1e-3)
    speedup = 10 * s2["uncached_epoch_s"] / (s2["cache_build_s"] + 10 * s2["cached_epoch_s"])
    assert report["stage2_10epoch_speedup"] == rel(speedup, rel=1e-3)
    step = report["adapter_step"]
    # 32 x 128 tokens, K=3, Ds=16, hidden 48, Dt=32: forward 2(3*16*48 + 48*32), backward 2*3*16*48 + 4*48*32.
    assert step["gflop"] == rel(32 * 128 * (4 * 3 * 16 * 48 + 6 * 48 * 32) / 1e9, rel=1e-4)
    assert report["adapter_step_mfu"] == rel(step["gflop"] / (step["ms"] / 1e3) / report["matmul_peak_gflops"],
                                             rel=1e-3)
    ratio = report["latency_ms"]["alad_w3"]["b32"]["p50"] / report["latency_ms"]["student"]["b32"]["p50"]
    assert report["latency_overhead_vs_student"]["alad_w3"]["b32"] == rel(ratio, rel=1e-3)
    assert report["targets"]["reached"]["alad_w3_b32_latency_overhead<=1.3"] == (ratio <= 1.3)
    assert "aspirations" in report["targets"]["meaning"]


def test_finetune_section_reports_every_case(report):
    """Teacher, student_ft and joint full train steps on dense 32 x 64 batches: tokens/s and MFU."""
    assert report["finetune_batch"] == [32, 64]
    cases = {"teacher", "student_ft", "joint"}
    assert set(report["finetune_tokens_per_s"]) == cases and set(report["finetune_mfu"]) == cases
    for case in cases:
        tokens_per_s, mfu = report["finetune_tokens_per_s"][case], report["finetune_mfu"][case]
        assert tokens_per_s > 0 and 0 < mfu < 1
        spread = report["finetune"]["tokens_per_s_spread"][case]
        assert spread["min"] <= tokens_per_s <= spread["max"]
        flops_per_s = tokens_per_s / (32 * 64) * report["finetune"]["gflop_per_step"][case]
        assert mfu == pytest.approx(flops_per_s / report["finetune"]["matmul_peak_gflops"], rel=1e-3)
    # Every MFU divides by the peak of the dtype the steps multiply in.
    dtype = report["matmul_dtype"]
    assert report["finetune"]["matmul_dtype"] == dtype
    assert report["matmul_peak_gflops"] == report["matmul_peak_gflops_by_dtype"][dtype]
    if dtype == "bfloat16":  # our float32 steps ran beside the bfloat16 ones
        for case in cases:
            ratio = report["finetune_tokens_per_s"][case] / report["finetune"]["tokens_per_s_float32"][case]
            assert report["ratios_bf16_vs_float32"][case] == pytest.approx(ratio, rel=1e-3)
    # The teacher (2 layers, width 32) costs more per token than the student (1 layer, width 16).
    gflop = report["finetune"]["gflop_per_step"]
    assert gflop["teacher"] > gflop["student_ft"] and gflop["joint"] > gflop["student_ft"]


def test_finetune_flops_are_three_forwards():
    assert flops.finetune_flops_per_token(1000.0, 8, 5) == 3 * (1000 + 2 * 8 * 5)
    assert flops.finetune_flops_per_token(1000.0, 8, 5, 300.0) == 3 * (1300 + 2 * 8 * 5)


def test_cached_and_uncached_epochs_agree_in_loss(report):
    """Same init, batches and order: the cache changes only bf16 rounding of the inputs."""
    assert report["stage2"]["loss_max_rel_diff_cached_vs_uncached"] < 3e-3


def test_flop_counts_match_the_model_sizes():
    config = EncoderConfig(model_type="bert", vocab_size=10, hidden_size=384, num_layers=2, num_heads=12,
                           intermediate_size=1536)
    # MiniLM-sized layer at seq 128: 4 projections 384x384, MLP 384x1536 twice, attention 2 x 128 x 384.
    assert flops.encoder_flops_per_token(config, 128) == 2 * (2 * (4 * 384**2 + 2 * 384 * 1536) + 4 * 128 * 384)
    assert flops.adapter_flops_per_token(3, 384, 1280, 384, train=False) == 2 * (3 * 384 * 1280 + 1280 * 384)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_vs_torch_reports_ratios_on_the_same_batches(report):
    vs = report["vs_torch"]
    assert vs["batches"] == 2
    tokens = vs["align_tokens_per_s_uncached"]
    assert tokens["ratio"] == pytest.approx(tokens["alad_jax"] / tokens["torch"], rel=1e-3)
    assert tokens["alad_jax"] == pytest.approx(report["align_tokens_per_s"]["uncached"], rel=1e-3)
    for batch in ("b1", "b32"):
        entry = vs["latency_ms_alad_w3_p50"][batch]
        assert entry["torch"] > 0 and entry["ratio"] == pytest.approx(entry["alad_jax"] / entry["torch"], rel=1e-3)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_vs_torch_puts_every_step_ratio_in_one_place(report):
    ratios = report["ratios_vs_torch"]
    assert set(ratios) == {"align_uncached", "adapter_cached", "teacher", "student_ft", "joint"}
    side = report["steps_vs_torch"]["tokens_per_s"]
    for name, ratio in ratios.items():
        assert side[name]["torch"] > 0
        assert ratio == pytest.approx(side[name]["alad_jax"] / side[name]["torch"], rel=1e-3)
        per_rep = report["steps_vs_torch"]["ratio_per_rep"][name]
        assert 0 < per_rep["min"] <= per_rep["median"] <= per_rep["max"]
    for case in ("teacher", "student_ft", "joint"):  # the same steps the fine-tune section reports
        assert side[case]["alad_jax"] == pytest.approx(report["finetune_tokens_per_s"][case], rel=1e-3)
    # PyTorch's autocast twins ran in the same interleaved reps: the ratio against them beside the float32 one.
    autocast = report["ratios_vs_torch_bf16_autocast"]
    assert set(autocast) == set(ratios)
    for name, ratio in autocast.items():
        assert ratio == pytest.approx(side[name]["alad_jax"] / side[name]["torch_bf16_autocast"], rel=1e-3)
    # Both frameworks' GEMM rates on this CPU, per dtype, from the same interleaved reps (issue 28).
    gemm = report["gemm_gflops_vs_torch"]
    assert gemm["n"] == effort.GEMM_N
    for side_name in ("alad_jax", "torch"):
        assert set(gemm[side_name]) == {"float32", "bfloat16"} and all(v > 1 for v in gemm[side_name].values())


def test_vs_torch_without_torch_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed
    assert cli.main(["bench", "--quick", "--vs-torch"]) == 2
    err = capsys.readouterr().err
    assert "bash scripts/setup.sh torch" in err and err.count("\n") == 1


def test_unknown_override_key_is_rejected(capsys):
    assert cli.main(["bench", "--quick", "teachr=x"]) == 2
    assert "did you mean 'teacher'" in capsys.readouterr().err
