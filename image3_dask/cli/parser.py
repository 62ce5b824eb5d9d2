"""The argument parser of ``image3-dask`` and the spellings it accepts.

Options are spelled with dashes (``--output-dir``); jwst's underscore spellings
(``--output_dir``) are accepted too (:func:`dashed`), and ``--steps.<step>.<name>`` takes its
value after ``=`` or a space, as ``strun`` does (:func:`split_step_overrides`).
"""

from __future__ import annotations

import argparse

from image3_dask import __version__
from image3_dask.errors import ConfigError

__all__ = ["CONFIG_HELP", "build_parser", "dashed", "split_step_overrides"]


def _add_remote_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = p.add_argument_group("scheduler")
    g.add_argument(
        "--scheduler",
        help="address of a running Dask scheduler (tcp://HOST:PORT or tls://HOST:PORT)",
    )
    g.add_argument(
        "--scheduler-file",
        help="JSON file written by `dask scheduler --scheduler-file` (instead of --scheduler)",
    )
    g.add_argument(
        "--tls-ca-file", help="PEM file of the CA that signed the cluster's certificates"
    )
    g.add_argument("--tls-cert", help="PEM certificate of this client (tls:// schedulers)")
    g.add_argument("--tls-key", help="PEM private key of --tls-cert")
    g.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        help="seconds to wait for the scheduler to answer (default: 20)",
    )
    return g


