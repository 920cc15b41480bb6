"""``alad bench --vs-torch``: the authors' recipe in PyTorch, timed on the same batches as ours.

torch is an optional extra: this module imports it only inside the functions that run PyTorch, so
importing the module (``alad bench`` without ``--vs-torch``) needs no torch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import transformers

from alad_train.config import Config
from alad_jax.data.tagging import IGNORE_INDEX
from alad_jax.errors import AladError
from alad_train import cases
from alad_train.bench.effort import GEMM_DTYPES, GEMM_N, LATENCY_BATCHES, SEQ, TORCH_AUTOCAST, Effort
from alad_train.timing import one_per_shape, percentiles, seconds


def require_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        raise AladError("alad bench --vs-torch needs PyTorch, which is not installed; install it with "
                        "`bash scripts/setup.sh torch` (or drop --vs-torch)")


def _bert(path: Path, *, train: bool):
    """transformers' BertModel in float32 (SDPA attention, transformers' default), in train or eval mode."""
    import torch  # the optional extra (module docstring)

    transformers.logging.set_verbosity_error()
    model = transformers.BertModel.from_pretrained(str(path), dtype=torch.float32, add_pooling_layer=False)
    return model.train(train)


def reference_adapter(k: int, ds: int, hidden: int, dt: int):
    """The reference AlAd: windows padded at the batch edges only (as in the authors' code), two Linears."""
    import torch  # the optional extra (module docstring)

    class Adapter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.k = k
            self.fc1 = torch.nn.Linear(k * ds, hidden)
            self.fc2 = torch.nn.Linear(hidden, dt)

        def forward(self, states):
            r, length = self.k // 2, states.shape[1]
            padded = torch.nn.functional.pad(states, (0, 0, r, r))
            windows = torch.cat([padded[:, j : j + length] for j in range(self.k)], dim=-1)
            return self.fc2(torch.nn.functional.gelu(self.fc1(windows)))

    return Adapter()


def reference_align_loss(pred, target, m):
    """The reference's alignment loss: squared error over real tokens x dims, divided by the real tokens
    (``m``: the attention mask as float ``[batch, seq, 1]``)."""
    return (((pred - target) ** 2) * m).sum() / m.sum()


def _optimizer(params, stage, optim):
    """AdamW as the stages configure it; PyTorch's fused CPU kernel (the fastest of its three forms here)."""
    import torch  # the optional extra (module docstring)

    return torch.optim.AdamW(list(params), lr=stage.lr, betas=(optim.b1, optim.b2), eps=optim.eps,
                             weight_decay=stage.weight_decay, fused=True)


def _trainer(module, loss_of, stage, optim, autocast: bool = False):
    """A blocking step: forward, loss, backward, global-norm clip, AdamW update. ``autocast``: the forward
    under ``torch.autocast("cpu", bfloat16)`` (PyTorch's mixed precision; backward follows its dtypes)."""

    import torch  # the optional extra (module docstring)

    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = _optimizer(params, stage, optim)
    precision = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext

    def step(*inputs):
        with precision():
            loss = loss_of(*inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, optim.clip_norm)
        optimizer.step()
        return loss

    return step


def alignment_steps(cfg: Config, teacher_dir: Path, student_dir: Path):
    """``batch -> {"align_uncached", "adapter_cached"}`` blocking PyTorch steps on a dense batch.

    Uncached: frozen teacher and student forwards (no autograd), the AlAd step on
    the student states. Cached: the AlAd step alone on given float32 hidden states.
    """
    import torch  # the optional extra (module docstring)

    torch.manual_seed(cfg.seed)
    teacher, student = _bert(teacher_dir, train=False), _bert(student_dir, train=False)
    for p in (*teacher.parameters(), *student.parameters()):
        p.requires_grad_(False)
    ds, dt = student.config.hidden_size, teacher.config.hidden_size
    stage, optim = cfg.stages.continual, cfg.optim

    def build(batch: dict, hidden: dict, autocast: bool = False) -> dict:
        ids = torch.from_numpy(batch["input_ids"]).long()
        mask = torch.from_numpy(batch["attention_mask"]).long()
        m = mask.unsqueeze(-1).float()
        uncached, cached = (reference_adapter(cfg.windows[0], ds, cfg.adapter_hidden, dt) for _ in range(2))

        def uncached_loss():
            with torch.no_grad():
                s = student(input_ids=ids, attention_mask=mask).last_hidden_state
                t = teacher(input_ids=ids, attention_mask=mask).last_hidden_state
            return reference_align_loss(uncached(s), t, m)

        s_cached = torch.from_numpy(np.asarray(hidden["student_hidden"], np.float32))
        t_cached = torch.from_numpy(np.asarray(hidden["teacher_hidden"], np.float32))
        return {"align_uncached": _trainer(uncached, uncached_loss, stage, optim, autocast),
                "adapter_cached": _trainer(cached, lambda: reference_align_loss(cached(s_cached), t_cached, m), stage,
                                           optim, autocast)}

    return build


def finetune_steps(cfg: Config, teacher_dir: Path, student_dir: Path, num_labels: int):
    """``batch -> {case name: blocking step}``: BertModel + dropout + Linear head (+ AlAd for joint), all training."""
    import torch  # the optional extra (module docstring)

    torch.manual_seed(cfg.seed)
    teacher_dim = transformers.BertConfig.from_pretrained(str(teacher_dir)).hidden_size

    def build(batch: dict, autocast: bool = False) -> dict:
        ids = torch.from_numpy(batch["input_ids"]).long()
        mask = torch.from_numpy(batch["attention_mask"]).long()
        labels = torch.from_numpy(batch["labels"]).long().reshape(-1)
        steps = {}
        for case in (cases.TEACHER_FT, cases.STUDENT_FT, cases.JOINT):
            encoder = _bert(teacher_dir if case.encoder == cases.TEACHER else student_dir, train=True)
            ds = encoder.config.hidden_size
            adapter = None
            if case.windowed:
                adapter = reference_adapter(cfg.windows[0], ds, cfg.adapter_hidden, teacher_dim)
            width = teacher_dim if adapter is not None else ds
            head = torch.nn.Sequential(torch.nn.Dropout(cfg.head_dropout), torch.nn.Linear(width, num_labels))
            parts = torch.nn.ModuleList([m for m in (encoder, adapter, head) if m is not None]).train()

            def loss_of(encoder=encoder, adapter=adapter, head=head):
                hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                if adapter is not None:
                    hidden = adapter(hidden)
                logits = head(hidden)
                return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels,
                                                         ignore_index=IGNORE_INDEX)

            steps[case.name] = _trainer(parts, loss_of, getattr(cfg.stages, case.stage), cfg.optim, autocast)
        return steps

    return build


