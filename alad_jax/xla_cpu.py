"""The CPU's bfloat16 matrix instructions and which XLA:CPU library runs the train steps' matmuls.

What was measured (jax/jaxlib 0.10.2, docs/speed.md, ``benchmarks/xla_cpu_dots.py``):
XLA:CPU hands every dot to a library fusion. By default that is YNNPACK
(``__ynn_fusion``), which runs the steps' bfloat16 x bfloat16 -> float32 dots
(:mod:`alad_jax.models.precision`) on the CPU's bfloat16 instructions. oneDNN
(``__onednn_fusion``) is used only with ``--xla_cpu_use_onednn=true`` *and*
``--xla_cpu_experimental_onednn_fusion_type=dot``, and only for dots whose
operands and result share one dtype: it takes the float32 attention products,
never a mixed bfloat16 dot, and a pure bfloat16 dot is widened to float32
before it gets there. ``--xla_cpu_use_onednn=true`` alone compiles the same
executable as no flag, for ``alad bench``'s dense steps and ``alad run``'s
packed steps alike. No XLA flag measured faster than the default, so the
project sets none: it reads what the CPU has, checks which library runs a
bfloat16 dot, says so in ``results.json`` (``xla_cpu``), and prints one line
where bfloat16 matmuls cannot be fast (no bfloat16 instructions, or XLA_FLAGS
that widen the dots to float32, e.g. ``--xla_cpu_experimental_ynn_fusion_type=``).
It sets no flag itself: a flag this jaxlib does not know aborts the process
(``Unknown flag in XLA_FLAGS``), and the experimental ones are renamed between
releases.

XLA_FLAGS (whatever the user sets) and compile options are part of jax's
persistent compilation cache key, so a cached executable compiled under other
flags is never served (``tests/test_xla_cpu.py`` holds that).
"""

from __future__ import annotations

import collections
import os
import platform
import re
from pathlib import Path

# Best first: AMX tiles, then AVX512-BF16's dot-product instructions (what this project's box has).
BF16_MATRIX_FLAGS = ("amx_bf16", "avx512_bf16")

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_DEFINITION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[")
_DOT = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = (\w+)\[[^=]*\bdot\(%([\w.\-]+), %([\w.\-]+)\)")
_LIBRARY_FUSION = re.compile(r"calls=%([\w.\-]+).*\"kind\":\"__(\w+)_fusion\"")


def read_cpuinfo(path: str | Path = "/proc/cpuinfo") -> str:
    """The text of ``/proc/cpuinfo``; empty where there is none (not Linux)."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The first processor's feature flags (x86 ``flags``, Arm ``Features``)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or platform.machine()


def bf16_matrix_engine(flags: frozenset[str]) -> str | None:
    """``"amx_bf16"``, ``"avx512_bf16"`` or None: the best bfloat16 matrix instructions the CPU reports."""
    return next((flag for flag in BF16_MATRIX_FLAGS if flag in flags), None)


def dot_libraries(hlo_text: str) -> dict[str, int]:
    """``{"<library> <lhs>x<rhs>-><result>": count}`` over every dot of an optimized HLO module.

    ``<library>`` is the library fusion the dot sits in (``ynn``, ``onednn``) or ``xla``
    (XLA's own emitted loops); the dtypes are the dot's own, after XLA's rewrites.
    """
    library_of = {}  # fused computation -> the library of the fusion that calls it
    dtypes = collections.defaultdict(dict)  # computation -> {value name: dtype}
    dots = []
    computation = None
    for line in hlo_text.splitlines():
        if match := _COMPUTATION.match(line):
            computation = match.group(1)
            continue
        if match := _LIBRARY_FUSION.search(line):
            library_of[match.group(1)] = match.group(2)
        if match := _DEFINITION.match(line):
            dtypes[computation][match.group(1)] = match.group(2)
        if match := _DOT.match(line):
            dots.append((computation, *match.groups()))
    counts = collections.Counter(
        f"{library_of.get(comp, 'xla')} {dtypes[comp].get(lhs, '?')}x{dtypes[comp].get(rhs, '?')}->{out}"
        for comp, out, lhs, rhs in dots)
    return dict(sorted(counts.items()))


def bf16_dot_path() -> str:
    """Where XLA:CPU runs a train step's bfloat16 dot here: e.g. ``"ynn bf16xbf16->f32"`` (the CPU's bfloat16
    instructions through YNNPACK) or ``"xla f32xf32->f32"`` (widened to float32). Compiles one small dot."""
    import jax
    import jax.numpy as jnp

    operand = jax.ShapeDtypeStruct((256, 256), jnp.bfloat16)
    dot = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    found = dot_libraries(dot.lower(operand, operand).compile().as_text())
    return ", ".join(found) or "none"


def note(engine: str | None, matmul_dtype: str, bf16_dot: str | None = None, machine: str | None = None) -> str | None:
    """The one line to print where ``matmul_dtype`` asks for bfloat16 and this CPU will not run it fast: the CPU
    lacks bfloat16 matrix instructions, or ``bf16_dot`` (:func:`bf16_dot_path`) shows XLA widening the dots."""
    machine = machine or platform.machine()
    if matmul_dtype != "bfloat16":
        return None
    if engine is None:
        if machine.lower() not in ("x86_64", "amd64"):
            return None  # no cpuinfo flag to tell by
        return ("note: this CPU reports no bfloat16 matrix instructions (avx512_bf16 or amx_bf16): its bfloat16 "
                "matmuls are not accelerated; matmul_dtype=float32 keeps float32 numerics")
    if bf16_dot is not None and "bf16xbf16" not in bf16_dot:
        return (f"note: XLA:CPU runs bfloat16 matmuls widened to float32 here ({bf16_dot}; "
                f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}): the CPU's {engine} instructions go unused")
    return None


def startup_note(matmul_dtype: str) -> str | None:
    """:func:`note` for this machine, where jax computes on the CPU (call after jax picks its backend)."""
    import jax

    if jax.default_backend() != "cpu" or matmul_dtype != "bfloat16":
        return None
    engine = bf16_matrix_engine(cpu_flags(read_cpuinfo()))
    return note(engine, matmul_dtype, bf16_dot_path() if engine else None)


def describe(matmul_dtype: str, cpuinfo: str | None = None) -> dict:
    """``results.json``'s ``xla_cpu``: the CPU, its bfloat16 matrix instructions, XLA_FLAGS as the run saw
    them, and the library that ran a bfloat16 dot (jax must be usable; call after the backend starts)."""
    import jax

    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    engine = bf16_matrix_engine(cpu_flags(text))
    cpu = jax.default_backend() == "cpu"
    bf16_dot = bf16_dot_path() if cpu else None
    return {
        "cpu": cpu_model(text),
        "bf16_matrix_instructions": engine,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__,
        "matmul_dtype": matmul_dtype,
        "bf16_dot": bf16_dot,
        "note": note(engine, matmul_dtype, bf16_dot) if cpu else None,
    }