def add_storage_options(p: argparse.ArgumentParser) -> None:
    """``--storage-options JSON``: fsspec options for s3:// (gs://, az://...) inputs and outputs."""
    p.add_argument(
        "--storage-options",
        metavar="JSON",
        help="fsspec options for object-store URLs (s3://...), e.g. "
        '\'{"endpoint_url": "http://127.0.0.1:9000", "anon": false}\'; credentials otherwise '
        "come from AWS_* variables (AWS_ENDPOINT_URL...) and profiles; never logged",
    )


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    _add_remote_args(p)
    g = p.add_argument_group("cluster started by image3-dask (when no --scheduler is given)")
    g.add_argument(
        "--cluster",
        choices=["local", "slurm"],
        default="local",
        help="local worker processes (default), or Slurm jobs through dask-jobqueue",
    )
    g.add_argument(
        "--workers", type=int, default=None, help="local worker processes (default: one per core)"
    )
    g.add_argument(
        "--memory-limit",
        default="auto",
        help="memory limit per local worker, e.g. 2GB (default: auto)",
    )
    g.add_argument(
        "--dashboard-address",
        default="127.0.0.1:8787",
        help="where the local dashboard listens (default: 127.0.0.1:8787, localhost only)",
    )
    g.add_argument(
        "--jobqueue-config",
        metavar="FILE.yaml",
        help="dask-jobqueue settings for --cluster slurm (see deploy/slurm/jobqueue.yaml)",
    )
    g.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="Slurm jobs to submit for --cluster slurm (default 1)",
    )
    g.add_argument(
        "--report", metavar="FILE.html", help="save Dask's performance report of the run"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="image3-dask",
        description="JWST level-3 imaging (calwebb_image3) as a distributed Dask pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"image3-dask {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more messages: Dask's errors too (-vv: debug messages)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run",
        help="run the pipeline on an association",
        description="Run tweakreg, skymatch, outlier_detection, resample and "
        "source_catalog. Step parameters: --steps.<step>.<name>=<value> (jwst names).",
    )
    _add_run_inputs(p)
    p.add_argument(
        "--disable-crds-steppars",
        action="store_true",
        help="do not apply CRDS pars-* step parameters (as strun; also STPIPE_DISABLE_CRDS_STEPPARS=true)",
    )
    _add_page_args(p)
    _add_cluster_args(p)

    p = sub.add_parser(
        "strun",
        help="run calwebb_image3 as jwst's strun does (same arguments)",
        description="As `strun calwebb_image3 ASN`: the first argument is calwebb_image3, "
        "jwst.pipeline.Image3Pipeline, a .cfg file (collect_pipeline_cfgs) or an ASDF "
        "parameter file (strun --save-parameters, CRDS pars-image3pipeline); parameters from "
        "the file, then from the command line (--steps.<step>.<name>=<value> or a space).",
    )
    p.add_argument(
        "pipeline", help="calwebb_image3, jwst.pipeline.Image3Pipeline, FILE.cfg or FILE.asdf"
    )
    p.add_argument("input", nargs="?", help="association JSON (or an exposure file)")
    g = p.add_argument_group("strun's options (also spelled --output_dir...)")
    g.add_argument("--output-dir", help="folder for the products (default: .)")
    g.add_argument(
        "--output-file", help="product name: <output_file>_i2d.fits... (default: association's)"
    )
    g.add_argument("--save-results", help="true (products are always written)")
    g.add_argument("--input-dir", help="folder of a relative INPUT")
    g.add_argument("--in-memory", help="accepted; memory is bounded by tiles either way")
    g.add_argument(
        "--save-parameters", metavar="FILE.asdf", help="write the parameters (jwst's ASDF)"
    )
    g.add_argument(
        "--disable-crds-steppars",
        action="store_true",
        help="do not apply CRDS pars-* step parameters (as strun; also STPIPE_DISABLE_CRDS_STEPPARS=true)",
    )
    g.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    g.add_argument("--log-file", help="also write the messages to this file")
    g.add_argument("--log-stream", help="stdout, stderr (default) or null")
    g.add_argument("--logcfg", help="refused: stpipe's deprecated logging file")
    g.add_argument("--debug", action="store_true", help="refused: no pdb on error")
    g.add_argument(
        "-v", "--verbose", dest="strun_verbose", action="store_true", help="debug messages"
    )
    _add_page_args(p)
    _add_cluster_args(p)

    p = sub.add_parser("simulate", help="write simulated JWST cal files and an association")
    p.add_argument(
        "--instrument", choices=["miri", "nircam"], default="miri", help="(default: miri)"
    )
    p.add_argument("--n", type=int, default=4, help="number of exposures (default: 4)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--pattern",
        choices=["dither", "mosaic"],
        default=None,
        help="4-point dither or mosaic grid (default: dither for n<=4, mosaic otherwise)",
    )
    p.add_argument(
        "--shape",
        type=int,
        nargs=2,
        metavar=("NY", "NX"),
        help="detector shape override (default: the instrument's, 1024x1032 for MIRI)",
    )

    p = sub.add_parser(
        "asn",
        help="write an image3 association from a list of exposures",
        description="Writes DIR/FILE (default ./asn.json) with member paths relative to it.",
    )
    p.add_argument("files", nargs="+", help="exposure files (*_cal.fits)")
    p.add_argument("--product-name", required=True, help="name of the products (<name>_i2d.fits)")
    p.add_argument(
        "-o", "--output-dir", default=".", help="folder to write the association in (default: .)"
    )
    p.add_argument("--output", default="asn.json", help="file name (default: asn.json)")
    p.add_argument("--asn-id", default="a3001", help="association id (default: a3001)")

    p = sub.add_parser(
        "config",
        help="write every step's parameters with defaults and help (TOML or jwst's ASDF)",
        description="Writes DIR/FILE (default ./image3.toml): TOML with the help of every "
        "parameter, or jwst's ASDF parameter file when FILE ends in .asdf (jwst reads it: "
        "`strun FILE.asdf ASN`). --from reads a parameter file (ours, .cfg or ASDF) and "
        "--steps.<step>.<name>=<value> changes values, so a file converts both ways.",
    )
    p.add_argument(
        "-o", "--output-dir", default=".", help="folder to write the file in (default: .)"
    )
    p.add_argument(
        "--output", default="image3.toml", help="file name, .toml or .asdf (default: image3.toml)"
    )
    p.add_argument("--from", dest="source", metavar="FILE", help="start from this parameter file")
    p.add_argument(
        "--show",
        metavar="INPUT",
        nargs="?",
        const="",
        help="print every parameter's merged value and where it came from (default, file, "
        "--steps, crds:<file>) instead of writing a file; with an association or exposure, "
        "the CRDS step parameters for its data are included",
    )
    p.add_argument(
        "--disable-crds-steppars",
        action="store_true",
        help="with --show INPUT: leave out the CRDS pars-* step parameters",
    )

    p = sub.add_parser(
        "demo", help="simulate a 4-point MIRI dither, run the pipeline, show the results"
    )
    p.add_argument(
        "--out", default="demo_output", help="folder for data and products (default: demo_output)"
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.add_argument(
        "--shape", type=int, nargs=2, metavar=("NY", "NX"), help="detector shape override (faster)"
    )
    _add_cluster_args(p)
    return _build_service_parsers(parser, sub)


def _add_page_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mosaic-page-port",
        type=int,
        default=0,
        metavar="PORT",
        help="port of the live mosaic page on http://127.0.0.1:PORT/, the tiles coloured by "
        "state (default: a free port, printed next to the dashboard's)",
    )
    p.add_argument("--no-mosaic-page", action="store_true", help="do not serve the mosaic page")


def _add_run_inputs(p: argparse.ArgumentParser) -> None:
    """The inputs, output folder and parameters of ``run`` and ``submit``."""
    p.add_argument("inputs", nargs="+", help="association JSON, exposure files, or glob patterns")
    p.add_argument("-o", "--output-dir", default=None, help="folder for the products (default: .)")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument(
        "--product-name", help="product name when inputs are files rather than an association"
    )
    p.add_argument("--keep-work", action="store_true", help="keep the intermediate work folder")
    add_storage_options(p)


def _build_service_parsers(parser, sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "submit",
        help="hand a run to a running Dask cluster and return at once",
        description="Validate the inputs here, then run the pipeline as a job on the cluster: "
        "it goes on after this command returns. Follow it with `image3-dask status`. "
        "The workers must see the inputs and the output folder under the same paths "
        "(or reach them on object storage: s3://...).",
    )
    _add_run_inputs(p)
    p.add_argument("--job-id", help="job id (default: <product>-<8 hex digits>)")
    p.add_argument(
        "--driver-resource",
        metavar="NAME",
        help="run the job's driver only on workers started with --resources NAME=1",
    )
    p.add_argument(
        "--wait", action="store_true", help="wait for the job to end and print its record"
    )
    p.add_argument(
        "--no-mosaic-page",
        action="store_true",
        help="the job's driver serves no mosaic page (by default it serves one on its worker's "
        "127.0.0.1, linked from `image3-dask serve`)",
    )
    _add_remote_args(p)

    p = sub.add_parser(
        "status",
        help="state and progress of submitted jobs",
        description="Without JOB, list the jobs the scheduler (or the output folder) knows.",
    )
    p.add_argument("job", nargs="?", help="job id (as printed by `image3-dask submit`)")
    p.add_argument(
        "--output-dir",
        help="read the job records kept in this output folder instead of asking the scheduler",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until JOB ends; exit 0 when it succeeded, 1 when it failed",
    )
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls (--wait)")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    _add_remote_args(p)

    p = sub.add_parser("cancel", help="stop a submitted job")
    p.add_argument("job")
    _add_remote_args(p)

    p = sub.add_parser(
        "serve",
        help="a web page of the jobs of a scheduler",
        description="Serve a page listing the jobs the scheduler knows (state, step, progress, "
        "start/end, products, errors, links to the Dask dashboard), refreshed every 2 s. It "
        "listens on 127.0.0.1 and answers only the address printed (it holds a random token) "
        "and Host headers naming this machine. Stop it with Ctrl-C.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default: 127.0.0.1, this machine only); browsers must "
        "still send a Host header of 127.0.0.1, localhost, this address or an --allow-host name",
    )
    p.add_argument("--port", type=int, default=0, help="port (default: a free one, printed)")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name browsers reach the page by (repeat), e.g. the machine's name",
    )
    p.add_argument(
        "--dashboard",
        metavar="URL",
        help="link to the Dask dashboard (default: the scheduler's own, when it has one)",
    )
    _add_remote_args(p)

    p = sub.add_parser(
        "certs",
        help="write a private CA and a TLS certificate for tls:// clusters",
        description="Writes ca.pem, cert.pem and key.pem (mode 0600). One certificate for the "
        "scheduler, the workers and the clients; valid for the given host names/addresses.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--host",
        action="append",
        help="host name or IP address the certificate is valid for (repeat; "
        "default: 127.0.0.1 and localhost)",
    )
    p.add_argument("--days", type=int, default=365)
    return parser


