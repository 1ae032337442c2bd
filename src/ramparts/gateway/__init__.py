"""The gateway: a model behind an HTTP API with Ramparts' defences on, and an audit log in SQLite.

`config` (TOML + environment), `keys` (hashed tokens), `store` (SQLite: keys, log, PRADA streams), `limits`
(token buckets), `inputs` (validation at the boundary), `model` (loading, detection policies, HE), `outputs`
(output modes), `service` (the order of work and durability), `metrics` (Prometheus), `app` (FastAPI and
uvicorn), `logview` (summaries for `ramparts gateway log`), `process` (`ramparts serve` as a child process, for
scripts and integration tests).
"""

from ramparts.gateway.app import build_server, create_app
from ramparts.gateway.config import ConfigError, GatewayConfig, load_config
from ramparts.gateway.service import Gateway
from ramparts.gateway.store import Store

__all__ = ["ConfigError", "Gateway", "GatewayConfig", "Store", "build_server", "create_app", "load_config"]
