"""The Dramatiq broker and the names of the work it carries.

The coordinator sends messages by actor name, so it never imports the workers (or build123d).
The workers declare their actors with these same names and queues.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

CAD_QUEUE = "cad"
CAD_ACTOR = "build_cad"
SLICE_QUEUE = "slice"
SLICE_ACTOR = "slice_build"

_broker: RedisBroker | None = None


def get_broker(redis_url: str) -> RedisBroker:
    """One broker per process, registered as Dramatiq's global broker."""
    global _broker
    if _broker is None:
        _broker = RedisBroker(url=redis_url)
        dramatiq.set_broker(_broker)
    return _broker


def send(broker: RedisBroker, queue: str, actor: str, *args: object) -> None:
    broker.enqueue(dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={}))
