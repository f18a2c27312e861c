"""`dicomnode hash-password`: a password hash for `[web] users` (HTTP Basic authentication)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dicomnode.node.cli import common as c


def hash_password(
    name: Annotated[str, typer.Argument(help="the user name")],
    password: Annotated[Optional[str], typer.Option("--password", help="the password (asked for if not given)")] = None,
) -> None:
    """Print NAME:HASH for [web] users and [security] users (PBKDF2-SHA256, salted); the password itself is stored nowhere."""
    from dicomnode.node.identity import hash_password as make

    if ":" in name or not name:
        c.error("a user name without ':'")
        raise typer.Exit(c.EXIT_USAGE)
    secret = password if password is not None else typer.prompt("password", hide_input=True,
                                                                confirmation_prompt=True)
    c.out.print(f"{name}:{make(secret)}", markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("hash-password")(hash_password)