def torch_recipe(cfg: Config, teacher_dir: Path, student_dir: Path, batches: list[dict], num_labels: int,
                  effort: Effort) -> dict:
    """The authors' recipe: frozen BertModel teacher and student, nn.Linear adapter, AdamW, no cache."""
    import torch  # the optional extra (module docstring)

    transformers.logging.set_verbosity_error()
    torch.manual_seed(cfg.seed)
    teacher, student = _bert(teacher_dir, train=False), _bert(student_dir, train=False)
    ds, dt, window = student.config.hidden_size, teacher.config.hidden_size, cfg.windows[0]

    adapter = reference_adapter(window, ds, cfg.adapter_hidden, dt)
    stage, optim = cfg.stages.continual, cfg.optim
    optimizer = _optimizer(adapter.parameters(), stage, optim)

    def step(batch):
        ids = torch.from_numpy(batch["input_ids"]).long()
        mask = torch.from_numpy(batch["attention_mask"]).long()
        with torch.no_grad():
            s = student(input_ids=ids, attention_mask=mask).last_hidden_state
            t = teacher(input_ids=ids, attention_mask=mask).last_hidden_state
        loss = reference_align_loss(adapter(s), t, mask.unsqueeze(-1).float())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), optim.clip_norm)
        optimizer.step()

    timed = batches[: effort.torch_batches] if effort.torch_batches else batches
    for batch in one_per_shape(timed):
        step(batch)  # warm-up: allocator and kernel selection, like our compilation
    took = seconds(lambda: [step(b) for b in timed])
    tokens = int(sum(b["attention_mask"].sum() for b in timed))

    head = torch.nn.Linear(dt, num_labels)
    latency = {}
    with torch.inference_mode():
        for rows in LATENCY_BATCHES:
            ids = torch.from_numpy(np.random.default_rng(rows).integers(1000, student.config.vocab_size, (rows, SEQ)))
            mask = torch.ones_like(ids)
            run = lambda: head(adapter(student(input_ids=ids, attention_mask=mask).last_hidden_state)).argmax(-1)
            run()
            latency[f"b{rows}"] = percentiles([seconds(run) for _ in range(effort.latency_reps[rows])])
    return {"batches": len(timed), "tokens": tokens, "seconds": took, "latency": latency,
            "threads": torch.get_num_threads(), "version": torch.__version__}


# --------------------------------------------------------------------------- a process of its own
# PyTorch steps timed inside the JAX process run slower and far more erratically than the same
# steps in a process without XLA (benchmarks/torch_baseline.py --no-jax; docs/speed_history.md): the
# two runtimes' thread pools share the cores. So the side-by-side steps run PyTorch in a worker
# process, driven step by step over a pipe (JSON lines; the batches as .npy files), each side's step
# timed in its own process.


