"""`fota-service serve --config FILE`: a TOML file validated by pydantic (unknown keys are errors).

```toml
[service]
tenant = "bench"            # first segment of hosted paths; default topic prefix prod/<tenant>/
token = "…"                 # bearer token of the REST API: at least 32 characters (`openssl rand -hex 32`)
db_url = "sqlite:///fota.db"

[http]
host = "0.0.0.0"
port = 8443
tls_cert = "server.pem"     # both or neither: plain HTTP without them
tls_key = "server.key"
public_host = "fota.lab:8443"  # FILE_HOST in job tuples; default <host>:<port>
api_docs = false            # true serves /docs, /redoc and /openapi.json without the token (bench use)

[mqtt]                      # optional: no [mqtt] → REST only
host = "localhost"
port = 8883
ca_file = "ca.pem"
cert_file = "fota-service.pem"
key_file = "fota-service.key"
topic_prefix = "prod/bench/"
client_id = "fota-service"

[rollout]
batch_size = 25
batch_interval = 60.0
max_gateways = 50

[cluster]                   # only with a PostgreSQL db_url: several processes on one database
share_group = "fota-service"  # MQTT shared subscriptions $share/<group>/...; "" only for one process
leader_retry = 2.0          # seconds between a standby's tries to become the scheduler
poll_interval = 1.0         # seconds between the scheduler's looks at other processes' writes
```
"""

from __future__ import annotations

import ssl
import tomllib
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

TOKEN_MIN_LENGTH = 32
"""A bearer token is the only thing between the network and every job: 32 characters of `openssl rand -hex`
are 128 bits, beyond guessing over HTTP."""


class _Section(BaseModel):
    # hide_input_in_errors: a refused value (the token!) must never be echoed into an error message or a log
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class ServiceSection(_Section):
    tenant: str = Field(default="local", pattern=r"^[A-Za-z0-9_.-]+$")
    token: SecretStr
    db_url: str = "sqlite:///fota-service.db"

    @field_validator("token")
    @classmethod
    def _strong_token(cls, token: SecretStr) -> SecretStr:
        value = token.get_secret_value()
        if len(value) < TOKEN_MIN_LENGTH:
            raise ValueError(f"must be at least {TOKEN_MIN_LENGTH} characters (e.g. `openssl rand -hex 32`)")
        if not all("!" <= c <= "~" for c in value):
            raise ValueError("must be printable ASCII without spaces (it travels in an HTTP header)")
        return token

    @model_validator(mode="after")
    def _tenant_not_api(self) -> ServiceSection:
        if self.tenant == "v1":  # hosted files live at /<tenant>/..., beside the /v1 API
            raise ValueError("tenant may not be 'v1'")
        return self


class HttpSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    public_host: str | None = None
    api_docs: bool = False
    """Serve /docs, /redoc and /openapi.json (without the token; they describe the API, hold no data)."""

    @model_validator(mode="after")
    def _pair(self) -> HttpSection:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @property
    def file_host(self) -> str:
        return self.public_host or f"{self.host}:{self.port}"


class MqttSection(_Section):
    host: str
    port: int = Field(default=8883, ge=1, le=65535)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    topic_prefix: str | None = None
    client_id: str = "fota-service"

    def tls_context(self) -> ssl.SSLContext | None:
        """Mutual TLS when a client certificate is configured; server-only TLS with just a CA file."""
        if self.ca_file is None and self.cert_file is None:
            return None
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        return ctx


class RolloutSection(_Section):
    batch_size: int = Field(default=25, ge=1)
    batch_interval: float = Field(default=60.0, gt=0)
    max_gateways: int = Field(default=50, ge=1)


class ClusterSection(_Section):
    """Processes sharing a PostgreSQL database (ignored on SQLite, which serves one process)."""

    share_group: str = Field(default="fota-service", pattern=r"^[A-Za-z0-9_.-]*$")
    leader_retry: float = Field(default=2.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)


class ServiceConfig(_Section):
    service: ServiceSection
    http: HttpSection = HttpSection()
    mqtt: MqttSection | None = None
    rollout: RolloutSection = RolloutSection()
    cluster: ClusterSection = ClusterSection()

    @property
    def topic_prefix(self) -> str:
        if self.mqtt is not None and self.mqtt.topic_prefix is not None:
            return self.mqtt.topic_prefix
        return f"prod/{self.service.tenant}/"


class ConfigError(Exception):
    """The configuration file is missing, not TOML, or not valid."""


def load_config(path: Path) -> ServiceConfig:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return ServiceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    """Where and what, without the value: pydantic's own text would quote it, and it may be the token."""
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'file'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    )
