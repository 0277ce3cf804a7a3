"""``hts``: run, validate, inspect and export screening campaigns.

The batch-system commands (``submit``, ``cancel``, ``sites``) live in
:mod:`hts.cli.batch`; ``python -m hts.cli`` runs :func:`main`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from hts import render
from hts.render import console, out

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    help="High-throughput screening of crystalline materials: MLIP prefilter → Zarr store.",
)

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo.yaml"


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _load(path: Path):
    from hts.spec import CampaignError, load_campaign

    try:
        return load_campaign(path)
    except CampaignError as err:
        console.print(f"[bold red]invalid campaign[/]\n{err}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def validate(campaign: Annotated[Path, typer.Argument(help="Campaign YAML file.")]) -> None:
    """Check a campaign file (fields, candidate source, site) without running it."""
    from hts.campaign import preflight, results_hash
    from hts.candidates import EmptySourceError
    from hts.execution.sites import SiteError, load_site
    from hts.spec import CampaignError

    c = _load(campaign)
    try:
        preflight(c)
        load_site(c.site)
    except (EmptySourceError, CampaignError, SiteError) as err:
        _fail(f"{campaign}: {err}")
    out.print(
        f"[green]ok[/] {campaign}: campaign {c.name!r}, hash {results_hash(c)}", highlight=False
    )
    if c.candidates.kind == "random":
        from hts.candidates import open_source

        space = open_source(c)
        skipped = len(space.skipped())
        out.print(
            f"  random: {space.count():,} crystals in {len(space.strata()) - skipped:,} "
            f"(composition, formula units, group) combinations; {skipped:,} more cannot hold "
            "their composition (skipped)",
            highlight=False,
        )
    elif c.candidates.kind == "enumeration":
        from hts.candidates import open_source

        out.print(
            f"  enumeration: about {open_source(c).upper_bound():,} orderings", highlight=False
        )


def _quiet_logging() -> None:
    """Warnings and errors on the console; Parsl's chatter goes to its run_dir log only.

    Idempotent: the console handler is added to the root logger once per
    process, however many commands (or tests) call this.
    """
    root = logging.getLogger()
    if not any(getattr(h, "_hts_console", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._hts_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    logging.getLogger("parsl").propagate = False
    import warnings

    # TorchScript compiling e3nn/sevenn modules in worker threads: noise, not a problem
    warnings.filterwarnings("ignore", message=".*TorchScript type system.*")
    warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")


@app.command()
def run(
    campaign: Annotated[
        Path | None, typer.Argument(help="Campaign YAML file (default: the shipped demo campaign).")
    ] = None,
    site: Annotated[
        str | None, typer.Option(help="Site name or file; overrides the campaign's.")
    ] = None,
    store: Annotated[
        Path | None, typer.Option(help="Store path; overrides the campaign's.")
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="parsl (default), mpi (under mpiexec/srun: rank 0 drives) or serial (in-process)."
        ),
    ] = "parsl",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
    top: Annotated[int, typer.Option(help="Most stable candidates to list at the end.")] = 10,
    allocation: Annotated[
        bool,
        typer.Option(
            "--allocation",
            help="Inside a batch allocation (hts submit's allocation mode): workers start on the "
            "job's nodes instead of in new batch jobs.",
        ),
    ] = False,
) -> None:
    """Run a campaign, or resume it: finished chunks in the store are skipped."""
    from hts.api import execute, incomplete
    from hts.campaign import RunError
    from hts.candidates import EmptySourceError
    from hts.execution.sites import SiteError
    from hts.spec import CampaignError
    from hts.store import StoreError

    if engine == "mpi":  # ranks 1…N-1 only run tasks: no store, no output
        from hts.execution.mpi import MPIEngine, mpi_rank

        if mpi_rank() != 0:
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
            _quiet_logging()
            MPIEngine().serve()
            return
    if engine not in ("parsl", "mpi", "serial"):
        _fail(f"--engine {engine}: unknown (known: parsl, mpi, serial)")
    path = campaign or DEMO
    c = _load(path)
    if site:
        c = c.model_copy(update={"site": site})
    store_path = store or Path(c.store)
    _quiet_logging()
    _stop_on_sigterm()
    console.print(f"campaign [bold]{c.name}[/] ({path}) → store {store_path}", highlight=False)
    t0 = time.time()
    try:
        with render.Display(c.name, quiet) as display:
            stats = execute(
                c,
                store_path=store_path,
                engine=engine,
                allocation=allocation,
                progress=display,
                on_engine=lambda eng: console.print(f"engine: {eng.describe()}", highlight=False),
            )
    except (EmptySourceError, CampaignError, StoreError, SiteError) as err:
        _fail(str(err))
    except RunError as err:
        _fail(str(err), code=1)
    except KeyboardInterrupt:
        render.print_interrupted(store_path)
        raise typer.Exit(130) from None
    except OSError as err:  # the disk filled up, the store became read-only, ...
        if str(err.filename or "").startswith(f"{store_path}.parsl"):  # the engine's run dir
            _fail(f"cannot write here ({err.strerror}: {err.filename}); give a writable --store")
        _fail(
            f"cannot go on: {err.strerror or err}{f' ({err.filename})' if err.filename else ''}. "
            "Everything committed so far is kept; fix the cause and run the same command "
            "again to resume",
            code=1,
        )
    console.print(
        f"finished in {render.hms(time.time() - t0)}: {stats.done} screened this run, {stats.resumed} resumed from the store",
        highlight=False,
    )
    if stats.worker_s > 0:
        console.print(
            f"worker time {stats.worker_s:.1f} s, of which model calls {stats.model_s:.1f} s "
            f"({100 * stats.model_s / stats.worker_s:.1f} %)",
            highlight=False,
        )
    render.print_status(store_path, top=top)
    if why := incomplete(stats):
        console.print(f"[bold yellow]incomplete:[/] {why}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _stop_on_sigterm() -> None:
    """SIGTERM (scancel, the walltime's warning signal) stops like Ctrl-C: the engine closes
    and cancels its worker blocks, and the store keeps everything committed so far."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


@app.command()
def distill(
    config: Annotated[
        Path, typer.Argument(help="Distillation YAML file (see workflows/distill-demo.yaml).")
    ],
    engine: Annotated[
        str,
        typer.Option(
            help="parsl (default), mpi (under mpiexec/srun: rank 0 drives) or serial (in-process)."
        ),
    ] = "parsl",
    site: Annotated[
        str | None, typer.Option(help="Site name or file; overrides the campaign's.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
) -> None:
    """Train a fast MACE student from the teacher on a campaign's chemistry, and report how good it is."""
    from hts.distill.config import load_distill
    from hts.distill.pipeline import run_distill
    from hts.distill.train import TrainingError
    from hts.execution import make_engine
    from hts.execution.sites import SiteError
    from hts.models.batched import ModelFileError
    from hts.spec import CampaignError

    try:
        cfg = load_distill(config)
        campaign = cfg.load_campaign()
    except CampaignError as err:
        console.print(f"[bold red]invalid distillation[/]\n{err}", highlight=False)
        raise typer.Exit(2) from None
    # one thread per worker; training sets its own count in its subprocess
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    _quiet_logging()
    out_dir = cfg.path(cfg.output)
    console.print(f"distillation [bold]{cfg.name}[/] ({config}) → {out_dir}", highlight=False)
    try:
        eng = make_engine(
            engine, site or campaign.site, out_dir / "parsl", retries=campaign.limits.task_retries
        )
    except (SiteError, ValueError) as err:
        _fail(str(err))
    last = [0.0, ""]

    def show(p) -> None:
        now = time.time()
        if quiet or (now - last[0] < 5 and p.phase == last[1]):
            return
        last[0], last[1] = now, p.phase
        count = f" {p.done}/{p.total}" if p.total else ""
        console.print(f"\\[{cfg.name}] {p.phase}{count} {p.detail}", highlight=False)

    t0 = time.time()
    try:
        report = run_distill(cfg, eng, show)
    except (CampaignError, TrainingError, ModelFileError, ValueError) as err:
        _fail(str(err))
    finally:
        eng.close()
    render.print_distilled(report, out_dir, cfg.training.dtype, time.time() - t0)


@app.command()
def status(
    store: Annotated[Path, typer.Argument(help="A campaign's Zarr store.")],
    top: Annotated[int, typer.Option(help="Most stable candidates to list.")] = 10,
    plot: Annotated[
        Path | None,
        typer.Option(help="Also write the funnel plot (with the MLIP-vs-DFT parity) to this PNG."),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print everything as one JSON object (funnel, audit, economics, failures, best "
            "candidates, DFT, batch jobs) for scripts and notebooks.",
        ),
    ] = False,
) -> None:
    """Funnel counts, rates, failures by reason and the best candidates of a store (safe while it runs)."""
    if as_json:
        try:
            print(render.status_json(store, top=top))
        except FileNotFoundError as err:
            _fail(str(err))
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            _fail(
                f"{store}: cannot read it ({type(err).__name__}: {err}); `hts verify {store}` checks it"
            )
        return
    try:
        render.print_status(store, top=top)
        render.print_jobs(store)
        from hts.store import verify as check

        for d in check(store, decode=False):  # a glance: missing chunk files
            console.print(f"[bold red]damaged:[/] {d} (`hts verify {store}`)", highlight=False)
        if plot is not None:
            from hts.report import plot_store
            from hts.store import open_dataset

            out.print(f"plot: {plot_store(open_dataset(store), plot)}", highlight=False)
    except FileNotFoundError as err:
        _fail(str(err))
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # a damaged store
        _fail(
            f"{store}: cannot read it ({type(err).__name__}: {err}); `hts verify {store}` checks it"
        )


@app.command()
def verify(store: Annotated[Path, typer.Argument(help="A campaign's Zarr store.")]) -> None:
    """Check a store is whole: every committed chunk present and readable, the atom index sound."""
    from hts.store import verify as check

    try:
        damage = check(store)
    except FileNotFoundError as err:
        _fail(str(err))
    if not render.print_verified(store, damage):
        _fail(
            f"{store}: {len(damage)} damaged part(s); restore the store from a copy, or start over"
        )


@app.command()
def export(
    store: Annotated[Path, typer.Argument(help="A campaign's Zarr store.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("export"),
    all_ok: Annotated[
        bool, typer.Option("--all", help="Structures of every ok candidate, not only survivors.")
    ] = False,
    xrd: Annotated[
        int,
        typer.Option(
            min=0,
            help="Powder XRD (Cu Kα), space group and conventional cell of at most this many "
            "DFT-validated candidates (without a validate stage: final survivors), most stable "
            "first, in OUT/xrd/; 0: none.",
        ),
    ] = 100,
) -> None:
    """Survivors' structures as CIF and extxyz, a CSV summary of every candidate, a plot, and
    for the validated (or final) candidates their XRD patterns, space groups and conventional cells."""
    from hts.report import export_store, export_xrd
    from hts.store import verify as check

    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"--out {out_dir}: is a file; give a folder (it is created if missing)")
    try:
        # a lost array or chunk would be exported as missing values, silently: refuse instead
        if damage := check(store, decode=False):
            _fail(
                f"{store}: damaged ({'; '.join(map(str, damage[:3]))}"
                f"{'; …' if len(damage) > 3 else ''}); nothing exported. `hts verify {store}` "
                "lists every damaged part"
            )
        n, csv = export_store(store, out_dir, survivors_only=not all_ok)
        n_xrd, n_final, index = export_xrd(store, out_dir, limit=xrd)
    except FileNotFoundError as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"--out {out_dir}: cannot write there: {err.strerror or err}")
    out.print(
        f"wrote {n} structures to {out_dir}/structures and {out_dir}/structures.extxyz; summary {csv}"
    )
    if index is not None:
        more = f" (the {xrd} most stable of {n_final}; --xrd N for more)" if n_final > xrd else ""
        out.print(
            f"XRD patterns, space groups and conventional cells of {n_xrd} candidates{more}: {index}"
        )


@app.command()
def dashboard(
    store: Annotated[Path, typer.Argument(help="A campaign's Zarr store (running or finished).")],
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="TCP port (0: any free port).")
    ] = 8050,
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback requires the token.")
    ] = "127.0.0.1",
    token: Annotated[
        str | None,
        typer.Option(help="Access token for a non-loopback bind (default: a random one)."),
    ] = None,
) -> None:
    """Serve a live web dashboard of a store: funnel, throughput, failures, plots, best candidates."""
    from hts.dashboard.server import Dashboard

    try:
        d = Dashboard(store, host=host, port=port, token=token)
    except (FileNotFoundError, OSError) as err:
        _fail(str(err))
    out.print(f"dashboard of {store}: {d.url}", highlight=False, soft_wrap=True)
    if d.token:
        out.print("bound beyond loopback: requests without the token are refused", highlight=False)
    try:
        d.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        d.close()


@app.command()
def report(
    store: Annotated[Path, typer.Argument(help="A campaign's Zarr store.")],
    html: Annotated[Path, typer.Option("--html", help="Write the dashboard as one HTML file.")],
    top: Annotated[int, typer.Option(help="Best candidates in the table.")] = 50,
) -> None:
    """The dashboard's views as one self-contained, offline HTML file to share."""
    from hts.dashboard.html import write_html

    try:
        path = write_html(store, html, top=top)
    except FileNotFoundError as err:
        _fail(str(err))
    out.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", highlight=False)


# the batch-system commands (submit, cancel, sites) register themselves on ``app``
from hts.cli import batch  # noqa: E402, F401


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted; run the same command again to resume")
        sys.exit(130)
