"""Reference tables for the README, rendered from the code (the one source of truth).

``python -m hftpipe_devstack.docs README.md`` (``make docs``) rewrites the blocks
between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``; a unit test
fails when the README's blocks differ from what this module renders.

It lives in the dev tooling because the settings table covers both the workers
and the operator, and the workers never import the operator.
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import typer
from pydantic_settings import BaseSettings

from hftpipe_operator.settings import OperatorSettings
from hftpipe_workers import cli
from hftpipe_workers.contract import REDIS_LAYOUT, Groups, Topics, transactional_id
from hftpipe_workers.observability import REGISTRY
from hftpipe_workers.settings import (
    COMMAND_SETTINGS,
    KafkaSettings,
    RedisSettings,
    WorkerSettings,
    env_names,
)
from hftpipe_workers.snowflake_settings import SnowflakeSettings
from hftpipe_workers.warehouse.queries import MOST_VOLATILE_DAYS
from hftpipe_workers.warehouse.schema import TABLES, markdown_table

WORKER_COMMANDS = ("produce", "process", "load")

SETTINGS_SECTIONS: tuple[tuple[str | None, str, type[BaseSettings]], ...] = (
    ("*", "", WorkerSettings),
    (None, "every worker", KafkaSettings),
    (None, "`hftpipe process`", RedisSettings),
    ("produce", "", COMMAND_SETTINGS["produce"]),
    ("process", "", COMMAND_SETTINGS["process"]),
    ("load", "", COMMAND_SETTINGS["load"]),
    (None, "`hftpipe load --warehouse snowflake://`", SnowflakeSettings),
    ("demo", "", COMMAND_SETTINGS["demo"]),
    (None, "the operator", OperatorSettings),
)
"""The settings the table lists: (command, reader, class). A command's rows are the
options its class declares itself (``*``: those of every worker command), named
by their command line; other classes are read from the environment by ``reader``."""


def metrics_table() -> str:
    """Every exported Prometheus metric."""
    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for family in REGISTRY.collect():
        collector = REGISTRY._names_to_collectors.get(family.name)
        labels = ", ".join(getattr(collector, "_labelnames", ()))
        suffix = "_total" if family.type == "counter" else ""
        rows.append(
            f"| `{family.name}{suffix}` | {family.type} | {labels} | {family.documentation} |"
        )
    return "\n".join(rows)


def redis_table() -> str:
    """The Redis key layout."""
    rows = ["| key | type | content |", "| --- | --- | --- |"]
    rows += [f"| `{key}` | {kind} | {content} |" for key, kind, content in REDIS_LAYOUT]
    return "\n".join(rows)


def topics_table() -> str:
    """Topic, consumer-group and transactional-id names of a job."""
    topics, groups = Topics.for_job("job"), Groups.for_job("job")
    rows = ["| name | what |", "| --- | --- |"]
    rows += [
        f"| `{topics.bars.replace('.job.', '.<job>.')}` | bars, key = symbol |",
        f"| `{topics.metrics.replace('.job.', '.<job>.')}` | per-bar metrics documents |",
        f"| `{topics.deadletter.replace('.job.', '.<job>.')}` | rejected source rows (file, "
        "line, reason), and records the processor or loader could not use (worker, topic, "
        "partition, offset, reason) |",
        f"| `{topics.progress.replace('.job.', '.<job>.')}` | the producer's progress record "
        "(rows total, read, produced; compacted, one partition): the operator's status reads it |",
        f"| `{groups.processor.replace('.job.', '.<job>.')}` | processor consumer group |",
        f"| `{groups.loader.replace('.job.', '.<job>.')}` | loader consumer group |",
        f"| `{groups.reader.replace('.job.', '.<job>.')}` | group id of the readers that "
        "only assign (the producer finding where it stopped, dead-letter reports): "
        "commits nothing |",
        f"| `{transactional_id('job').replace('.job.', '.<job>.')}` | the producer's "
        "transactional id: a second producer of the job fences the first |",
    ]
    return "\n".join(rows)


def _cli_names(command: str) -> dict[str, str]:
    """How each parameter of ``hftpipe <command>`` is spelled on its command line."""
    click_command: Any = getattr(typer.main.get_command(cli.app), "commands")[command]  # noqa: B009
    names = {}
    for param in click_command.params:
        if param.param_type_name == "argument":
            names[param.name] = param.name.upper()
        else:
            names[param.name] = "/".join([*param.opts, *param.secondary_opts])
    return names


def _choices(annotation: Any) -> tuple[Any, ...]:
    """The values of a ``Literal`` annotation (also inside ``X | None``), else none."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(c for arg in get_args(annotation) for c in _choices(arg))
    return ()


def _default(settings: type[BaseSettings], name: str) -> str:
    field = settings.model_fields[name]
    if field.is_required():
        return "required"
    value = field.default
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _meaning(settings: type[BaseSettings], name: str) -> str:
    field = settings.model_fields[name]
    doc = " ".join((field.description or "").split()).replace("``", "`")
    choices = _choices(field.annotation)
    if choices:
        doc += " One of " + ", ".join(f"`{c}`" for c in choices) + "."
    return doc.replace("|", "\\|")


def _rows() -> Iterator[tuple[str, str, str, str]]:
    """(variables, read by, default, meaning) per setting; a variable once per reader."""
    seen: set[tuple[str, str]] = set()
    for command, reader, settings in SETTINGS_SECTIONS:
        own = vars(settings).get("__annotations__", {})
        for name in settings.model_fields:
            if command == "*":
                commands = [c for c in WORKER_COMMANDS if name in _cli_names(c)]
                by = f"`hftpipe {'/'.join(commands)} {_cli_names(commands[0])[name]}`"
                key = "every worker"
            elif command is not None:
                if name not in own:
                    continue  # listed with the class that declares it
                by = key = f"`hftpipe {command} {_cli_names(command)[name]}`"
            else:
                by = key = reader
            variables = " / ".join(f"`{v}`" for v in env_names(settings, name))
            if (variables, key) in seen:
                continue
            seen.add((variables, key))
            yield variables, by, _default(settings, name), _meaning(settings, name)


def settings_table() -> str:
    """Every setting read from the environment: worker options, connections, the operator."""
    rows = ["| variable | read by | default | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| {v} | {by} | {default} | {doc} |" for v, by, default, doc in _rows()]
    return "\n".join(rows)


def warehouse_tables() -> str:
    """The warehouse tables and the README's historical query."""
    parts = [f"`{name}`:\n\n{markdown_table(tbl)}" for name, tbl in TABLES.items()]
    parts.append(f"```sql\n{MOST_VOLATILE_DAYS.rstrip()}\n```")
    return "\n\n".join(parts)


SECTIONS: dict[str, Callable[[], str]] = {
    "metrics": metrics_table,
    "redis": redis_table,
    "topics": topics_table,
    "settings": settings_table,
    "warehouse": warehouse_tables,
}


def render(text: str) -> str:
    """``text`` with every generated block replaced by its current rendering."""
    for name, make in SECTIONS.items():
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.DOTALL
        )
        if not pattern.search(text):
            raise ValueError(f"the README has no <!-- generated:{name} --> block")
        body = make()

        def replace(match: re.Match[str], body: str = body) -> str:
            return match.group(1) + body + "\n" + match.group(2)

        text = pattern.sub(replace, text)
    return text


def main() -> None:
    """Rewrite the generated blocks of the file named on the command line."""
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(render(path.read_text()))


if __name__ == "__main__":
    main()
