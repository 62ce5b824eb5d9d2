"""Deployment files: the Slurm job script dask-jobqueue generates, that the compose and
Kubernetes files hold valid image3-dask commands, and the Kubernetes manifests against the API
schemas and the Dask operator's CRDs, offline (no Docker engine, Slurm or Kubernetes needed; the
compose stack is run for real in tests/service/test_deploy_compose.py)."""

from __future__ import annotations

import functools
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from image3_dask.cli import _build_parser, _split_step_overrides
from image3_dask.pipeline.cluster import (
    WORKER_PRELOAD,
    ClusterError,
    load_jobqueue_config,
    make_slurm_cluster,
)

ROOT = Path(__file__).resolve().parents[2]
JOBQUEUE = ROOT / "deploy" / "slurm" / "jobqueue.yaml"


def parses_as_cli(argv: list[str]) -> None:
    assert argv[0] == "image3-dask", argv
    rest, overrides = _split_step_overrides(argv[1:])
    args = _build_parser().parse_args(rest)
    if overrides:
        from image3_dask.pipeline.config import PipelineConfig

        assert args.command in ("run", "submit")
        PipelineConfig().apply_overrides(overrides)


def deploy_settings() -> dict:
    """``jobqueue.slurm`` of deploy/slurm/jobqueue.yaml: the source of truth of the checks."""
    return yaml.safe_load(JOBQUEUE.read_text())["jobqueue"]["slurm"]


def test_slurm_job_script_from_the_deploy_config():
    """The batch script dask-jobqueue writes carries every setting of the deploy file.

    Expected values are read from the YAML file (not copied here), converted the way
    dask-jobqueue documents: ``--mem`` is the job memory in whole GiB rounded up, each worker
    process gets ``cores / processes`` threads and ``memory / processes`` of memory.
    """
    pytest.importorskip("dask_jobqueue")
    from dask.utils import format_bytes, parse_bytes
    from dask_jobqueue.slurm import slurm_format_bytes_ceil

    cfg = deploy_settings()
    cluster = make_slurm_cluster(
        JOBQUEUE,
        dashboard_address="127.0.0.1:0",
        scheduler_options={"host": "127.0.0.1"},
        queue="debug",
    )
    try:
        script = cluster.job_script()
        address = cluster.scheduler_address
    finally:
        cluster.close()
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    memory = parse_bytes(cfg["memory"])
    expected = [
        "#SBATCH -J dask-worker",
        "#SBATCH -p debug",  # the deploy file leaves the partition to the site (null)
        "#SBATCH -n 1",
        f"#SBATCH --cpus-per-task={cfg['cores']}",
        f"#SBATCH --mem={slurm_format_bytes_ceil(memory)}",
        f"#SBATCH -t {cfg['walltime']}",
        *(f"#SBATCH {d}" for d in cfg["job-extra-directives"]),
    ]
    if cfg.get("account"):
        expected.append(f"#SBATCH -A {cfg['account']}")
    for directive in expected:
        assert directive in lines, (directive, script)
    for line in cfg["job-script-prologue"]:
        assert line in lines, (line, script)
    command = lines[-1]
    assert "distributed.cli.dask_worker" in command and address in command
    assert address.startswith("tcp://127.0.0.1:")
    argv = shlex.split(command)

    def value(flag):
        return argv[argv.index(flag) + 1]

    assert int(value("--nthreads")) == cfg["cores"] // cfg["processes"]
    assert int(value("--nworkers")) == cfg["processes"]
    assert value("--memory-limit") == format_bytes(memory // cfg["processes"]).replace(" ", "")
    assert value("--local-directory") == cfg["local-directory"]
    assert float(value("--death-timeout")) == cfg["death-timeout"]
    extra = cfg["worker-extra-args"]
    assert len(extra) % 2 == 0
    for flag, arg in zip(extra[::2], extra[1::2], strict=True):
        assert value(flag) == arg, (flag, command)
    assert "--nanny" in argv
    # what the project relies on, whatever a site edits in the file: single-threaded workers
    # (the drizzle kernel holds the GIL) that preload the package's worker setup
    assert value("--nthreads") == "1"
    assert value("--preload") == WORKER_PRELOAD


def test_bad_jobqueue_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "jq.yaml"
    bad.write_text("jobqueue:\n  slurm:\n    cores: 2\n    gpus: 4\n")
    with pytest.raises(ClusterError, match="unknown jobqueue.slurm setting 'gpus'"):
        load_jobqueue_config(bad)
    with pytest.raises(ClusterError, match="not found"):
        load_jobqueue_config(tmp_path / "missing.yaml")
    bad.write_text("jobqueue: [\n")
    with pytest.raises(ClusterError, match="not a readable YAML"):
        load_jobqueue_config(bad)
    assert load_jobqueue_config(JOBQUEUE) == deploy_settings()


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="Slurm is installed here")
def test_cluster_slurm_without_slurm_is_one_clear_error(small_dither, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "image3_dask.cli", "run", str(small_dither.asn_path), "-o",
         str(out), "--cluster", "slurm", "--jobqueue-config", str(JOBQUEUE)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "sbatch" in lines[0] and "Slurm login node" in lines[0]
    assert not out.exists()


def test_compose_file():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"scheduler", "worker", "submit"} <= set(services)
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)  # never on all interfaces
        cmd = svc["command"]
        if cmd[:2] == ["sh", "-c"]:
            for part in cmd[2].split("&&"):
                parses_as_cli(shlex.split(part))
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        # the base image is a build argument, Docker Hub's python:3.11-slim unless set
        assert svc["build"]["args"]["BASE_IMAGE"] == "${BASE_IMAGE:-python:3.11-slim}"
        assert svc["init"] is True  # an init as PID 1: `compose stop` is prompt
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert "data:/data" in services["worker"]["volumes"]
    assert "data:/data" in services["submit"]["volumes"]
    assert services["worker"]["command"][:3] == ["dask", "worker", "tcp://scheduler:8786"]


