"""The scratch database a benchmark runs in: made anew beside the one DATABASE_URL names."""

import os
import subprocess


def scratch_database(database_url: str, name: str) -> str:
    """Drop and create database `name` on the server of `database_url`, point this
    process's DATABASE_URL at it (before Django starts) and return the server's URL
    (without a database), for `scratch_drop` at the end."""
    server = database_url.rsplit("/", 1)[0]
    scratch_drop(server, name)
    subprocess.run(["psql", server + "/postgres", "-qc", f"CREATE DATABASE {name}"], check=True)
    os.environ["DATABASE_URL"] = f"{server}/{name}"
    return server


def scratch_drop(server: str, name: str) -> None:
    """Drop database `name` on `server` (a URL without a database), connections and all."""
    subprocess.run(
        ["psql", server + "/postgres", "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
        check=True,
        capture_output=True,
    )
