"""Names shared by every worker, the operator, the charts and the README: defined once here.

- Kafka topics of a job,
- the Redis key layout,
- the consumer group ids.

Anything that needs one of these names imports it from here; tests check that
the README and the charts agree with this module.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, Final

PREFIX = "hftpipe"
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_NAME_RE = re.compile(rf"^{_LABEL}$")
_JOB_ID_RE = re.compile(rf"^({_LABEL}\.)?{_LABEL}$")


_LABEL_RULE = "1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"


def _checked(pattern: re.Pattern[str], value: str, what: str, rule: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"{what} {value!r} is not valid: {rule}")
    return value


def check_namespace(namespace: str) -> str:
    """A Kubernetes namespace name is a DNS label."""
    return _checked(_NAME_RE, namespace, "namespace", f"use {_LABEL_RULE}")


def check_job_name(job: str) -> str:
    """A job name is a DNS label (it names Kubernetes objects, topics and keys)."""
    return _checked(_NAME_RE, job, "job name", f"use {_LABEL_RULE} (it becomes a Kubernetes name)")


def check_job_id(job: str) -> str:
    """A :func:`job_id`: a job name, or ``<namespace>.<name>``."""
    return _checked(
        _JOB_ID_RE, job, "job id", f"a job name, or <namespace>.<name>, each {_LABEL_RULE}"
    )


def job_id(job: str, namespace: str | None = None) -> str:
    """What a job's topics, consumer groups, Redis keys and warehouse rows are named by.

    ``<namespace>.<job>`` for a ReplayJob (the operator sets ``HFTPIPE_NAMESPACE``):
    two jobs of the same name in two namespaces that share a Kafka cluster, a Redis
    or a warehouse must never read or overwrite each other's data. Just ``<job>`` for
    a worker run by hand. Unambiguous because a namespace holds no dot. Metric labels
    keep the plain name: Prometheus adds the namespace of the pod itself.
    """
    check_job_name(job)
    return job if namespace is None else f"{check_namespace(namespace)}.{job}"


@dataclass(frozen=True)
class Topics:
    """The Kafka topics of one replay job."""

    bars: str
    metrics: str
    deadletter: str
    progress: str
    """One partition, compacted: the producer's latest :class:`ProducerProgress`."""

    @classmethod
    def for_job(cls, job: str) -> Topics:
        """``hftpipe.<job>.bars``, ``.metrics``, ``.deadletter`` and ``.progress``
        (``<job>`` is a :func:`job_id`)."""
        check_job_id(job)
        return cls(
            bars=f"{PREFIX}.{job}.bars",
            metrics=f"{PREFIX}.{job}.metrics",
            deadletter=f"{PREFIX}.{job}.deadletter",
            progress=f"{PREFIX}.{job}.progress",
        )


PROGRESS_TOPIC_CONFIG: Final[dict[str, str]] = {"cleanup.policy": "compact"}
"""Topic config of the progress topic: only the latest record per key matters."""

JOB_TOPIC_CONFIG: Final[dict[str, str]] = {"retention.ms": "-1", "retention.bytes": "-1"}
"""Every job topic keeps its records until the job is deleted (``cleanup.deleteTopics``).

Set explicitly rather than left to the broker's default (7 days on a stock broker):
the producer's resume, the processors' state in Redis and the progress in the status
all read the topics from offset 0, and a record deleted before a worker used it is
data lost."""


@dataclass(frozen=True)
class ProducerProgress:
    """The producer's progress, as it writes it to the progress topic (key ``producer``).

    Written about once a second and once more, with ``done`` true, after every
    bar was delivered. The operator reads the latest one for the ReplayJob's
    ``status.progress`` (rows in the source and rows read), so progress comes
    from Kafka itself and not from scraping the producer's metrics.

    Counts are of this source: ``rows_read`` starts again from 0 when a producer
    is restarted (it reads the file again and skips what Kafka already holds), and
    ``produced`` counts the bars of the source in the bars topic, from this run or
    an earlier one.
    """

    rows_total: int
    """Data rows in the source file; 0 until counted (or when counting is off)."""
    rows_read: int
    """Source rows handled so far (sent, already in Kafka, set aside or out of range)."""
    produced: int
    """Bars of the source in the bars topic so far."""
    dead_lettered: int
    """Rows of the source set aside to the dead-letter topic so far."""
    out_of_range: int
    """Rows outside the replay's time range so far."""
    done: bool
    """The producer read the whole source and every record was delivered."""
    updated_at: str
    """When the producer wrote this, RFC 3339 in UTC."""
    # How the source is read and what it holds so far (``hftpipe inspect`` prints the
    # same). Optional: a record of an older producer has none of them.
    format: str = ""
    """How the file is read, e.g. ``CSV text (utf-8), ';'-separated, a header line``."""
    layout: str = ""
    """Its layout: which column is which."""
    time: str = ""
    """The time column and the format its values are read with."""
    time_zone: str = ""
    """The zone of times written without an offset."""
    first_event: str = ""
    """The earliest event time of the bars read so far, RFC 3339 in UTC ("": none yet)."""
    last_event: str = ""
    """The latest event time of the bars read so far ("": none yet)."""

    KEY: ClassVar[bytes] = b"producer"
    """The record key (the topic is compacted by key)."""

    def encode(self) -> bytes:
        """The record value: a small JSON object (optional fields left at their default
        are left out)."""
        doc = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.default is MISSING or getattr(self, f.name) != f.default
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes | None) -> ProducerProgress:
        """Parse a record value; unknown fields are ignored (a newer producer may add some).

        Raises ``ValueError`` on anything that is not a progress record.
        """
        try:
            doc: Any = json.loads(value or b"")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a progress record: {exc}") from exc
        if not isinstance(doc, dict):
            raise ValueError(f"not a progress record: {type(doc).__name__}, not an object")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in doc and f.default is not MISSING:
                continue  # written by a producer that predates the field
            got = doc.get(f.name)
            if f.type == "bool":
                ok = isinstance(got, bool)
            elif f.type == "int":
                ok = isinstance(got, int) and not isinstance(got, bool) and got >= 0
            else:
                ok = isinstance(got, str)
            if not ok:
                raise ValueError(f"progress record: bad or missing {f.name!r}: {got!r}")
            values[f.name] = got
        return cls(**values)


