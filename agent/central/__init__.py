"""The operator side: follow a fleet of agents over MQTT into one SQLite file.

Nothing on the device path imports this package. Its parts, one concern each:

- :mod:`~agent.central.records`: what a device may send, as typed, bounded records; anything
  else is counted by reason and skipped;
- :mod:`~agent.central.store`: the central's database, all its SQL, numbered migrations;
- :mod:`~agent.central.ingest`: a message to rows and the notifications it causes;
- :mod:`~agent.central.notify`: webhook URLs, bodies and durable delivery with backoff;
- :mod:`~agent.central.formats`: what an alert says to people (Slack and generic bodies,
  Alertmanager's description);
- :mod:`~agent.central.alertmanager`: alerts posted to Alertmanager's v2 API;
- :mod:`~agent.central.metrics`: the fleet's Prometheus ``/metrics``, from the database;
- :mod:`~agent.central.service`: :class:`Central`, the MQTT client and supervised threads;
- :mod:`~agent.central.fleet`: what ``edgewatch fleet`` shows and sends.
"""

from __future__ import annotations

from .fleet import fleet_rows, open_alerts, recent_commands, send_command
from .notify import check_url, redact, webhook_body
from .records import REASONS, BadMessage, Limits, parse
from .service import Central
from .store import SCHEMA_VERSION, CentralReader, CentralStore

__all__ = ["Central", "CentralStore", "CentralReader", "SCHEMA_VERSION", "fleet_rows",
           "open_alerts", "recent_commands", "send_command", "check_url", "redact",
           "webhook_body", "REASONS", "BadMessage", "Limits", "parse"]
