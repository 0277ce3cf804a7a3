"""``hts``: run, validate, inspect and export screening campaigns."""

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

DEMO = Path(__file__).resolve().parent / "data" / "demo.yaml"


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
    from hts.campaign import RunError, run_campaign
    from hts.candidates import EmptySourceError
    from hts.execution import make_engine
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
    path = campaign or DEMO
    c = _load(path)
    if site:
        c = c.model_copy(update={"site": site})
    store_path = store or Path(c.store)
    # threads must be fixed before torch is first imported in this process
    os.environ.setdefault("OMP_NUM_THREADS", str(c.stages.prefilter.model.threads))
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    _quiet_logging()
    _stop_on_sigterm()
    console.print(f"campaign [bold]{c.name}[/] ({path}) → store {store_path}", highlight=False)
    try:
        eng = make_engine(
            engine,
            c.site,
            Path(f"{store_path}.parsl"),
            retries=c.limits.task_retries,
            store=store_path,
            allocation=allocation,
        )
    except (SiteError, ValueError) as err:
        _fail(str(err))
    except OSError as err:  # the run directory beside the store cannot be made
        _fail(f"cannot write here ({err.strerror}: {err.filename}); give a writable --store")
    console.print(f"engine: {eng.describe()}", highlight=False)
    t0 = time.time()
    try:
        with render.Display(c.name, quiet) as display:
            stats = run_campaign(c, eng, store_path=store_path, progress=display)
    except (EmptySourceError, CampaignError, StoreError, SiteError) as err:
        _fail(str(err))
    except RunError as err:
        _fail(str(err), code=1)
    except KeyboardInterrupt:
        render.print_interrupted(store_path)
        raise typer.Exit(130) from None
    except OSError as err:  # the disk filled up, the store became read-only, ...
        _fail(
            f"cannot go on: {err.strerror or err}{f' ({err.filename})' if err.filename else ''}. "
            "Everything committed so far is kept; fix the cause and run the same command "
            "again to resume",
            code=1,
        )
    finally:
        eng.close()
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
    if render.print_incomplete(stats):
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

    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"--out {out_dir}: is a file; give a folder (it is created if missing)")
    try:
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


@app.command()
def submit(
    campaign: Annotated[Path, typer.Argument(help="Campaign YAML file.")],
    site: Annotated[
        str | None, typer.Option(help="Site name or file (default: the campaign's).")
    ] = None,
    store: Annotated[
        Path | None, typer.Option(help="Store path; overrides the campaign's.")
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="pilot | allocation | mpi (default: the site's submit.mode)."),
    ] = None,
    nodes: Annotated[int | None, typer.Option(help="Nodes (allocation and mpi modes).")] = None,
    walltime: Annotated[str | None, typer.Option(help="Driver job walltime, HH:MM:SS.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write and print the batch script, submit nothing.")
    ] = False,
) -> None:
    """Submit the campaign's driver as a batch job (Slurm or PBS Pro) generated from the site.

    Submitting again after the job ends (walltime, cancel, node failure) resumes the store.
    """
    from hts.campaign import preflight
    from hts.candidates import EmptySourceError
    from hts.execution.sites import SiteError
    from hts.execution.submit import SubmitError
    from hts.execution.submit import submit as do_submit
    from hts.spec import CampaignError

    c = _load(campaign)
    if mode not in (None, "pilot", "allocation", "mpi"):
        _fail(f"--mode {mode!r}: use pilot, allocation or mpi")
    try:
        preflight(c)
        sub, script = do_submit(
            site or c.site,
            campaign,
            store or Path(c.store),
            mode=mode,
            nodes=nodes,
            walltime=walltime,
            dry_run=dry_run,
        )
    except (EmptySourceError, CampaignError, SiteError, SubmitError, ValueError) as err:
        _fail(str(err))
    if sub is None:
        out.print(script.read_text(), highlight=False, markup=False, soft_wrap=True)
        console.print(f"batch script written to {script} (not submitted)", highlight=False)
        return
    out.print(
        f"submitted {c.name!r} as {sub.scheduler} job {sub.job_id} ({sub.mode} mode)\n"
        f"script: {script}\nlog:    {script.parent}/driver-{sub.job_id}.out\n"
        f"follow: hts status {sub.store}   stop: hts cancel {sub.store}",
        highlight=False,
    )


@app.command()
def cancel(store: Annotated[Path, typer.Argument(help="The submitted campaign's store.")]) -> None:
    """Cancel a submitted campaign: its driver job and every worker block it started."""
    from hts.execution.submit import SubmitError
    from hts.execution.submit import cancel as do_cancel

    try:
        ids = do_cancel(store)
    except SubmitError as err:
        _fail(str(err))
    out.print(
        f"cancelled job(s) {', '.join(ids)}" if ids else "no queued or running job of this store",
        highlight=False,
    )


sites_app = typer.Typer(help="List sites and check one before submitting.", no_args_is_help=True)
app.add_typer(sites_app, name="sites")


@sites_app.command("list")
def sites_list() -> None:
    """The sites found (./sites, the project's sites/), with their descriptions."""
    from hts.execution.sites import SiteError, load_site, site_file, site_names

    rows = []
    for name in site_names():
        try:
            desc = load_site(name, missing=[]).description
        except SiteError as err:
            desc = f"[red]invalid:[/] {err}"
        rows.append((name, desc, str(site_file(name))))
    render.print_sites(rows)


@sites_app.command("check")
def sites_check(
    site: Annotated[str, typer.Argument(help="Site name or file.")],
    mode: Annotated[str | None, typer.Option(help="Submission mode to show.")] = None,
) -> None:
    """Print the resolved Parsl config and the driver job of a site, and what is missing."""
    from hts.execution.checks import check_site
    from hts.execution.sites import SiteError

    try:
        r = check_site(site, mode)
    except SiteError as err:
        _fail(str(err))
    render.print_check(r)
    if not r.ok:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted; run the same command again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
