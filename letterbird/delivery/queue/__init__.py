"""The outgoing queue: scheduler, delivery worker and DSNs (DESIGN.md §6).

:class:`QueueService` is what the server runs and what the SMTP edge talks to
(:meth:`QueueService.wake`, :meth:`QueueService.notify`, :func:`new_queue_id`).
"""

from letterbird.delivery.queue.service import QueueService, new_queue_id

__all__ = ["QueueService", "new_queue_id"]
