"""``hts submit``, ``hts cancel`` and ``hts sites``: the commands that talk to a batch system.

Registered on ``hts.cli.app`` when :mod:`hts.cli` is imported; kept apart so
the module that runs and inspects campaigns stays readable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hts import render
from hts.cli import _fail, _load, app
from hts.render import console, out


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
