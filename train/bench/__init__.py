"""``alad bench``: speed of inference and of the alignment stages, as one JSON document.

Every figure is measured in this process, on this machine, in this run:

- ``matmul_peak_gflops``: the best ``jnp.dot`` rate over a few square sizes in
  the train steps' matmul dtype (``matmul_dtype``: float32, or bfloat16 operands
  with float32 accumulation), measured before the benchmarks and again right
  after the adapter step (other processes' load moves it; the higher one is the
  peak); every MFU divides by it. ``matmul_peak_gflops_by_dtype`` has both;
- ``latency_ms``: p50/p95 of the jitted tagging forward (what ``alad predict``
  runs) at batch 1 and 32, seq 128, for the student (+ linear head), student
  + AlAd(K = 1, 3, 5) + head, and the teacher (+ head); the models run
  interleaved, run by run, so load from other processes hits all alike;
- ``align_tokens_per_s``: the pipeline's alignment train step over one epoch
  of the embedded default's stage-2 rows (the task text, token-budget
  batches): ``uncached`` runs teacher + student + AlAd step, ``cached`` the
  AlAd step on hidden states gathered from :class:`~alad_jax.cache.HiddenCache`;
- ``stage2_10epoch_speedup``: ``10 * uncached_epoch / (cache_build + 10 *
  cached_epoch)``, extrapolated from one timed epoch of each;
- ``adapter_step_mfu``: exact matmul FLOPs of the cached AlAd train step on a
  full 32 x 128 batch / its median time / the matmul peak;
- ``peak_rss_mb``: the process's peak resident memory;
- ``onnxruntime_latency_ms``: the student + AlAd(K=3) + head tagger exported to
  ONNX (``alad export``'s converter) and run by onnxruntime on CPU, next to the
  same model's jitted forward, interleaved run by run (b1, b32, seq 128, p50/p95);
  absent, with a note, when the onnx extra is not installed.
- ``finetune_tokens_per_s`` / ``finetune_mfu``: full train steps (forward
  with dropout, cross-entropy, backward, clip, AdamW) of the teacher,
  ``student_ft`` and ``joint`` cases on dense ``finetune_batch`` (32 x 64)
  batches, through the runs' own train state (:mod:`alad_train.bench.steps`).

Compilation is excluded from every timing (steps are compiled ahead of time
per batch shape). ``--vs-torch`` also times the authors' PyTorch recipe
(transformers ``BertModel`` teacher and student, ``nn.Linear`` adapter,
AdamW, no cache) on the same batches and reports ours / theirs, and runs
every train step above (fine-tune, uncached alignment and cached AlAd on dense
batches) side by side with its PyTorch twin, alternating rep by rep:
``ratios_vs_torch`` holds all five ratios (ours / theirs tokens/s), and
``gemm_gflops_vs_torch`` both frameworks' ``GEMM_N``-cubed matmul rates in
float32 and bfloat16 on this CPU. ``xla_cpu`` records the CPU's bfloat16 matrix
instructions and which XLA:CPU library ran a bfloat16 dot (:mod:`alad_jax.xla_cpu`).

The package, by job: :mod:`~alad_train.bench.run` (the command and the document),
:mod:`~alad_train.bench.effort` (shapes and repetitions), :mod:`~alad_train.timing` and
:mod:`~alad_train.bench.flops` (shared by every measurement), :mod:`~alad_train.bench.gemm` (matmul peaks),
:mod:`~alad_train.bench.trainer` (the runs' train step, compiled ahead), :mod:`~alad_train.bench.latency`,
:mod:`~alad_train.bench.alignment`, :mod:`~alad_train.bench.steps` (the sections), and
:mod:`~alad_train.bench.pytorch` (the PyTorch twins, torch imported only there).
"""
