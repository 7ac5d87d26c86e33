"""What the operator knows of the workers' interface, read from the workers' own code.

The ``hftpipe`` commands, their options' environment variables and defaults,
and the settings classes' variables are looked up here, never spelled by hand:
if a worker renames a variable, building a manifest fails instead of setting a
variable nobody reads.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache
from typing import Any, Final

import typer
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from hftpipe_workers import cli
from hftpipe_workers.settings import JobSettings, KafkaSettings, RedisSettings
from hftpipe_workers.warehouse.snowflake_sink import SnowflakeSettings

from .labels import Worker

COMMANDS: Final[dict[Worker, str]] = {
    "producer": "produce",
    "processor": "process",
    "loader": "load",
}
"""The ``hftpipe`` subcommand each worker runs."""

SETTINGS_CLASSES: Final[tuple[type[BaseSettings], ...]] = (
    JobSettings,
    KafkaSettings,
    RedisSettings,
    SnowflakeSettings,
)
"""The workers' pydantic-settings classes (connection settings, read from the environment)."""


def cli_default(command: Callable[..., Any], param: str) -> Any:
    """The default of ``param`` of a ``hftpipe`` command, as its typer signature declares it."""
    return inspect.signature(command).parameters[param].default


def settings_default(settings: type[BaseSettings], name: str) -> Any:
    """The default of a field of one of the workers' settings classes."""
    return settings.model_fields[name].default


@cache
def _commands() -> dict[str, Any]:
    # typer builds (vendored) click commands; read them by attribute, not by click's types.
    commands = getattr(typer.main.get_command(cli.app), "commands", None)
    if not isinstance(commands, dict):
        raise TypeError("hftpipe_workers.cli.app is expected to have subcommands")
    return dict(commands)


def cli_params(command: str) -> dict[str, Any]:
    """The options and arguments of ``hftpipe <command>``, by Python name."""
    return {p.name: p for p in _commands()[command].params if p.name}


def cli_envvar(command: str, param: str) -> str:
    """The environment variable that sets ``param`` of ``hftpipe <command>``."""
    envvar = cli_params(command)[param].envvar
    if not isinstance(envvar, str):
        raise LookupError(f"hftpipe {command}: {param} has no single environment variable")
    return envvar


def settings_envvar(settings: type[BaseSettings], name: str) -> str:
    """The (first) environment variable of a settings field, as pydantic-settings reads it."""
    alias = settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    if isinstance(alias, str):
        return alias
    config: dict[str, Any] = dict(settings.model_config)
    return str(config.get("env_prefix", "")) + name.upper()


def cli_envvars(command: str) -> set[str]:
    """Every variable ``hftpipe <command>`` reads through its options."""
    return {
        v
        for p in cli_params(command).values()
        for v in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])
    }


def all_envvars() -> set[str]:
    """Every variable some worker reads: command options and settings fields."""
    names = {v for command in COMMANDS.values() for v in cli_envvars(command)}
    for settings in SETTINGS_CLASSES:
        names.update(settings_envvar(settings, field) for field in settings.model_fields)
    return names


METRICS_PORTS: Final[dict[Worker, int]] = {
    "producer": cli_default(cli.produce, "metrics_port"),
    "processor": cli_default(cli.process, "metrics_port"),
    "loader": cli_default(cli.load, "metrics_port"),
}
"""Port of ``/metrics``, ``/healthz`` and ``/readyz`` per worker (the CLI's defaults)."""
