"""What the operator knows of the workers' interface, read from the workers' own code.

The ``hftpipe`` commands, their options' environment variables and defaults,
and the connection settings' variables are looked up here in the workers'
pydantic-settings classes (:mod:`hftpipe_workers.settings`: one class per
command, from which the command's options are generated too), never spelled by
hand: if a worker renames a variable, building a manifest fails instead of
setting a variable nobody reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from pydantic_settings import BaseSettings

from hftpipe_workers.settings import (
    COMMAND_SETTINGS,
    JobSettings,
    KafkaSettings,
    RedisSettings,
    env_names,
)
from hftpipe_workers.snowflake_settings import SnowflakeSettings

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


def command_settings(command: str | Callable[..., Any]) -> type[BaseSettings]:
    """The settings class of ``hftpipe <command>`` (a name, or the ``hftpipe_workers.cli``
    function), whose fields are the command's options."""
    name = command if isinstance(command, str) else command.__name__
    return COMMAND_SETTINGS[name]


def settings_default(settings: type[BaseSettings], name: str) -> Any:
    """The default of a field of one of the workers' settings classes."""
    return settings.model_fields[name].default


def cli_default(command: str | Callable[..., Any], param: str) -> Any:
    """The default of option ``param`` of a ``hftpipe`` command (e.g. ``cli.produce``)."""
    return settings_default(command_settings(command), param)


def cli_params(command: str) -> dict[str, Any]:
    """The options and arguments of ``hftpipe <command>`` (settings fields), by Python name."""
    return dict(command_settings(command).model_fields)


def settings_envvar(settings: type[BaseSettings], name: str) -> str:
    """The (first) environment variable of a settings field, as pydantic-settings reads it."""
    return env_names(settings, name)[0]


def cli_envvar(command: str, param: str) -> str:
    """The environment variable that sets ``param`` of ``hftpipe <command>``."""
    settings = command_settings(command)
    if param not in settings.model_fields:
        raise LookupError(f"hftpipe {command} has no option {param!r}")
    names = env_names(settings, param)
    if len(names) != 1:
        raise LookupError(f"hftpipe {command}: {param} has no single environment variable")
    return names[0]


def cli_envvars(command: str) -> set[str]:
    """Every variable ``hftpipe <command>`` reads through its options."""
    settings = command_settings(command)
    return {v for name in settings.model_fields for v in env_names(settings, name)}


def all_envvars() -> set[str]:
    """Every variable some worker reads: command options and settings fields."""
    names = {v for command in COMMANDS.values() for v in cli_envvars(command)}
    for settings in SETTINGS_CLASSES:
        names.update(settings_envvar(settings, field) for field in settings.model_fields)
    return names


METRICS_PORTS: Final[dict[Worker, int]] = {
    worker: cli_default(command, "metrics_port") for worker, command in COMMANDS.items()
}
"""Port of ``/metrics``, ``/healthz`` and ``/readyz`` per worker (the commands' defaults)."""
