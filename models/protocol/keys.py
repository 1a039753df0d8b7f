"""Every Redis key name the project uses, spelled once: the job stream and its reply streams, and also the
records other modules keep (history, admin overrides, user quotas, active replies, the command hash).

One file answers "what does this bot keep in Redis?".  Modules that own a record (`handlers.history`,
`handlers.overrides`, `handlers.user_quota`, `handlers.active_replies`) read and write it themselves, but
always through these names; a test (tests/test_architecture.py) fails when a key is spelled elsewhere.
"""

from __future__ import annotations


class _Keys:
    """Every Redis key name the project uses.  History and settings keys are here too, so that a
    single file answers "what does this bot keep in Redis?"."""

    prefix = "ilm"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    def jobs_for(self, model: str) -> str:
        """The job stream of one chat model (models/routing.py): `jobs` for "" (a single-model deployment, and
        every job before models were routed), else a stream of its own, read only by the workers serving it.
        Each stream has its own consumer group named `group`."""
        return self.jobs if not model else f"{self.prefix}:jobs:model:{model}"

    @property
    def group(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:jobs:dead"

    @property
    def cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers:alive"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def attempts(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:attempts"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:cancel"

    def handbacks(self, job_id: str) -> str:
        """How often a job was handed back unfinished by a worker shutting down (not a failure)."""
        return f"{self.prefix}:job:{job_id}:handbacks"

    def blob(self, digest: str) -> str:
        return f"{self.prefix}:blob:{digest}"

    def history(self, conversation: str) -> str:
        return f"{self.prefix}:hist:{conversation}"

    def history_generation(self, conversation: str) -> str:
        """Bumped by every reset of the conversation: an answer asked for before it is not recorded after it."""
        return f"{self.prefix}:histgen:{conversation}"

    def event_claimed(self, source: str) -> str:
        """Set (NX, with a TTL) by the bot process that answers an incoming event (a Discord message), so two
        processes that both receive it — a deploy overlap — answer it once."""
        return f"{self.prefix}:claimed:{source}"

    def answer_recorded(self, job_id: str) -> str:
        """Set (NX, with a TTL) when a job's answer goes into history, so it goes in once per job."""
        return f"{self.prefix}:job:{job_id}:recorded"

    def overrides(self, scope: str) -> str:
        """Admin overrides of one scope (a guild or a channel; handlers/overrides.py)."""
        return f"{self.prefix}:conf:{scope}"

    def user_quota(self, user: str) -> str:
        """A user's recent requests (handlers/user_quota.py)."""
        return f"{self.prefix}:rate:{user}"

    @property
    def command_hash(self) -> str:
        return f"{self.prefix}:commands:hash"

    def reader_wake(self, reader_id: str) -> str:
        """A process's reply reader: written to when a new reply is followed, so its blocking read restarts."""
        return f"{self.prefix}:reader:{reader_id}:wake"

    def active_reply(self, conversation: str) -> str:
        return f"{self.prefix}:active:{conversation}"

    @property
    def active_conversations(self) -> str:
        """Index (sorted set) of conversations with a reply being streamed to Discord (handlers/resume.py)."""
        return f"{self.prefix}:active-index"


KEYS = _Keys()