@dataclass(frozen=True)
class Groups:
    """The Kafka consumer groups of one replay job (progress is read from them)."""

    processor: str
    loader: str
    reader: str
    """Group id of the job's readers that only assign (the producer reading where it
    stopped, dead-letter reports): it commits nothing, but an authorizing broker
    checks the group of every fetch, so it lies under the job's prefix too."""

    @classmethod
    def for_job(cls, job: str) -> Groups:
        """``hftpipe.<job>.processor``, ``.loader`` and ``.reader`` (``<job>`` is a
        :func:`job_id`): one prefix, so one ACL covers every group of every job."""
        check_job_id(job)
        return cls(
            processor=f"{PREFIX}.{job}.processor",
            loader=f"{PREFIX}.{job}.loader",
            reader=f"{PREFIX}.{job}.reader",
        )


def transactional_id(job: str) -> str:
    """``hftpipe.<job>.producer``: the producer's Kafka transactional id.

    One per job, so a second producer of the same job fences the first (the broker
    refuses the older one's writes) instead of adding duplicates; under the job's
    prefix, so one TransactionalId ACL covers every job.
    """
    check_job_id(job)
    return f"{PREFIX}.{job}.producer"


REDIS_LAYOUT: tuple[tuple[str, str, str], ...] = (
    (
        "hftpipe:<job>:latest:<symbol>",
        "hash",
        "newest metrics of a symbol, one O(1) `HGETALL`: `ts_ns`, `seq`, `close` and "
        "`<window>:<metric>` for metric in n, volume, vwap, sma, std, ret_std (empty = null)",
    ),
    (
        "hftpipe:<job>:history:<symbol>",
        "sorted set",
        "one metrics message per bar (the metrics topic's value, see `codec.py`), score = "
        "event time in ms: "
        "`ZRANGE ... BYSCORE <from_ms> <to_ms>`; trimmed to the newest "
        "`HFTPIPE_REDIS_HISTORY_LIMIT` bars",
    ),
    ("hftpipe:<job>:symbols", "set", "symbols seen"),
    (
        "hftpipe:<job>:offset:<partition>",
        "string",
        "next offset of that bars-topic partition, written in the same MULTI/EXEC as the "
        "outputs (exactly-once resume point)",
    ),
    (
        "hftpipe:<job>:state:<partition>",
        "string",
        "snapshot of that partition's window state at that offset",
    ),
)
"""The Redis key layout: (key pattern, type, content). Rendered into the README."""


@dataclass(frozen=True)
class RedisKeys:
    """The Redis key layout of one job (see :data:`REDIS_LAYOUT`). All keys share
    ``hftpipe:<job>:`` so one job's keys can be listed (``SCAN MATCH
    hftpipe:<job>:*``) and deleted together."""

    job: str

    @property
    def base(self) -> str:
        """``hftpipe:<job>``."""
        return f"{PREFIX}:{check_job_id(self.job)}"

    def latest(self, symbol: str) -> str:
        """Hash of the newest metrics of a symbol."""
        return f"{self.base}:latest:{symbol}"

    def history(self, symbol: str) -> str:
        """Sorted set of per-bar metrics of a symbol, scored by event time in ms."""
        return f"{self.base}:history:{symbol}"

    @property
    def symbols(self) -> str:
        """Set of the symbols seen."""
        return f"{self.base}:symbols"

    def offset(self, partition: int) -> str:
        """Next offset to read of a bars partition, written in one MULTI with the outputs.

        One key per partition (not a hash) so that a processor can WATCH exactly
        its own partitions: a zombie that lost a partition in a rebalance then
        fails its transaction instead of overwriting the new owner's results.
        """
        return f"{self.base}:offset:{partition}"

    def state(self, partition: int) -> str:
        """Snapshot of the window state of one input partition."""
        return f"{self.base}:state:{partition}"

    @property
    def pattern(self) -> str:
        """``SCAN MATCH`` pattern for every key of the job."""
        return f"{self.base}:*"
