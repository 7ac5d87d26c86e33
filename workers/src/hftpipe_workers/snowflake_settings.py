"""The loader's Snowflake connection settings (``HFTPIPE_SNOWFLAKE_*``).

Apart from :mod:`hftpipe_workers.warehouse.snowflake_sink` so that the operator,
which turns a ReplayJob's spec into these variables, reads them without importing
pandas, pyarrow or DuckDB (~100 MB of a process that needs none of them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX: Final = "HFTPIPE_SNOWFLAKE_"


class SnowflakeConfigError(ValueError):
    """The Snowflake settings cannot work; the message names the variables to set."""


def env_var(field: str) -> str:
    """The variable of a :class:`SnowflakeSettings` field (``schema_`` -> ``..._SCHEMA``)."""
    return ENV_PREFIX + field.rstrip("_").upper()


class SnowflakeSettings(BaseSettings):
    """Where and how to connect to Snowflake, from ``HFTPIPE_SNOWFLAKE_*`` variables.

    Authentication is by password or by key pair (a private key file, or the PEM
    text itself for secrets mounted as variables), exactly one of them. Empty
    variables count as unset.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="forbid",
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    account: str = ""
    """Account identifier, ``<orgname>-<account_name>`` (or a legacy locator such as
    ``xy12345.eu-west-1``). Required."""

    user: str = ""
    """Login name of the user the loader connects as. Required."""

    password: SecretStr | None = None
    """Password of *user*. Set this or a private key, not both."""

    private_key_path: Path | None = None
    """PEM file holding *user*'s private key for key-pair authentication
    (PKCS#8, optionally encrypted)."""

    private_key: SecretStr | None = None
    """The PEM text of the private key, instead of *private_key_path*."""

    private_key_passphrase: SecretStr | None = None
    """Passphrase of an encrypted private key; leave unset for an unencrypted one."""

    role: str | None = None
    """Role to use; unset means the user's default role."""

    warehouse: str | None = None
    """Virtual warehouse that runs the MERGEs; unset means the user's default warehouse."""

    database: str = ""
    """Database holding the tables. Required."""

    # Named schema_ because BaseModel has a (deprecated) ``schema`` method, and
    # given the alias ``schema`` for callers. pydantic-settings reads the variable
    # named by an alias *without* env_prefix (it would read SCHEMA), so validation
    # uses the full variable name instead, and _schema_keyword maps schema=...
    schema_: str = Field(default="PUBLIC", alias="schema", validation_alias=ENV_PREFIX + "SCHEMA")
    """Schema holding the tables; it must exist (the sink creates tables, not schemas)."""

    @model_validator(mode="before")
    @classmethod
    def _schema_keyword(cls, data: Any) -> Any:  # pydantic hands over the raw input
        """``SnowflakeSettings(schema="X")`` -> the ``schema_`` field (and wins over the env)."""
        if isinstance(data, dict) and "schema" in data:
            data = dict(data)
            data[ENV_PREFIX + "SCHEMA"] = data.pop("schema")
        return data

    @model_validator(mode="after")
    def _complete(self) -> SnowflakeSettings:
        problems = [
            f"set {env_var(name)}"
            for name in ("account", "user", "database")
            if not getattr(self, name)
        ]
        keys = [n for n in ("private_key_path", "private_key") if getattr(self, n) is not None]
        if self.password is None and not keys:
            problems.append(
                f"set {env_var('password')}, or {env_var('private_key_path')} (or "
                f"{env_var('private_key')}) for key-pair authentication"
            )
        elif len(keys) + (self.password is not None) > 1:
            given = ", ".join(env_var(n) for n in ["password", *keys] if getattr(self, n))
            problems.append(f"set only one way to authenticate, got {given}")
        if self.private_key_passphrase is not None and not keys:
            problems.append(
                f"{env_var('private_key_passphrase')} is set but no private key is: "
                f"set {env_var('private_key_path')} or unset the passphrase"
            )
        if self.private_key_path is not None and not self.private_key_path.is_file():
            problems.append(
                f"{env_var('private_key_path')}={self.private_key_path} is not a file: "
                "point it at the PEM file of the private key"
            )
        if problems:
            raise SnowflakeConfigError("Snowflake settings incomplete: " + "; ".join(problems))
        return self
