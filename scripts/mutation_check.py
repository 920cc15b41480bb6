"""Breaks the method on purpose, in a copy of the repository, and reports which breakages the tests catch.

    python scripts/mutation_check.py [--only NAME ...] [--no-baseline] [--list]

Each mutation is one or more exact text replacements in a copy of the tracked
files (``git ls-files``); a target text that is not found (once, exactly)
stops the script, so it cannot rot into testing nothing after the code moves.
Only the tests named beside a mutation run against it (``pytest -x``), which
keeps the whole check to minutes. A mutation is *caught* when those tests
fail (pytest exit status 1); a collection or usage error (status 2+) counts as
an error, not a catch. First the same tests must pass on the unmutated copy
(the baseline), or no result means anything.

Exit status 0 when every mutation is caught, 1 otherwise. Run it with the
project's environment (the one the tests use), from anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    edits: tuple[tuple[str, str, str], ...]  # (file, exact old text, new text)
    tests: tuple[str, ...]


PIPELINE_LEARNS = "tests/test_pipeline.py::test_adapter_and_probe_learn_the_task"
PIPELINE_KILLED = ("tests/test_pipeline.py::"
                   "test_run_killed_in_cache_alignment_and_fine_tuning_resumes_each_where_it_stopped")
QA_LEARNS = "tests/test_pipeline_qa.py::test_qa_probe_and_adapter_learn_to_answer"

MUTATIONS = (
    Mutation(
        "tagging-loss-sign-flipped", "training climbs the tagging loss instead of descending it",
        (("train/models.py", "    return (ce * valid).sum() / count, {",
          "    return -(ce * valid).sum() / count, {"),),
        (PIPELINE_LEARNS,),
    ),
    Mutation(
        "fit-restarts-stage-on-resume", "fit deletes a stage's checkpoints and starts it over",
        (("train/loop.py",
          '    restored = checkpoints.restore({"trainable": state.trainable, "opt_state": state.opt_state, "best": best})\n',
          "    checkpoints.close()\n"
          "    __import__('shutil').rmtree(checkpoint_dir, ignore_errors=True)\n"
          "    checkpoints = Checkpoints(checkpoint_dir)\n"
          "    restored = None\n"),),
        ("tests/test_loop_resume.py",),
    ),
    Mutation(
        "resume-drops-optimizer-state", "a resumed stage keeps its parameters but starts a fresh optimizer",
        (("train/loop.py", '        state.trainable, state.opt_state, best = parts["trainable"], parts["opt_state"], parts["best"]\n',
          '        state.trainable, best = parts["trainable"], parts["best"]\n'),),
        ("tests/test_loop_resume.py",),
    ),
    Mutation(
        "bert-ignores-token-type-ids", "BERT embeddings add the segment-0 vector to every token",
        (("alad_jax/models/modeling.py", "            x = x + self.token_type_embeddings(token_type_ids)\n",
          "            x = x + self.token_type_embeddings(jnp.zeros_like(token_type_ids))\n"),),
        ("tests/test_transformers_fixtures.py",),
    ),
    Mutation(
        "distilbert-q-k-names-swapped", "the DistilBERT name table reads q_lin into key and k_lin into query",
        (("alad_jax/models/params.py",
          'Rule("transformer.layer.{i}.attention.q_lin.weight",     "transformer.layer.{i}.attention.q_lin.kernel",'
          '     "layers.{i}.attention.query.kernel", True),\n'
          '    Rule("transformer.layer.{i}.attention.q_lin.bias",       "transformer.layer.{i}.attention.q_lin.bias",'
          '       "layers.{i}.attention.query.bias", False),\n'
          '    Rule("transformer.layer.{i}.attention.k_lin.weight",     "transformer.layer.{i}.attention.k_lin.kernel",'
          '     "layers.{i}.attention.key.kernel", True),\n'
          '    Rule("transformer.layer.{i}.attention.k_lin.bias",       "transformer.layer.{i}.attention.k_lin.bias",'
          '       "layers.{i}.attention.key.bias", False),\n',
          'Rule("transformer.layer.{i}.attention.k_lin.weight",     "transformer.layer.{i}.attention.k_lin.kernel",'
          '     "layers.{i}.attention.query.kernel", True),\n'
          '    Rule("transformer.layer.{i}.attention.k_lin.bias",       "transformer.layer.{i}.attention.k_lin.bias",'
          '       "layers.{i}.attention.query.bias", False),\n'
          '    Rule("transformer.layer.{i}.attention.q_lin.weight",     "transformer.layer.{i}.attention.q_lin.kernel",'
          '     "layers.{i}.attention.key.kernel", True),\n'
          '    Rule("transformer.layer.{i}.attention.q_lin.bias",       "transformer.layer.{i}.attention.q_lin.bias",'
          '       "layers.{i}.attention.key.bias", False),\n'),),
        ("tests/test_transformers_fixtures.py",),
    ),
    Mutation(
        "qa-null-threshold-inf-as-none", "the old bug: -inf saved as null, and null read back as +inf",
        (("train/tasks.py", '        scores["null_threshold"] = qa.threshold_to_json(threshold)',
          '        scores["null_threshold"] = threshold if math.isfinite(threshold) else None'),
         ("alad_jax/inference/predictor.py",
          '        threshold = qa.threshold_from_json(meta.get("null_threshold"), f"{Path(path) / MODEL_JSON}: meta")\n',
          '        threshold = meta.get("null_threshold")\n'
          '        threshold = float("inf") if threshold is None else float(threshold)\n')),
        ("tests/test_qa_null_threshold.py",),
    ),
    Mutation(
        "cache-ignores-token-types", "the feature cache encodes QA rows as one segment (all token types 0)",
        (("alad_jax/cache.py", '                    arrays["types"][r, span] = token_types[i]\n',
          "                    pass\n"),),
        ("tests/test_cache.py::test_cached_states_see_each_rows_segment_ids",),
    ),
    Mutation(
        "cache-marked-done-before-written", "the feature cache is written in place, its done marker first",
        (("alad_jax/cache.py",
          '    tmp = path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")\n'
          '    shutil.rmtree(tmp, ignore_errors=True)\n    tmp.mkdir(parents=True)\n',
          '    tmp = path\n    tmp.mkdir(parents=True, exist_ok=True)\n    (tmp / "done.json").write_text("{}")\n'),),
        (PIPELINE_KILLED,),
    ),
    Mutation(
        "qa-loss-sign-flipped", "training climbs the QA span loss",
        (("train/models.py", "    return (per_row * real).sum() / jnp.maximum(real.sum(), 1.0), {}",
          "    return -(per_row * real).sum() / jnp.maximum(real.sum(), 1.0), {}"),),
        (QA_LEARNS,),
    ),
    Mutation(
        "bf16-step-loses-weight-gradients", "the bfloat16 matmul's backward returns no weight gradient",
        (("alad_jax/models/precision.py", "    return dx, dkernel\n", "    return dx, jnp.zeros_like(dkernel)\n"),),
        ("tests/test_precision.py", PIPELINE_LEARNS),
    ),
    Mutation(
        "bf16-graph-leaks-into-evaluation", "the step's bfloat16 graph is set on the model the loop evaluates and saves",
        (("train/state.py", "        self.step_graphdef = graphdef if step_graphdef is None else step_graphdef\n",
          "        self.step_graphdef = graphdef if step_graphdef is None else step_graphdef\n"
          "        self.graphdef = self.step_graphdef\n"),),
        ("tests/test_precision.py",),
    ),
    Mutation(
        "packed-attention-crosses-sentences", "packed rows attend across their sentences (no block-diagonal mask)",
        (("alad_jax/models/modeling.py",
          "            attended = attended & (segment_ids[:, :, None] == segment_ids[:, None, :])\n",
          "            pass\n"),),
        ("tests/test_packing.py",),
    ),
    Mutation(
        "packing-leaves-no-gap", "packed sentences sit back to back: AlAd windows reach into the next sentence",
        (("alad_jax/data/batching.py", "                at += n + gap\n", "                at += n\n"),),
        ("tests/test_packing.py",),
    ),
    Mutation(
        "packed-positions-run-on", "the task model drops packed position ids: a row's later sentences start mid-row",
        (("alad_jax/models/task_model.py",
          'segment_ids=batch.get("segment_ids"), position_ids=batch.get("position_ids"),',
          'segment_ids=batch.get("segment_ids"),'),),
        ("tests/test_packing.py",),
    ),
    Mutation(
        "stage-2-starts-fresh", "continual alignment builds a new AlAd instead of importing stage 1's",
        (("train/stages/alignment.py", '    if stage == "align":\n', '    if stage in ("align", "continual"):\n'),),
        ("tests/test_stage_chain.py",),
    ),
    Mutation(
        "plateau-count-not-reset", "an improving evaluation leaves the plateau counter where it was",
        (("train/loop.py",
          '            meta["best_score"], meta["best_epoch"], meta["evals_since_best"] = float(score), epoch + 1, 0\n',
          '            meta["best_score"], meta["best_epoch"] = float(score), epoch + 1\n'),),
        ("tests/test_loop_rules.py",),
    ),
    Mutation(
        "warmup-truncated-to-zero", "the warmup length is int(fraction) * steps: no warmup for any fraction < 1",
        (("train/loop.py", "    warmup = int(stage.warmup_fraction * total_steps)\n",
          "    warmup = int(stage.warmup_fraction) * total_steps\n"),),
        ("tests/test_loop_rules.py",),
    ),
    Mutation(
        "latency-times-dispatch-only", "latency stops the clock when the call returns, not when its result is ready",
        (("train/measure.py", "            jax.block_until_ready(predict(*split[name], batches[name]))\n",
          "            predict(*split[name], batches[name])\n"),),
        ("tests/test_measure.py",),
    ),
    Mutation(
        "packed-batch-rounded-to-layout", "packed batches hold a multiple of the process count of real rows "
        "(the issue-29 bug): one and two processes take different steps",
        (("alad_jax/data/batching.py", "    return max(round(batch_size * packed / max(len(lengths), 1)), 1)\n",
          "    rows, count = max(round(batch_size * packed / max(len(lengths), 1)), 1), __import__('jax').process_count()\n"
          "    return -(-rows // count) * count\n"),),
        ("tests/test_multihost_batches.py",),
    ),
)


def _copy_repo(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    # The editable install maps alad_train to this checkout's train/: on PYTHONPATH the copy's own must win.
    (dest / "alad_train").symlink_to("train", target_is_directory=True)


def _apply(copy: Path, mutation: Mutation) -> None:
    for file, old, new in mutation.edits:
        path = copy / file
        text = path.read_text(encoding="utf-8")
        found = text.count(old)
        if found != 1:
            sys.exit(f"mutation {mutation.name}: the target text occurs {found} times in {file} (expected once); "
                     f"update the mutation to the current code:\n{old}")
        path.write_text(text.replace(old, new), encoding="utf-8")


def _cpu_seconds() -> float:
    """User + system time of every finished child process (pytest and what it ran)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pytest(copy: Path, tests: tuple[str, ...]) -> tuple[int, float, float, str]:
    """(pytest exit status, wall seconds, CPU seconds, last output line) of ``tests`` in ``copy``."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    started, cpu = time.perf_counter(), _cpu_seconds()
    out = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=copy,
                         env=env, capture_output=True, text=True)
    last = (out.stdout + out.stderr).strip().splitlines()[-1:] or [""]
    return out.returncode, time.perf_counter() - started, _cpu_seconds() - cpu, last[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the same tests")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests, then exit")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
    if unknown:
        sys.exit(f"unknown mutation {', '.join(sorted(unknown))}; known: {', '.join(m.name for m in MUTATIONS)}")
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.what}\n    tests: {' '.join(m.tests)}")
        return 0

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="alad-mutants-") as tmp:
        base = Path(tmp) / "base"
        _copy_repo(base)
        for m in chosen:  # every target must exist before anything runs
            probe = Path(tmp) / "dry-run"
            shutil.copytree(base, probe, symlinks=True)
            _apply(probe, m)
            shutil.rmtree(probe)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            # Same-file tests side by side: pytest would otherwise set a module's fixtures up twice.
            tests = tuple(sorted(tests, key=lambda t: [u.split("::")[0] for u in tests].index(t.split("::")[0])))
            code, seconds, cpu, last = _pytest(base, tests)
            print(f"baseline (unmutated): exit {code} in {seconds:.0f} s ({cpu:.0f} s CPU): {last}", flush=True)
            if code != 0:
                print("the tests fail without any mutation; fix that first")
                return 1
        rows = []
        for m in chosen:
            copy = Path(tmp) / m.name
            # symlinks=True: the copy's alad_train must stay a link to its own (mutated) train/, not
            # become a real, unmutated copy of base's.
            shutil.copytree(base, copy, symlinks=True)
            _apply(copy, m)
            code, seconds, cpu, last = _pytest(copy, m.tests)
            result = "caught" if code == 1 else ("MISSED" if code == 0 else f"ERROR (pytest exit {code})")
            rows.append((m.name, result, seconds, cpu))
            print(f"{m.name:36s} {result:24s} {seconds:6.0f} s  {cpu:6.0f} s CPU  {last}", flush=True)
            shutil.rmtree(copy)
    width = max(len(name) for name, *_ in rows)
    print(f"\n{'mutation':{width}s}  result   wall s   CPU s")
    for name, result, seconds, cpu in rows:
        print(f"{name:{width}s}  {result:7s}  {seconds:6.0f}  {cpu:6.0f}")
    missed = [name for name, result, *_ in rows if result != "caught"]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} caught in {time.perf_counter() - started:.0f} s "
          f"({_cpu_seconds():.0f} s CPU)" + (f"; not caught: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
