"""The deployment files in deploy/: they parse, and every `dist-relu` command in them is one the CLI accepts.

The commands are parsed by the real click commands (`make_context`), never run.
"""

import ast
import py_compile
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest
import yaml

from dist_relu.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DASKJOB = DEPLOY / "kubernetes" / "daskjob.yaml"
PVC = DEPLOY / "kubernetes" / "pvc.yaml"
JOBQUEUE = DEPLOY / "slurm" / "jobqueue.yaml"
JOBQUEUE_SCRIPT = DEPLOY / "slurm" / "fit_jobqueue.py"
README = DEPLOY / "README.md"
YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
SBATCH_FILES = sorted(DEPLOY.rglob("*.sbatch"))

# Options that are being added to `dist-relu fit`; a file may use them before the CLI has them.
SAMPLE_ADDRESS = "tcp://10.0.0.5:8786"
SHELL_OPERATORS = set("();<>|&")


def rel(path):
    return str(path.relative_to(ROOT))


def load(path):
    return yaml.safe_load(COMPOSE.read_text()) if path == COMPOSE else yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------------------------
# Finding the `dist-relu ...` invocations


def sample_value(name):
    """A stand-in for a shell variable or a Python expression, chosen by its name."""
    lowered = name.lower()
    if "address" in lowered or "scheduler" in lowered:
        return SAMPLE_ADDRESS
    if "jobs" in lowered:
        return "3"
    return re.sub(r"\W+", "_", lowered).strip("_") or "value"


def substitute_variables(text):
    """Replace ${NAME...} and $NAME by sample values (their quotes are kept and removed by shlex)."""
    text = re.sub(r"\$\{([A-Za-z_]\w*)[^}]*\}", lambda m: sample_value(m.group(1)), text)
    return re.sub(r"\$([A-Za-z_]\w*)", lambda m: sample_value(m.group(1)), text)


def is_dist_relu(token):
    """The command word itself, not a path that ends in the name (such as a venv ~/venvs/dist-relu)."""
    return token == "dist-relu" or token.endswith("/bin/dist-relu")


def invocations_in_argv(argv):
    """The arguments after each `dist-relu` word of a tokenised command, up to a shell operator."""
    found = []
    for i, token in enumerate(argv):
        if is_dist_relu(token):
            args = []
            for word in argv[i + 1:]:
                if word and set(word) <= SHELL_OPERATORS:
                    break
                args.append(word)
            found.append(args)
    return found


def invocations_in_shell(text):
    """Every `dist-relu` invocation in shell text (a script, a `sh -c` string or a README block)."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        if "dist-relu" not in line or line.lstrip().startswith("#"):
            continue
        lexer = shlex.shlex(substitute_variables(line), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        found.extend(invocations_in_argv(list(lexer)))
    return found


def invocations_in_yaml(node):
    """Walk parsed YAML: a list holding the word `dist-relu` is an argv; any other string is shell text."""
    if isinstance(node, dict):
        return [args for value in node.values() for args in invocations_in_yaml(value)]
    if isinstance(node, list):
        if any(isinstance(item, str) and is_dist_relu(item) for item in node):
            return invocations_in_argv([substitute_variables(str(item)) for item in node])
        return [args for item in node for args in invocations_in_yaml(item)]
    if isinstance(node, str) and len(node.split()) > 1:  # one word is a name (`name: dist-relu`), not a command
        return invocations_in_shell(node)
    return []


def invocations_in_python(path):
    """The list literals starting with "dist-relu" (subprocess argv), names replaced by sample values."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.List) and node.elts and isinstance(node.elts[0], ast.Constant)
                and node.elts[0].value == "dist-relu"):
            args = []
            for element in node.elts[1:]:
                if isinstance(element, ast.Constant):
                    args.append(str(element.value))
                else:
                    args.append(sample_value(ast.unparse(element).split(".")[-1]))
            found.append(args)
    return found


def readme_shell_blocks(text):
    return re.findall(r"^```(?:sh|bash|shell|console)\n(.*?)^```", text, flags=re.S | re.M)


def all_invocations():
    cases = []
    for path in YAML_FILES:
        for document in yaml.safe_load_all(path.read_text()):
            cases += [(rel(path), args) for args in invocations_in_yaml(document)]
    for path in SBATCH_FILES:
        cases += [(rel(path), args) for args in invocations_in_shell(path.read_text())]
    cases += [(rel(JOBQUEUE_SCRIPT), args) for args in invocations_in_python(JOBQUEUE_SCRIPT)]
    for block in readme_shell_blocks(README.read_text()):
        cases += [(rel(README), args) for args in invocations_in_shell(block)]
    return cases


INVOCATIONS = all_invocations()


# ---------------------------------------------------------------------------------------------------------------
# Parsing an invocation with the real click commands


