"""Reference tables for the README, rendered from the code (the one source of truth).

``python -m hftpipe_workers.docs README.md`` rewrites the blocks between
``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``; a unit test fails
when the README's blocks differ from what this module renders.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pydantic_settings import BaseSettings

from .contract import REDIS_LAYOUT, Groups, Topics
from .observability import REGISTRY
from .settings import JobSettings, KafkaSettings, RedisSettings
from .warehouse.queries import MOST_VOLATILE_DAYS
from .warehouse.schema import TABLES, markdown_table
from .warehouse.snowflake_sink import SnowflakeSettings


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
    """Topic and consumer-group names of a job."""
    topics, groups = Topics.for_job("job"), Groups.for_job("job")
    rows = ["| name | what |", "| --- | --- |"]
    rows += [
        f"| `{topics.bars.replace('.job.', '.<job>.')}` | bars, key = symbol |",
        f"| `{topics.metrics.replace('.job.', '.<job>.')}` | per-bar metrics documents |",
        f"| `{topics.deadletter.replace('.job.', '.<job>.')}` | rejected source rows with "
        "file, line and reason |",
        f"| `{groups.processor.replace('.job.', '.<job>.')}` | processor consumer group |",
        f"| `{groups.loader.replace('.job.', '.<job>.')}` | loader consumer group |",
    ]
    return "\n".join(rows)


def _env_names(cls: type[BaseSettings], name: str) -> str:
    field = cls.model_fields[name]
    alias = field.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return " / ".join(f"`{c}`" for c in choices)
    prefix = str(cls.model_config.get("env_prefix", ""))
    return f"`{(prefix + (field.alias or name)).upper()}`"


def settings_table() -> str:
    """Every setting read from the environment."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for cls in (JobSettings, KafkaSettings, RedisSettings, SnowflakeSettings):
        for name, field in cls.model_fields.items():
            default = "" if field.default in (None, "") else f"`{field.default}`"
            doc = (field.description or "").replace("\n", " ").replace("``", "`")
            rows.append(f"| {_env_names(cls, name)} | {default} | {doc} |")
    return "\n".join(rows)


def warehouse_tables() -> str:
    """The warehouse tables and the README's historical query."""
    parts = [f"`{name}`:\n\n{markdown_table(tbl)}" for name, tbl in TABLES.items()]
    parts.append(f"```sql\n{MOST_VOLATILE_DAYS.rstrip()}\n```")
    return "\n\n".join(parts)


SECTIONS = {
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
