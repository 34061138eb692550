"""The Redis broker transport, with one repair: a worker must ride out a Redis outage.

When the connection to Redis drops while a task runs (unacknowledged, as every job task is:
``task_acks_late``), kombu later uses the lost connection's channel to put that message back
or to acknowledge it, and fails building a client from connection details that are gone
(``AttributeError``). Celery treats that as unrecoverable and the worker exits, leaving its
jobs behind. Here the missing details raise a connection error instead, which Celery already
handles: it logs it and carries on with the new connection. The message itself stays in
Redis's "unacked" index and returns after the visibility timeout; by then its job record says
the job is done, so the worker skips it.

Selected with ``broker_transport`` in :func:`shared.services.task_queue.celery_config`.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis.ConnectionError("this channel's connection to Redis was lost and closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
