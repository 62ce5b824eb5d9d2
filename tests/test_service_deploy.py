"""Deployment files: the Slurm job script dask-jobqueue generates, and that the compose and
Kubernetes files hold valid image3-dask commands (no Docker engine or Slurm needed)."""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[1]
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
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert "data:/data" in services["worker"]["volumes"]
    assert "data:/data" in services["submit"]["volumes"]
    assert services["worker"]["command"][:3] == ["dask", "worker", "tcp://scheduler:8786"]


def test_dockerfile():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    froms = [ln.split()[1] for ln in text.splitlines() if ln.startswith("FROM ")]
    assert froms and all(f == "python:3.11-slim" for f in froms)
    assert '".[cluster]"' in text and "USER image3" in text


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
