"""The ``alad`` command.

    alad run [--config FILE] [--workdir DIR] [--restart] [--check] [KEY=VALUE ...]
    alad align [--config FILE] [--workdir DIR] [KEY=VALUE ...]
    alad compress truncate --source DIR_OR_ID --layers N --out DIR
    alad predict --model DIR_OR_EXPORT (--text "..." | --words W1 W2 ... | --file FILE|-)
                 [--out PATH] [--output-format conll|conllu|jsonl]
    alad --version
    alad export --model DIR_OR_WORKDIR [--case frozen] [--window K] --format onnx|jax --out PATH
    alad bench [KEY=VALUE ...]

User errors print one line (``error: what, where, how to fix``) and exit 2.
"""

from __future__ import annotations

import os

# Before jax and transformers are imported below: quiet TensorFlow's C++ logging, and transformers'
# advice to install torch (we only use its tokenizers and configs).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

from alad_jax import distributed, xla_cpu  # noqa: E402
from alad_jax.errors import AladError  # noqa: E402
from alad_jax.models import compress  # noqa: E402
from alad_train import align, cases, export, predict, seeds  # noqa: E402
from alad_train.bench import run as bench_run  # noqa: E402
from alad_train.config import load_config  # noqa: E402
from alad_train.preflight import check_run  # noqa: E402

CONFIG_REFERENCE = "docs/config.md (in the repository; generated from train/config.py)"


# Over 60 lines: one declaration per subcommand and option, in the order `alad --help` lists them.
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alad", description="Alignment Adapter (AlAd) in JAX/Flax.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline (stages 0-3, baselines, ablation) into a work directory",
                         epilog=f"Every config key, its default and meaning: {CONFIG_REFERENCE}")
    run.add_argument("--config", help="TOML config file (see configs/); default: the embedded POS experiment")
    run.add_argument("--workdir", help="output directory (default: runs/<config name>); re-running resumes")
    run.add_argument("--restart", action="store_true",
                     help="delete the work directory's run outputs (not its feature cache) and start over")
    run.add_argument("--check", action="store_true",
                     help="resolve the config, check every input and model, print the plan of stages and rows "
                          "(and what the work directory already holds); train nothing")
    run.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: one whole run per seed in WORKDIR/seed_<s>, "
                                     "reported with means, stds and intervals across seeds (same as seeds=[0,1,2])")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any config field by dotted path")

    align = sub.add_parser("align", help="stage 1 alone (task-independent alignment on the streamed corpus, to "
                                         "the configured teacher as it is): adapters/wK_align.safetensors for "
                                         "`alad run stages.align.from=WORKDIR`")
    align.add_argument("--config", help="TOML config file (see configs/align_wikipedia.toml)")
    align.add_argument("--workdir", help="output directory (default: runs/<config name>-align); re-running resumes")
    align.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any config field by dotted path")

    compress = sub.add_parser("compress", help="make a compressed student checkpoint")
    recipes = compress.add_subparsers(dest="recipe", required=True)
    truncate = recipes.add_parser("truncate", help="keep the first N layers (layer dropping)")
    truncate.add_argument("--source", required=True, help="Hub id or local directory of the model to compress")
    truncate.add_argument("--layers", required=True, type=int, help="number of layers to keep")
    truncate.add_argument("--out", required=True, help="output directory (HF layout)")
    truncate.add_argument("--cache-dir", help="Hugging Face cache directory")

    predict = sub.add_parser("predict", help="label text with a saved aligned model or a finished work directory")
    predict.add_argument("--model", required=True,
                         help="saved aligned model directory, an export of alad export (the .onnx file or its "
                              "directory, a jax export directory), or a work directory")
    predict.add_argument("--case", default=cases.DEFAULT.name,
                         help=f"which trained case of a work directory: {', '.join(c.name for c in cases.WINDOWED)} "
                              f"(default {cases.DEFAULT.name})")
    predict.add_argument("--window", type=int, help="which window K of a work directory (default: the only one)")
    predict.add_argument("--text", action="append", help="a raw sentence, split on whitespace (repeatable)")
    predict.add_argument("--words", action="append", nargs="+", metavar="WORD",
                         help="a pre-tokenized sentence (repeatable)")
    predict.add_argument("--file", help="a file of sentences, '-' for standard input: plain text (one sentence a "
                                        "line, split into words on whitespace), CoNLL (the first column is the word; "
                                        "words alone are fine) or CoNLL-U")
    predict.add_argument("--format", choices=["text", "conll", "conllu"],
                         help="format of --file (default: from its suffix .conll/.conllu, else CoNLL-U when its "
                              "lines look like it, else text)")
    predict.add_argument("--question", action="append", help="QA models: a question (repeatable, pairs with --context)")
    predict.add_argument("--context", action="append", help="QA models: the context to answer from (repeatable)")
    predict.add_argument("--out", help="write predictions here instead of stdout")
    predict.add_argument("--output-format", choices=["conll", "conllu", "jsonl"],
                         help="conll: word<TAB>label, a blank line between sentences; conllu: CoNLL-U with the "
                              "predicted column filled (a CoNLL-U input keeps its comments, ids and other columns); "
                              'jsonl: {"words": [...], "labels": [...]} a line (default: by the suffix of --out, '
                              ".conll/.conllu/.jsonl; else conllu for CoNLL-U input, else conll)")
    predict.add_argument("--column", choices=["upos", "xpos"], default="upos",
                         help="the CoNLL-U column the labels go to (default upos)")

    export = sub.add_parser("export", help="write a saved model as one ONNX file or a jax.export serving artifact")
    export.add_argument("--model", required=True, help="saved aligned model directory, or a finished work directory")
    export.add_argument("--case", default=cases.DEFAULT.name,
                        help=f"which trained case of a work directory: {', '.join(c.name for c in cases.WINDOWED)} "
                             f"(default {cases.DEFAULT.name})")
    export.add_argument("--window", type=int, help="which window K of a work directory (default: the only one)")
    export.add_argument("--format", required=True, choices=["onnx", "jax"],
                        help="onnx: one .onnx file (+ alad.json and the tokenizer beside it); jax: a jax.export "
                             "directory")
    export.add_argument("--out", required=True, help="the .onnx file, or the directory of a jax export")

    bench = sub.add_parser("bench", help="measure latency, alignment throughput and MFU; prints one JSON document")
    bench.add_argument("--vs-torch", action="store_true", help="also time the PyTorch reference recipe (needs torch)")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions (for smoke tests)")
    bench.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="teacher=... student=... student_layers=...")
    return parser


