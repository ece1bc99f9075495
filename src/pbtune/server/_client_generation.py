"""The client's side of a generational run: send a request again while its generation is not ready."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from pbtune.server.errors import GenerationTimeoutError, GenerationWaitError

__all__ = ["FIRST_WAIT", "for_generation"]

log = logging.getLogger("pbtune.server.client")

FIRST_WAIT = 0.05
T = TypeVar("T")


def for_generation(
    send: Callable[[], T],
    *,
    member_id: int,
    timeout: float | None,
    rng: random.Random,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[T, float]:
    """``send()``, sent again while the server answers :class:`GenerationWaitError`, with jittered
    backoff from 50 ms up to the server's ``retry_after``. Returns the answer and the seconds
    waited (0.0 when the first answer was it).

    Raises:
        GenerationTimeoutError: still not ready after ``timeout`` seconds (None: never).

    Example:
        >>> answers = iter([GenerationWaitError("wait", code="generation_waiting", step=2, waiting_for=(1,),
        ...                                     retry_after=0.5), {"exploit": False}])
        >>> def send():
        ...     answer = next(answers)
        ...     if isinstance(answer, Exception):
        ...         raise answer
        ...     return answer
        >>> for_generation(send, member_id=0, timeout=None, rng=random.Random(0), sleep=lambda s: None)[0]
        {'exploit': False}
    """
    started = clock()
    delay = FIRST_WAIT
    tries = 0
    while True:
        try:
            answer = send()
        except GenerationWaitError as exc:
            waited = clock() - started
            if timeout is not None and waited >= timeout:
                raise GenerationTimeoutError(
                    f"member {member_id} waited {waited:.1f} s for its generation, more than"
                    f" generation_timeout={timeout:g}: {exc}") from exc
            if tries == 0:
                log.info("%s", exc)
            tries += 1
            pause = rng.uniform(0.5, 1.0) * min(delay, exc.retry_after)
            if timeout is not None:
                pause = min(pause, timeout - waited)
            sleep(max(pause, 0.0))
            delay = min(delay * 2, max(exc.retry_after, FIRST_WAIT))
            continue
        return answer, (clock() - started if tries else 0.0)
