"""One source of truth: the README's reference tables and names come from the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from hftpipe_devstack import docs
from hftpipe_workers.contract import REDIS_LAYOUT, Groups, RedisKeys, Topics, check_job_name

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
