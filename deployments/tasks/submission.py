"""What the router hands the TaskStore for one task, and how it is kept in the task database.

A submission holds a resolved `GenerationRequest` (decoded init images and masks included) or a custom
job's payload. It is stored pickled, the same encoding Ray uses to hand it from the router to this actor:
a JSON codec would have to mirror every job type and image field, and the database is the server's own
(written only by the TaskStore, never by a client). A submission that no longer unpickles (the server was
upgraded between submit and restart) fails its task with a reason that says so.
"""

from __future__ import annotations

import base64
import pickle
from dataclasses import dataclass
from typing import Any

from deployments.protocol import GenerationRequest


@dataclass
class TaskSubmission:
    """A validated task, as the router hands it over: a resolved generation, or a custom job's payload."""

    id: str
    kind: str
    mode: str
    family: str
    owner: str
    request: GenerationRequest | None = None
    payload: dict[str, Any] | None = None
    webhook: str | None = None

    @property
    def request_id(self) -> str:
        """What its log lines carry: the submitting request's id for a generation."""
        return self.request.request_id if self.request is not None else self.id

    def encode(self) -> str:
        return base64.b64encode(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")

    @staticmethod
    def decode(text: str) -> TaskSubmission:
        sub = pickle.loads(base64.b64decode(text))  # the server's own database (module docstring)
        if not isinstance(sub, TaskSubmission):
            raise TypeError(f"a stored submission is a {type(sub).__name__}")
        return sub