def _recipe_spec(cfg: Config, teacher_dir: Path, student_dir: Path, num_labels: int) -> dict:
    """What the PyTorch steps read from the config, as JSON."""
    stages = {name: {"lr": getattr(cfg.stages, name).lr, "weight_decay": getattr(cfg.stages, name).weight_decay}
              for name in (cases.TEACHER_FT.stage, cases.STUDENT_FT.stage, cases.JOINT.stage, "continual")}
    optim = {k: getattr(cfg.optim, k) for k in ("b1", "b2", "eps", "clip_norm")}
    return {"seed": cfg.seed, "windows": list(cfg.windows), "adapter_hidden": cfg.adapter_hidden,
            "head_dropout": cfg.head_dropout, "stages": stages, "optim": optim, "teacher_dir": str(teacher_dir),
            "student_dir": str(student_dir), "num_labels": num_labels}


class TorchWorker:
    """The PyTorch fine-tune and alignment steps in a child process; ``step(name)`` returns its seconds."""

    def __init__(self, cfg: Config, teacher_dir: Path, student_dir: Path, num_labels: int, batch: dict,
                 align_batch: dict, hidden: dict, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        arrays = {"ft_" + k: v for k, v in batch.items()}
        arrays.update({"al_" + k: v for k, v in align_batch.items()})
        arrays.update({"hid_" + k: np.asarray(v, np.float32) for k, v in hidden.items()})
        for name, value in arrays.items():
            np.save(workdir / f"{name}.npy", np.asarray(value), allow_pickle=False)
        spec = _recipe_spec(cfg, teacher_dir, student_dir, num_labels)
        spec["arrays"] = sorted(arrays)
        (workdir / "spec.json").write_text(json.dumps(spec))
        self.proc = subprocess.Popen([sys.executable, "-m", "alad_train.bench.pytorch", str(workdir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = json.loads(self._read())
        self.names, self.threads, self.version = ready["steps"], ready["threads"], ready["version"]

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise AladError("alad bench --vs-torch: the PyTorch worker process died; run it alone to see why: "
                            "python -m alad_train.bench.pytorch WORKDIR")
        return line

    def step(self, name: str) -> float:
        self.proc.stdin.write(name + "\n")
        return float(self._read())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _gemm_steps(n: int, dtypes) -> dict:
    """{"gemm_<dtype>": ``torch.mm`` of two ``[n, n]`` operands of the dtype} (oneDNN's kernels for bfloat16)."""
    import torch  # the optional extra (module docstring)

    generator = torch.Generator().manual_seed(n)
    steps = {}
    for dtype in dtypes:
        a, b = (torch.randn(n, n, generator=generator).to(getattr(torch, dtype)) for _ in range(2))
        steps[f"gemm_{dtype}"] = lambda a=a, b=b: torch.mm(a, b)
    return steps


def _worker(workdir: Path) -> None:
    import torch  # the optional extra (module docstring)

    protocol, sys.stdout = sys.stdout, sys.stderr  # stray prints of the libraries must not enter the protocol
    spec = json.loads((workdir / "spec.json").read_text())
    arrays = {name: np.load(workdir / f"{name}.npy", allow_pickle=False) for name in spec["arrays"]}
    part = lambda prefix: {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}  # noqa: E731
    cfg = SimpleNamespace(seed=spec["seed"], windows=spec["windows"], adapter_hidden=spec["adapter_hidden"],
                          head_dropout=spec["head_dropout"], optim=SimpleNamespace(**spec["optim"]),
                          stages=SimpleNamespace(**{k: SimpleNamespace(**v) for k, v in spec["stages"].items()}))
    teacher_dir, student_dir = Path(spec["teacher_dir"]), Path(spec["student_dir"])
    steps = {}
    finetune = finetune_steps(cfg, teacher_dir, student_dir, spec["num_labels"])
    align = alignment_steps(cfg, teacher_dir, student_dir) if "al_input_ids" in arrays else None
    for autocast, suffix in ((False, ""), (True, TORCH_AUTOCAST)):
        built = dict(finetune(part("ft_"), autocast=autocast))
        if align is not None:
            built.update(align(part("al_"), part("hid_"), autocast=autocast))
        steps.update({name + suffix: step for name, step in built.items()})
    steps.update(_gemm_steps(GEMM_N, GEMM_DTYPES))
    for step in steps.values():  # warm-up: allocator and oneDNN primitive creation, like our compilation
        step()
        step()
    print(json.dumps({"steps": list(steps), "threads": torch.get_num_threads(), "version": torch.__version__}),
          file=protocol, flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        steps[line.strip()]()
        print(time.perf_counter() - start, file=protocol, flush=True)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