def _version() -> str:
    try:
        return version("alad-jax")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _enable_compilation_cache() -> None:
    """Persist XLA compilations across runs: a resumed or repeated run skips most compile time."""
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        jax.config.update("jax_compilation_cache_dir", str(base / "alad-jax" / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _cpu_note(matmul_dtype: str) -> None:
    """One line on stderr where bfloat16 matmuls cannot be fast on this CPU (alad_jax.xla_cpu)."""
    if line := xla_cpu.startup_note(matmul_dtype):
        print(line, file=sys.stderr)


def _run(args) -> int:
    # Before joining the others: a bad config stops every worker at once, none waits for its peers.
    seeds_flag = getattr(args, "seeds", None)
    config = load_config(args.config, args.overrides + ([f"seeds=[{seeds_flag}]"] if seeds_flag else []))
    cases.selected(config.cases)
    name = Path(args.config).stem if args.config else "default"
    workdir = Path(args.workdir or Path("runs") / (f"{name}-align" if args.command == "align" else name))
    if getattr(args, "check", False):
        print(check_run(config, workdir))
        print("--check: nothing trained")
        return 0
    supervised = distributed.supervise([sys.executable, "-m", "alad_train.cli", *args.argv])
    if supervised is not None:  # a multi-process launch: this process only watches the one doing the run
        return supervised

    distributed.initialize()
    try:
        _enable_compilation_cache()
        _cpu_note(config.matmul_dtype)
        if args.command == "align":
            align.align(config, workdir)
            distributed.finished()
            if distributed.is_primary():
                print(f"adapters: {workdir / 'adapters'} (reuse: alad run stages.align.from={workdir})")
            return 0
        results = seeds.run(config, workdir, restart=args.restart)  # one seed: pipeline.run
        distributed.finished()
    except BaseException as e:
        distributed.fail(e)  # several processes: tells the others, prints one line, exits; one process: no-op
        raise
    if distributed.is_primary():
        print(f"results: {workdir / 'results.md'} ({len(results['rows'])} rows)")
    return 0


def _compress(args) -> int:
    out = compress.truncate(args.source, args.layers, args.out, cache_dir=args.cache_dir)
    print(f"wrote {out} (first {args.layers} layers of {args.source})")
    return 0


def _predict(args) -> int:
    return predict.main(args)


def _export(args) -> int:
    return export.main(args)


def _bench(args) -> int:
    return bench_run.main(args)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a supervised run starts its worker with them
    handler = {"run": _run, "align": _run, "compress": _compress, "predict": _predict, "export": _export,
               "bench": _bench}[args.command]
    try:
        return handler(args)
    except AladError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permissions, ...: the user's environment, not a bug
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