def parse(args):
    """Parse args as `dist-relu ARGS` would, without running the command; raise click's error if they are invalid."""
    if args and args[0].startswith("-"):  # options of the group itself: --version, --help
        with pytest.raises(click.exceptions.Exit) as exit:
            main.make_context("dist-relu", list(args))
        assert exit.value.exit_code == 0
        return
    with main.make_context("dist-relu", list(args[:1])) as ctx:
        command = main.get_command(ctx, args[0])
        if command is None:
            raise click.UsageError(f"no such command {args[0]!r}")
        command.make_context(args[0], list(args[1:]), parent=ctx).close()


def test_the_files_hold_the_expected_invocations():
    sources = {source for source, _ in INVOCATIONS}
    assert {rel(COMPOSE), rel(DASKJOB), rel(DEPLOY / "slurm" / "fit.sbatch"), rel(JOBQUEUE_SCRIPT), rel(README)} <= sources
    subcommands = {(source, args[0]) for source, args in INVOCATIONS if args}
    assert (rel(COMPOSE), "simulate") in subcommands and (rel(COMPOSE), "fit") in subcommands
    assert (rel(DASKJOB), "fit") in subcommands and (rel(JOBQUEUE_SCRIPT), "fit") in subcommands


@pytest.mark.parametrize("source, args", INVOCATIONS, ids=[f"{s}:{' '.join(a[:2])}" for s, a in INVOCATIONS])
def test_invocation_is_accepted_by_the_cli(source, args):
    assert args, f"{source}: `dist-relu` without arguments"
    try:
        parse(args)
    except click.ClickException as error:
        pytest.fail(f"{source}: dist-relu {shlex.join(args)}: {error.format_message()}")


def test_the_parser_rejects_a_bad_invocation():
    with pytest.raises(click.ClickException):
        parse(["fit", "sim.zarr", "--out", "fit.zarr", "--no-such-option"])
    with pytest.raises(click.ClickException):
        parse(["fit", "sim.zarr"])  # --out is required
    assert invocations_in_shell('X=1 dist-relu fit "$OUT" --out b && echo done') == [["fit", "out", "--out", "b"]]
    assert invocations_in_shell("python3 -m venv ~/venvs/dist-relu") == []
    assert invocations_in_yaml({"name": "dist-relu", "command": ["sh", "-c", "exec dist-relu --version"]}) == [
        ["--version"]]


# ---------------------------------------------------------------------------------------------------------------
# The files themselves


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_parses(path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents


def test_compose_has_the_four_services_on_one_shared_volume():
    compose = load(COMPOSE)
    services = compose["services"]
    assert set(services) == {"scheduler", "worker", "simulate", "fit"}
    assert "data" in compose["volumes"]
    for name, service in services.items():
        assert "data:/data" in service["volumes"], name
    assert services["worker"]["deploy"]["replicas"] == 2
    assert "tcp://scheduler:8786" in services["worker"]["command"]
    assert {"8786:8786", "8787:8787"} <= set(services["scheduler"]["ports"])
    assert services["fit"]["depends_on"]["simulate"]["condition"] == "service_completed_successfully"
    assert "scheduler" in services["fit"]["depends_on"]


def test_daskjob():
    job = load(DASKJOB)
    assert job["apiVersion"] == "kubernetes.dask.org/v1"
    assert job["kind"] == "DaskJob"
    cluster = job["spec"]["cluster"]["spec"]
    assert cluster["worker"]["replicas"] == 2
    container = job["spec"]["job"]["spec"]["containers"][0]
    assert container["command"][:2] == ["sh", "-c"] and "$DASK_SCHEDULER_ADDRESS" in container["command"][2]
    ports = {port["port"] for port in cluster["scheduler"]["service"]["ports"]}
    assert ports == {8786, 8787}
    for pod in (job["spec"]["job"]["spec"], cluster["worker"]["spec"], cluster["scheduler"]["spec"]):
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ["dist-relu-data"]
        assert {"name": "data", "mountPath": "/data"} in pod["containers"][0]["volumeMounts"]
    pvc = load(PVC)
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == "dist-relu-data"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_jobqueue_config():
    slurm = load(JOBQUEUE)["jobqueue"]["slurm"]
    for key in ("cores", "memory", "processes", "walltime", "local-directory", "job-extra-directives",
                "worker-extra-args"):
        assert key in slurm, key


def test_dockerfile_and_its_ignore_list():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\s*$", dockerfile, flags=re.M)
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "benchmarks/results"} <= set(ignored)
    assert any("__pycache__" in line for line in ignored)


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("path", SBATCH_FILES, ids=rel)
def test_sbatch_script_syntax(path):
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert path.read_text().startswith("#!/bin/bash\n")


def test_jobqueue_script_compiles(tmp_path):
    py_compile.compile(str(JOBQUEUE_SCRIPT), cfile=str(tmp_path / "fit_jobqueue.pyc"), doraise=True)
