"""One source of truth: the README's reference tables and names come from the code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hftpipe_devstack import docs
from hftpipe_workers.contract import (
    REDIS_LAYOUT,
    Groups,
    RedisKeys,
    Topics,
    check_job_id,
    check_job_name,
    job_id,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_reference_tables_match_the_code() -> None:
    text = README.read_text()
    assert docs.render(text) == text, (
        "README.md's generated tables are stale: run "
        "'make docs' (.venv/bin/python -m hftpipe_devstack.docs README.md)"
    )


def test_every_redis_key_function_is_in_the_documented_layout() -> None:
    keys = RedisKeys("j")
    made = [keys.latest("S"), keys.history("S"), keys.symbols, keys.offset(2), keys.state(2)]
    documented = [
        pattern.replace("<job>", "j").replace("<symbol>", "S").replace("<partition>", "2")
        for pattern, _, _ in REDIS_LAYOUT
    ]
    assert made == documented
    assert all(k.startswith("hftpipe:j:") for k in made)


def test_topic_and_group_names() -> None:
    assert Topics.for_job("btc") == Topics(
        "hftpipe.btc.bars", "hftpipe.btc.metrics", "hftpipe.btc.deadletter", "hftpipe.btc.progress"
    )
    assert Groups.for_job("btc").processor == "hftpipe.btc.processor"


@pytest.mark.parametrize("bad", ["", "UPPER", "-x", "x-", "a_b", "x" * 64])
def test_job_names_must_be_dns_labels(bad: str) -> None:
    with pytest.raises(ValueError, match="job name"):
        check_job_name(bad)


def test_same_named_jobs_in_two_namespaces_share_no_topic_group_or_key() -> None:
    a, b = job_id("btc", "team-a"), job_id("btc", "team-b")
    assert (a, b) == ("team-a.btc", "team-b.btc")
    assert job_id("btc") == "btc"  # a worker run by hand
    names = [
        (Topics.for_job(j), Groups.for_job(j), RedisKeys(j).latest("S"), RedisKeys(j).pattern)
        for j in (a, b, "btc")
    ]
    flat = [
        name
        for topics, groups, latest, pattern in names
        for name in (*vars(topics).values(), *vars(groups).values(), latest, pattern)
    ]
    assert len(flat) == len(set(flat))
    assert Topics.for_job(a).bars == "hftpipe.team-a.btc.bars"
    assert RedisKeys(a).latest("BTCUSDT") == "hftpipe:team-a.btc:latest:BTCUSDT"


@pytest.mark.parametrize("bad", ["a.b.c", ".btc", "btc.", "A.btc", "ns.UPPER", "a_b.c"])
def test_job_ids_are_a_name_or_namespace_dot_name(bad: str) -> None:
    with pytest.raises(ValueError, match="job id"):
        check_job_id(bad)
    with pytest.raises(ValueError, match="job id"):
        Topics.for_job(bad)


def test_a_job_name_never_holds_a_dot_nor_a_namespace_one() -> None:
    with pytest.raises(ValueError, match="job name"):
        job_id("a.b", "ns")
    with pytest.raises(ValueError, match="namespace"):
        job_id("btc", "Not.A.Namespace")


def test_the_product_never_imports_the_development_stack() -> None:
    """workers/ and operator/ ship in images and wheels; devstack/ is how this repository
    develops and tests them. An import of it from the product (the demo had two, inside
    functions) is a dependency the product's own packaging does not declare."""
    repo = Path(__file__).resolve().parents[2]
    found = []
    for path in sorted((*repo.glob("workers/src/**/*.py"), *repo.glob("operator/src/**/*.py"))):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [
                f"{path.relative_to(repo)}:{node.lineno}: {name}"  # type: ignore[attr-defined]
                for name in names
                if name.split(".")[0] in {"hftpipe_devstack", "tests"}
            ]
    assert found == []