CONFIG_HELP = (
    "parameter file: ours (TOML, see `image3-dask config`), or jwst's .cfg or ASDF "
    "(strun --save-parameters, CRDS pars-*); --steps.* options override it"
)


#: Short flags that never are the value of a ``--steps.<step>.<name> VALUE`` option.
_FLAGS = frozenset({"-v", "-vv", "-q", "-o"})


def split_step_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take out ``--steps.<step>.<name>=<value>`` (or ``... <value>``, as strun) options.

    Returns the other arguments and the overrides as ``steps.<step>.<name>=<value>`` strings.

    Raises
    ------
    ConfigError
        When a ``--steps`` option has no value.
    """
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.lstrip("-").startswith("steps."):
            if "=" not in a:
                nxt = argv[i + 1] if i + 1 < len(argv) else None
                if nxt is None or nxt.startswith("--") or nxt in _FLAGS:
                    raise ConfigError(f"{a}: give a value ({a}=VALUE or {a} VALUE)")
                a = f"{a}={nxt}"
                i += 1
            overrides.append(a)
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def dashed(argv: list[str]) -> list[str]:
    """jwst's underscore spellings of long options (``--output_dir``) as ours (``--output-dir``)."""
    out = []
    for a in argv:
        if a.startswith("--") and not a.startswith("--steps."):
            name, eq, value = a.partition("=")
            a = name.replace("_", "-") + eq + value
        out.append(a)
    return out
