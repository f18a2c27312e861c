"""`dicomnode jobs`: the on-arrival job queue, listed and retried."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dicomnode.node.cli import common as c
from dicomnode.node.cli.common import ConfigOpt, DbOpt, JsonOpt, StorageOpt, WideOpt

STATES = ("pending", "running", "failed", "done")
jobs_app = typer.Typer(help="The on-arrival job queue: list, retry.", no_args_is_help=False)


@jobs_app.callback(invoke_without_command=True)
def jobs(ctx: typer.Context,
         state: Annotated[Optional[str], typer.Option("--state", help="pending | running | failed | done")] = None,
         limit: Annotated[int, typer.Option("--limit", help="newest N jobs")] = 1000,
         wide: WideOpt = False, config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None,
         json_out: JsonOpt = False) -> None:
    """List jobs, newest first, with the queue depth."""
    if ctx.invoked_subcommand is not None:
        return
    if state is not None and state not in STATES:
        c.error(f"--state {state!r}: pending, running, failed or done")
        raise typer.Exit(c.EXIT_USAGE)
    q = c.archive(c.settings(config, storage=storage, db=db)).jobs
    rows, depth = q.list(state, limit), q.depth()
    if json_out:
        c.emit_json({"depth": depth, "jobs": rows})
        return
    styles = {"failed": "red", "done": "green", "running": "yellow"}
    c.out.print(c.table("jobs: " + ", ".join(f"{v} {k}" for k, v in depth.items()),
                        ["id", "action", "state", "attempts", "SOPInstanceUID", "updated", "last error / note"],
                        ([str(r["id"]), r["action"], f"[{styles[r['state']]}]{r['state']}[/]" if r["state"] in styles
                          else r["state"], str(r["attempts"]), r["sop_instance_uid"], r["updated_at"],
                          r["last_error"] or ""] for r in rows), wide))


@jobs_app.command("retry")
def jobs_retry(job_id: Annotated[Optional[int], typer.Argument(help="job id")] = None,
               all_failed: Annotated[bool, typer.Option("--all-failed", help="every failed job")] = False,
               config: ConfigOpt = None, storage: StorageOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Queue a failed (or done) job again, or every failed job."""
    if (job_id is None) == (not all_failed):
        c.error("give a job id or --all-failed")
        raise typer.Exit(c.EXIT_USAGE)
    n = c.archive(c.settings(config, storage=storage, db=db)).jobs.retry(job_id, all_failed)
    if json_out:
        c.emit_json({"requeued": n})
    else:
        c.out.print(f"{n} job(s) queued again")
    raise typer.Exit(c.EXIT_OK if n or all_failed else c.EXIT_FAIL)


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