def test_dockerfile():
    """Both stages start from the BASE_IMAGE argument (python:3.11-slim by default); the image
    is built from the checkout and runs as an unprivileged user. (It is built and run for real
    by tests/service/test_deploy_compose.py where a Docker engine is at hand.)"""
    lines = (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
    assert lines.index("ARG BASE_IMAGE=python:3.11-slim") < min(
        i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert froms == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert "COPY image3_dask ./image3_dask" in lines and '".[${EXTRAS}]"' in "\n".join(lines)
    # the extras are a build argument (the S3 variant adds cloud), cluster unless set
    assert "ARG EXTRAS=cluster" in lines and 'ARG EXTRA_PACKAGES=""' in lines
    # the placeholder project's wheel is deleted by a glob: not under `set -f`
    text = "\n".join(lines).replace("\\\n", " ")
    (deps,) = [ln for ln in text.splitlines() if "/wheels/image3_dask-*.whl" in ln]
    rm_at = deps.index("rm -rf")
    assert deps.rfind("set -f", 0, rm_at) < deps.rfind("set +f", 0, rm_at)
    assert "USER image3" in lines
    assert not any(("curl " in ln or "wget " in ln or "git clone" in ln) for ln in lines)


def test_dockerignore_keeps_the_context_small():
    """The build context holds only what deploy/Dockerfile copies (a checkout's .venv, .git
    and benchmark outputs would be sent to the engine on every build otherwise)."""
    rules = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*"
    allowed = {r[1:] for r in rules if r.startswith("!")}
    copied = set()
    for ln in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        if ln.startswith("COPY ") and "--from=" not in ln:
            copied.update(ln.split()[1:-1])
    assert copied == allowed == {"pyproject.toml", "README.md", "image3_dask"}


def test_kubernetes_manifests():
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/daskcluster.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert {"PersistentVolumeClaim", "DaskCluster", "DaskAutoscaler"} <= set(kinds)
    dc = kinds["DaskCluster"]["spec"]
    assert dc["scheduler"]["service"]["type"] == "ClusterIP"
    worker = dc["worker"]["spec"]["containers"][0]
    assert worker["args"][:2] == ["dask", "worker"]
    assert worker["args"][worker["args"].index("--nthreads") + 1] == "1"
    assert worker["args"][worker["args"].index("--preload") + 1] == (
        "image3_dask.pipeline.worker_setup"
    )
    job = yaml.safe_load((ROOT / "deploy/kubernetes/submit-job.yaml").read_text())
    parses_as_cli(job["spec"]["template"]["spec"]["containers"][0]["args"])


# ---- Kubernetes manifests against the API schemas, offline -------------------------------------

K8S_MANIFESTS = [ROOT / "deploy/kubernetes/daskcluster.yaml",
                 ROOT / "deploy/kubernetes/submit-job.yaml",
                 ROOT / "deploy/kubernetes/daskcluster-s3.yaml",
                 ROOT / "deploy/kubernetes/submit-job-s3.yaml"]
#: Kubernetes versions the manifests target (README, deploy section): each is checked against
#: that version's API schemas as kubernetes-validate ships them.
K8S_VERSIONS = [f"1.{minor}" for minor in range(30, 38)]
#: The Dask operator's CRDs, copied from dask-kubernetes 2026.3.0 (see the folder's README).
DASK_OPERATOR_CRDS = ROOT / "tests/data/dask_operator_crds"


def manifest_docs() -> list[tuple[str, dict]]:
    """``(file name, document)`` of every document of the Kubernetes manifests."""
    return [(p.name, d) for p in K8S_MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]


def _strict_openapi(schema):
    """A CRD's OpenAPI v3 schema as the API server applies it with strict field validation:
    unknown fields are errors (``additionalProperties: false`` where properties are listed and
    nothing says to keep unknown ones), and ``format: int-or-string`` takes integers too."""
    if isinstance(schema, list):
        return [_strict_openapi(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict_openapi(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if out.get("format") == "int-or-string":
        out.pop("type", None)
        out["type"] = ["integer", "string"]
    return out


@functools.cache
def crd_validators() -> dict[tuple[str, str], object]:
    """``(apiVersion, kind)`` -> a JSON-schema validator, for each served version of the Dask
    operator's CRDs; ``apiVersion``, ``kind`` and ``metadata.name`` are checked as the API
    server checks every object's."""
    import jsonschema

    out = {}
    for path in sorted(DASK_OPERATOR_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        assert crd["kind"] == "CustomResourceDefinition", path
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            api_version = f"{group}/{version['name']}"
            schema = _strict_openapi(version["schema"]["openAPIV3Schema"])
            schema["properties"] = {
                **schema["properties"],
                "apiVersion": {"const": api_version},
                "kind": {"const": kind},
                "metadata": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {
                        "type": "string", "maxLength": 253,
                        "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
                    }},
                },
            }
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind",
                                         "metadata"})
            jsonschema.Draft4Validator.check_schema(schema)
            out[(api_version, kind)] = jsonschema.Draft4Validator(schema)
    return out


def k8s_errors(doc: dict, crds: dict, versions: list[str] = K8S_VERSIONS) -> list[str]:
    """Every schema error of one manifest document: for each of ``versions`` (Kubernetes
    kinds; the first error of each), or against the Dask operator's CRD (its kinds); [] when it
    is valid."""
    import kubernetes_validate

    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in crds:
        return [f"{key[1]} {'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in crds[key].iter_errors(doc)]
    errors = []
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"Kubernetes {version}: {key[1]} "
                          f"{'.'.join(map(str, e.absolute_path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"Kubernetes {version} has no kind {key[1]} in {key[0]}")
    return errors


def test_kubernetes_validate_ships_the_target_versions():
    """The targets are real: kubernetes-validate has the API schemas of each (a release that
    drops one fails here, and the targets in README and :data:`K8S_VERSIONS` must move)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    shipped = {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}
    assert set(K8S_VERSIONS) <= shipped, sorted(shipped)


def test_kubernetes_manifests_validate_offline():
    """Each document of deploy/kubernetes against the API schemas of every target Kubernetes
    version (strict: unknown fields are errors), the Dask operator's kinds against its CRDs;
    every kind found has a schema (none is skipped)."""
    crds = crd_validators()
    assert set(crds) == {("kubernetes.dask.org/v1", "DaskCluster"),
                         ("kubernetes.dask.org/v1", "DaskAutoscaler")}
    docs = manifest_docs()
    assert {d["kind"] for _, d in docs} == {"PersistentVolumeClaim", "DaskCluster",
                                           "DaskAutoscaler", "Job", "Secret"}
    assert {name for name, _ in docs} == {p.name for p in K8S_MANIFESTS}
    errors = [f"{name}: {e}" for name, d in docs for e in k8s_errors(d, crds)]
    assert not errors, "\n".join(errors)


def _set(doc: dict, path: str, value) -> dict:
    """A copy of ``doc`` with the dotted ``path`` (list indices as numbers) set to ``value``."""
    import copy

    doc = copy.deepcopy(doc)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = doc
    for p in parents:
        node = node[p]
    node[last] = value
    return doc


@pytest.mark.parametrize("kind, path, value, needle", [
    # a misspelt field (unknown fields are errors), a wrong type, a bad enum, a bad name
    ("Job", "spec.template.spec.containers.0.argz", ["x"], "argz"),
    ("Job", "spec.backoffLimit", "none", "backoffLimit"),
    ("PersistentVolumeClaim", "spec.accessModes", "ReadWriteMany", "accessModes"),
    ("DaskCluster", "spec.worker.spec.containers.0.volumeMount", [], "volumeMount"),
    ("DaskCluster", "spec.worker.replicas", "four", "replicas"),
    ("DaskCluster", "spec.scheduler.service.ports.0.port", "8786", "port"),
    ("DaskCluster", "metadata.name", "Image3_Cluster", "name"),
    ("DaskAutoscaler", "spec.maximum", "32", "maximum"),
])
def test_kubernetes_validation_finds_errors(kind, path, value, needle):
    """The validation of :func:`test_kubernetes_manifests_validate_offline` is not vacuous:
    one broken field in a copy of a manifest is reported, by its path."""
    pytest.importorskip("kubernetes_validate")
    crds = crd_validators()
    doc = next(d for name, d in manifest_docs() if d["kind"] == kind and "-s3" not in name)
    newest = K8S_VERSIONS[-1:]
    assert k8s_errors(doc, crds, newest) == []
    errors = k8s_errors(_set(doc, path, value), crds, newest)
    assert errors and all(needle in e for e in errors), errors


# ---- the variants without a shared disk: an S3-compatible store --------------------------------


def _s3_urls(argv: list[str]) -> tuple[str, str]:
    """The input and ``--output-dir``/``-o`` of an ``image3-dask submit`` command."""
    flag = "--output-dir" if "--output-dir" in argv else "-o"
    return argv[2], argv[argv.index(flag) + 1]


def test_compose_s3_file():
    """deploy/compose-s3.yml: the base file's cluster with no volume at all; the workers and the
    submitting container reach the store through AWS_ENDPOINT_URL, the job's inputs and
    products are s3:// URLs; the image carries s3fs (extra cloud) and the stand-in store."""
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    compose = yaml.safe_load((ROOT / "deploy/compose-s3.yml").read_text())
    services = compose["services"]
    assert set(services) == {"s3", "scheduler", "worker", "submit"}
    assert "volumes" not in compose
    for name, svc in services.items():
        assert "volumes" not in svc, name  # no shared disk anywhere
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
        assert svc["image"] == "image3-dask-s3:0.1.0" and svc["init"] is True
        build = svc["build"]
        assert (ROOT / "deploy" / build["context"]).resolve() == ROOT  # paths: from deploy/
        assert build["dockerfile"] == "deploy/Dockerfile"
        assert build["args"]["EXTRAS"] == "cluster,cloud"
        assert build["args"]["EXTRA_PACKAGES"].startswith("moto[server]")
        assert build["args"]["BASE_IMAGE"] == "${BASE_IMAGE:-python:3.11-slim}"
    assert services["s3"]["command"][0] == "moto_server"
    port = services["s3"]["command"][services["s3"]["command"].index("-p") + 1]
    # the same scheduler and workers as the shared-disk file (they must not drift apart)
    assert services["worker"]["command"] == base["worker"]["command"]
    assert services["scheduler"]["command"] == base["scheduler"]["command"]
    for name in ("worker", "submit"):
        env = services[name]["environment"]
        assert env["AWS_ENDPOINT_URL"] == f"http://s3:{port}", name
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"], name
        assert services[name]["depends_on"]["s3"] == {"condition": "service_healthy"}
    cmd = services["submit"]["command"]
    assert cmd[:2] == ["sh", "-c"]
    submits = []
    for part in cmd[2].split("&&"):
        argv = shlex.split(part)
        if argv[0] == "image3-dask":
            parses_as_cli(argv)
            if argv[1] == "submit":
                submits.append(argv)
    (submit,) = submits
    inputs, output = _s3_urls(submit)
    assert inputs.startswith("s3://image3/") and output.startswith("s3://image3/")
    assert "--wait" in submit


def test_kubernetes_s3_manifests():
    """deploy/kubernetes/*-s3.yaml: no PersistentVolumeClaim and no volume in any pod; the
    workers and the submitting job take the AWS_* variables from the Secret the file
    defines; the job's inputs and products are s3:// URLs; the workers are daskcluster.yaml's."""
    docs = {}
    for name in ("daskcluster-s3.yaml", "submit-job-s3.yaml"):
        for d in yaml.safe_load_all((ROOT / "deploy/kubernetes" / name).read_text()):
            docs[d["kind"]] = d
    assert set(docs) == {"Secret", "DaskCluster", "DaskAutoscaler", "Job"}
    secret = docs["Secret"]
    assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(
        secret["stringData"])
    shared = {d["kind"]: d for d in yaml.safe_load_all(
        (ROOT / "deploy/kubernetes/daskcluster.yaml").read_text())}
    pods = {
        "worker": docs["DaskCluster"]["spec"]["worker"]["spec"],
        "scheduler": docs["DaskCluster"]["spec"]["scheduler"]["spec"],
        "job": docs["Job"]["spec"]["template"]["spec"],
    }
    for name, pod in pods.items():
        assert "volumes" not in pod, name
        for c in pod["containers"]:
            assert "volumeMounts" not in c, name
            assert c["image"].endswith("/image3-dask-s3:0.1.0"), name
    for name in ("worker", "job"):
        (c,) = pods[name]["containers"]
        assert c["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}], name
    worker = pods["worker"]["containers"][0]
    assert worker["args"] == shared["DaskCluster"]["spec"]["worker"]["spec"]["containers"][0][
        "args"]
    args = pods["job"]["containers"][0]["args"]
    parses_as_cli(args)
    inputs, output = _s3_urls(args)
    assert inputs.startswith("s3://") and output.startswith("s3://")
    # the scheduler the job submits to is the one the DaskCluster's name makes
    assert args[args.index("--scheduler") + 1] == (
        f"tcp://{docs['DaskCluster']['metadata']['name']}-scheduler:8786")
