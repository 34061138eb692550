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

Also here: :class:`RedisTaskMessages`, which renders a task's message in this transport's format
for a write of ours, so submitting a job costs one round trip to Redis.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import redis
from celery import Celery
from celery.events.event import Event
from celery.utils.nodenames import anon_nodename
from celery.utils.time import utcoffset
from kombu.transport import redis as kombu_redis
from kombu.utils.uuid import uuid


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis.ConnectionError("this channel's connection to Redis was lost and closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


class RedisTaskMessages:
    """Celery task messages rendered in the form kombu's Redis transport writes them (a JSON
    envelope pushed on the queue's list, plus the ``task-sent`` event published when
    ``task_send_sent_event`` is on), so that a new job's record and its task's message reach
    Redis in one atomic write, the record first. Celery's own ``create_task_message`` builds
    the message; the worker consumes it as any other.

    Only what submitting a job needs: one task, positional arguments, the default exchange,
    priority 0, no countdown. Everything else is sent with ``send_task``."""

    _EVENTS_EXCHANGE = "celeryev"
    _SENT_ROUTING_KEY = "task.sent"

    def __init__(self, app: Celery, queue: str, db: int) -> None:
        self._app = app
        self._queue = queue
        # kombu's Redis transport: fanout topics are "/<db>.<exchange>/<routing key>".
        self._sent_topic = f"/{db}.{self._EVENTS_EXCHANGE}/{self._SENT_ROUTING_KEY}"
        self._nodename_pid, self._nodename = 0, ""

    def _origin(self) -> str:
        """Celery's name for this process ("gen<pid>@<host>"), asked once per process (a fork
        gets its own)."""
        if self._nodename_pid != os.getpid():
            self._nodename_pid, self._nodename = os.getpid(), anon_nodename()
        return self._nodename

    @property
    def queue(self) -> str:
        """The list a message is pushed on (LPUSH)."""
        return self._queue

    @property
    def sent_topic(self) -> str:
        """The channel the ``task-sent`` event is published on."""
        return self._sent_topic

    def render(self, task_name: str, args: list[Any]) -> tuple[str, str | None]:
        """The message that sends ``task_name(*args)``, and its ``task-sent`` event (None when
        events are off)."""
        task_id = uuid()
        parent = self._app.current_worker_task  # a job submitted from a task (a schedule firing)
        origin = self._origin()
        headers, properties, body, sent_event = self._app.amqp.create_task_message(
            task_id,
            task_name,
            args,
            reply_to=self._app.thread_oid,
            create_sent_event=self._app.conf.task_send_sent_event,
            root_id=parent and (parent.request.root_id or parent.request.id),
            parent_id=parent and parent.request.id,
            origin=origin,
            ignore_result=None,
            # What Celery's saferepr gives for ids, without its cost.
            argsrepr=repr(args),
            kwargsrepr="{}",
        )
        message = self._envelope(body, headers, properties, 2, "", self._queue)
        if not sent_event:
            return message, None
        # What Flower shows for a task no worker has received yet.
        event = Event(
            "task-sent",
            hostname=origin,
            utcoffset=utcoffset(),
            pid=os.getpid(),
            clock=self._app.clock.forward(),
            **sent_event,
            queue=self._queue,
            exchange="",
            routing_key=self._queue,
        )
        return message, self._envelope(
            event, {"hostname": origin}, {}, 1, self._EVENTS_EXCHANGE, self._SENT_ROUTING_KEY
        )

    @staticmethod
    def _envelope(
        body: Any,
        headers: dict[str, Any],
        properties: dict[str, Any],
        delivery_mode: int,
        exchange: str,
        routing_key: str,
    ) -> str:
        # Plain JSON values only (ids, names, numbers), so the standard encoder writes what
        # kombu's would.
        return json.dumps(
            {
                "body": base64.b64encode(json.dumps(body).encode()).decode("ascii"),
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": headers,
                "properties": {
                    **properties,
                    "delivery_mode": delivery_mode,
                    "delivery_info": {"exchange": exchange, "routing_key": routing_key},
                    "priority": 0,
                    "body_encoding": "base64",
                    "delivery_tag": uuid(),
                },
            }
        )
