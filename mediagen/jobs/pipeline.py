"""The worker side of a job: short async steps, none of which waits for the model.

`start` claims an attempt and creates (or resumes) the upstream prediction; `poll` looks at it
once; `on_prediction` (shared with webhooks) finishes, fails, or asks to be polled again. Each
step returns the `Next` step for the task layer to publish with a countdown, so waiting for a
model costs a broker message, not a worker slot. Every write is one statement, made through
`mediagen.jobs.lifecycle`, which announces it after it commits.

A start message starts the job whose turn it is (`mediagen.jobs.starts`), with a slot of its
model when the model has a limit (a Cog model's servers); a job without a free slot waits
`pending` in its model's queue until a release sends a start again.

A job whose prediction is ready at once (the built-in generator without latency) costs two
statements: the claim, and the completion, which records the prediction id with it.

A model that streams its output (text chunks) has them stored with the write a look makes
anyway and announced as they come; while it streams it is looked at every STREAM_POLL seconds
at most.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from mediagen import retry
from mediagen.base_url import public_root
from mediagen.broker import Outbox
from mediagen.catalog import Endpoint
from mediagen.config import Settings
from mediagen.errors import (
    NoCapacityError,
    OutputTooLargeError,
    PermanentProviderError,
    PredictionLostError,
    ProviderError,
    StorageError,
)
from mediagen.files import inputs
from mediagen.jobs import joblogs, progress, upstream_cancels, values
from mediagen.jobs import outputs as stored_outputs
from mediagen.jobs import repository as repo
from mediagen.jobs.dispatch import Next, cancel_upstream_task
from mediagen.jobs.lifecycle import Lifecycle
from mediagen.jobs.models import Job
from mediagen.jobs.payloads import metrics_at_end
from mediagen.jobs.starts import Starts
from mediagen.jobs.states import JobStatus
from mediagen.jobs.turns import Turns
from mediagen.observability import context
from mediagen.providers.base import (
    GenerationRequest,
    Prediction,
    PredictionStatus,
    Provider,
)
from mediagen.providers.downloads import NO_MESSAGE
from mediagen.providers.registry import Providers
from mediagen.retry import MAX_POLL_WAIT
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)
CANCEL_ATTEMPTS = 10  # a prediction that refuses to be canceled this often is given up on
STREAM_POLL = 0.5  # the longest wait between looks at a prediction that streams its output

__all__ = ["CANCEL_ATTEMPTS", "Next", "Pipeline"]


def _adopt_request(job: Job) -> None:
    """A step whose message carried no request id (the sweeper re-dispatched it) logs under
    the one the job row keeps, the request that created the job."""
    if context.request_id.get() is None and job.request_id:
        context.request_id.set(job.request_id)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        providers: Providers | Provider,
        storage: Storage,
        outbox: Outbox,
    ) -> None:
        self.settings = settings
        # Each job runs on the provider its row names (`job.provider`); one provider given
        # alone runs every job.
        self.providers = (
            providers if isinstance(providers, Providers) else Providers.only(providers, settings)
        )
        self.storage = storage
        self.outbox = outbox
        self.retries = retry.jobs(settings)
        # Whose turn it is, and slots (mediagen.scheduling); Cog servers' health, when the
        # catalog routes to Cog.
        self.turns = Turns(settings, self.providers.catalog, outbox)
        self.capacity = self.providers.capacity(outbox, storage)
        self.lifecycle = Lifecycle(outbox, attempt_ended=self.turns.release, adopt=_adopt_request)
        self.starts = Starts(settings, self.turns, self.lifecycle)

    # --- steps -------------------------------------------------------------------------------
    async def start(self, job_id: str) -> Next | None:
        claimed = await self.starts.claim(job_id)
        if claimed is None:
            return None
        job, taken = claimed
        slot = self.turns.endpoint(job, taken)
        attempt = job.attempt
        request = self._request(job, attempt, slot)
        log.info("job started", extra={"job_id": str(job.id), "attempt": attempt})

        try:
            provider = self.providers.get(job.provider)
        except ProviderError as exc:  # not one this process can run: fails the job, saying why
            return await self._on_error(job, attempt, exc)
        try:
            request = await self._with_inputs(job, request)
        except (ProviderError, StorageError) as exc:  # an input could not be fetched or read
            return await self._on_error(job, attempt, exc)
        if job.prediction_id:  # resume the earlier attempt's prediction rather than pay twice
            resumed = await self._resume(provider, job.prediction_id, request)
            if resumed is not None:
                return await self.on_prediction(job, attempt, resumed)
        try:
            prediction = await provider.create(request)
        except ProviderError as exc:
            if slot is not None and self.capacity is not None and isinstance(exc, NoCapacityError):
                exc = await self.capacity.turned_away(slot, exc)
            return await self._on_error(job, attempt, exc)
        if not prediction.status.is_terminal and prediction.poll_after == 0:
            # Ready at once: nothing to lose by a crash now, so the id is recorded with the
            # outcome instead of by a write of its own.
            return await self._poll_now(job, attempt, prediction.id, request, recorded=False)
        fields: dict[str, Any] = {"prediction_id": prediction.id}
        grown = self._fold_logs(job, attempt, prediction, fields)
        recorded = await self.lifecycle.renew(
            job.id, attempt, self.settings.lease_seconds, grown=grown, **fields
        )
        if recorded is None:  # we lost the job while creating (canceled, say): stop it
            await upstream_cancels.record(prediction.id, job.id)
            self.outbox.send(cancel_upstream_task(prediction.id))
            return None
        if await provider.reported(prediction.id):  # its end came before the record
            return await self._poll_now(recorded.job, attempt, prediction.id, request)
        return await self.on_prediction(recorded.job, attempt, prediction)

    async def poll(self, job_id: str, attempt: int) -> Next | None:
        job = await repo.get(job_id)
        if (
            job is None
            or job.status is not JobStatus.PROCESSING
            or job.attempt != attempt
            or not job.prediction_id
        ):
            return None  # stale: finished, retried, or owned by a newer attempt
        _adopt_request(job)
        if self.starts.expired(job):
            await self.starts.fail_deadline(job)
            return None
        try:
            request = await self._with_inputs(job, self._request(job, attempt))
        except (ProviderError, StorageError) as exc:
            return await self._on_error(job, attempt, exc)
        return await self._poll_now(job, attempt, job.prediction_id, request)

    async def on_prediction(
        self, job: Job, attempt: int, prediction: Prediction, recorded: bool = True
    ) -> Next | None:
        """Act on what upstream says of the prediction (from a poll or a webhook)."""
        changed = progress.update(job, prediction)  # new {current, total, percent}, or None
        fields: dict[str, Any] = {} if recorded else {"prediction_id": prediction.id}
        grown = self._fold_logs(job, attempt, prediction, fields)  # written only if it grew
        if prediction.status is PredictionStatus.SUCCEEDED:
            return await self._finish(job, attempt, prediction, changed, fields, grown)
        if prediction.status.is_terminal:  # failed or canceled upstream
            error = prediction.error or NO_MESSAGE  # the model's own message
            if prediction.status is PredictionStatus.CANCELED:
                error = "the prediction was canceled upstream"
            fields["metrics"] = metrics_at_end(prediction.predict_time, None)
            await self.lifecycle.fail(job.id, error, attempt, grown=grown, **fields)
            return None
        try:
            streamed = progress.streamed(
                job, prediction, fields, self.settings.max_output_value_bytes
            )
        except OutputTooLargeError as exc:
            return await self._on_error(job, attempt, exc)
        moved = await self.lifecycle.renew(
            job.id,
            attempt,
            self._lease_for(prediction),
            progress=changed,
            grown=grown,
            streamed=streamed,
            **fields,
        )
        if moved is None:
            return None
        wait = (
            self.settings.poll_interval if prediction.poll_after is None else prediction.poll_after
        )
        if streamed is not None:  # the model streams: look again soon for its next chunks
            wait = min(wait, STREAM_POLL)
        return Next("poll", str(job.id), attempt, min(wait, MAX_POLL_WAIT))

    async def lose(self, job_id: str, reason: str) -> None:
        """The job's prediction will never report (its server died): a new attempt now, as
        after a missed webhook's deadline; a job already over only frees its slot."""
        job = await repo.get(job_id)
        if job is None:
            return
        if job.status is JobStatus.PROCESSING:
            await self._on_error(job, job.attempt, PredictionLostError(reason))
        elif job.status.is_terminal:
            await self.turns.release(job)

    async def cancel_upstream(self, prediction_id: str) -> None:
        """Stop a prediction upstream; the record goes once the provider confirms, and a failed
        cancel is tried again (backoff) until CANCEL_ATTEMPTS, by this or by the sweeper. The
        provider is the one of the job the prediction was made for."""
        owner = await upstream_cancels.owner_of(prediction_id)
        kind = owner[0] if owner else self.providers.catalog.default.provider
        try:  # (a provider this process cannot run fails like a cancel that failed)
            await self.providers.get(kind).cancel(prediction_id)
        except ProviderError as exc:
            retry_in = self.retries.delay(0, exc.retry_after)
            again = await upstream_cancels.not_stopped(prediction_id, retry_in, CANCEL_ATTEMPTS)
            log.warning(
                "cancel of prediction %s failed (%s)%s",
                prediction_id,
                exc.message,
                f"; again in {retry_in:.0f}s" if again else "; giving up",
            )
            if again:
                self.outbox.send(
                    dataclasses.replace(cancel_upstream_task(prediction_id), countdown=retry_in)
                )
            return
        await upstream_cancels.stopped(prediction_id)
        if self.capacity is not None:
            await self.capacity.canceled(prediction_id)

    # --- helpers -----------------------------------------------------------------------------
    async def _poll_now(
        self,
        job: Job,
        attempt: int,
        prediction_id: str,
        request: GenerationRequest,
        recorded: bool = True,
    ) -> Next | None:
        try:
            prediction = await self.providers.get(job.provider).get(prediction_id, request)
        except (PermanentProviderError, PredictionLostError) as exc:  # failed, or a new attempt
            return await self._on_error(job, attempt, exc)
        except ProviderError as exc:
            # A failed look is not a failed generation: look again; the deadline bounds this.
            fields: dict[str, Any] = {}
            grown = None
            if not recorded:  # (and where its log will start in the job's)
                fields["prediction_id"] = prediction_id
                unseen = Prediction(prediction_id, PredictionStatus.STARTING)
                grown = self._fold_logs(job, attempt, unseen, fields)
            await self.lifecycle.renew(
                job.id, attempt, self.settings.lease_seconds, grown=grown, **fields
            )
            wait = exc.retry_after or self.settings.poll_interval
            return Next("poll", str(job.id), attempt, min(wait, MAX_POLL_WAIT))
        return await self.on_prediction(job, attempt, prediction, recorded)

    async def _finish(
        self,
        job: Job,
        attempt: int,
        prediction: Prediction,
        done: dict[str, int] | None,
        fields: dict[str, Any],
        grown: joblogs.Grown | None = None,
    ) -> Next | None:
        try:  # (the prediction is over: nothing to stop)
            values.check(prediction.output, self.settings.max_output_value_bytes)
        except OutputTooLargeError as exc:
            await self.lifecycle.fail(job.id, exc.message, attempt, grown=grown, **fields)
            return None
        holding: asyncio.Task[None] | None = None
        if any(output.url for output in prediction.outputs):
            hold = int(self.settings.lease_seconds) + 1
            if not await stored_outputs.claim_finish(self.outbox.client, job.id, attempt, hold):
                return None  # another step of this attempt is storing them
            # Downloads can outlast a lease: renew it while they run (or lose the job now), so
            # no second finish starts meanwhile and a crash still frees the job a lease later.
            renewed = await self.lifecycle.renew(
                job.id, attempt, self.settings.lease_seconds, grown=grown, **fields
            )
            if renewed is None:
                return None
            grown = None
            fields = {k: v for k, v in fields.items() if k not in ("prediction_id", "logs")}
            holding = asyncio.create_task(self._hold(job.id, attempt))
        try:
            provider = self.providers.get(job.provider)
            outputs = await stored_outputs.store(
                provider, self.storage, str(job.id), prediction, self.settings.max_outputs_per_job
            )
        except (ProviderError, StorageError) as exc:
            return await self._on_error(job, attempt, exc)
        finally:
            if holding is not None:
                holding.cancel()
        stored = sum(output["size"] for output in outputs)
        fields["metrics"] = metrics_at_end(prediction.predict_time, stored)
        moved = await self.lifecycle.complete(
            job.id,
            attempt,
            outputs,
            prediction.output,
            result_ttl=self.settings.result_ttl,
            progress=done,  # the final progress, stored with the completion
            grown=grown,  # all of it before the end
            **fields,
        )
        if moved is not None:
            log.info("job completed", extra={"job_id": str(job.id), "attempt": attempt})
        else:
            await stored_outputs.discard_unused(self.storage, job.id, outputs)
        return None

    async def _hold(self, job_id: Any, attempt: int) -> None:
        """Renew the lease every third of it until cancelled (or the job is lost)."""
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            if await self.lifecycle.renew(job_id, attempt, self.settings.lease_seconds) is None:
                return

    async def _on_error(
        self, job: Job, attempt: int, exc: ProviderError | StorageError
    ) -> Next | None:
        """The one place a provider's (or storage's) error reaches a job: its message becomes
        the job's public `error` (plain words, `providers.downloads`); its details (upstream
        URL, answer, cause) only the log line of the retry or failure."""
        details = {"upstream": exc.details} if exc.details else {}
        retryable = isinstance(exc, StorageError) or getattr(exc, "retryable", False)
        if not retryable:
            # An output too large here came while the model still streams: it is stopped.
            stop = isinstance(exc, OutputTooLargeError)
            await self.lifecycle.fail(
                job.id, exc.message, attempt, stop_upstream=stop, logged=details
            )
            return None
        counted = not isinstance(exc, NoCapacityError)  # busy is not broken: not a retry
        if counted and job.retry_count >= self.settings.max_retries:
            await self.lifecycle.fail(
                job.id,
                f"gave up after {job.retry_count} retries: {exc.message}",
                attempt,
                logged=details,
            )
            return None
        wait = self.retries.backoff(job.retry_count) if counted else 0.0
        delay = self.retries.at_least(wait, getattr(exc, "retry_after", None))
        moved = await self.lifecycle.retry(job.id, attempt, exc.message, delay, counted=counted)
        if moved is None:
            return None
        log.warning(
            "job retrying",
            extra={
                "job_id": str(job.id),
                "attempt": attempt,
                "error": exc.message,
                "retry_in": round(delay, 1),
                **details,
            },
        )
        return Next("start", str(job.id), None, delay)

    async def _resume(
        self, provider: Provider, prediction_id: str, request: GenerationRequest
    ) -> Prediction | None:
        try:
            prediction = await provider.get(prediction_id, request)
        except ProviderError:
            return None
        return (
            None
            if prediction.status in (PredictionStatus.FAILED, PredictionStatus.CANCELED)
            else prediction
        )

    def _lease_for(self, prediction: Prediction) -> float:
        wait = prediction.poll_after or self.settings.poll_interval
        return self.settings.lease_seconds + min(wait, MAX_POLL_WAIT)

    def _request(self, job: Job, attempt: int, slot: Endpoint | None = None) -> GenerationRequest:
        base = public_root(self.settings)
        route = self.providers.catalog.for_job(job.provider, job.model)
        if slot is not None:  # a job with a slot creates its prediction where its slot is
            route = dataclasses.replace(route, endpoints=(slot,))
        return GenerationRequest(
            webhook_url=f"{base}/api/v1/webhooks/replicate" if base else None,
            job_id=str(job.id),
            prompt=job.prompt,
            parameters=dict(job.parameters),
            model=job.model,
            attempt=attempt,
            route=route,
        )

    def _fold_logs(
        self, job: Job, attempt: int, prediction: Prediction, fields: dict[str, Any]
    ) -> joblogs.Grown | None:
        """Add the job's grown logs to the `fields` of the write this step makes anyway."""
        more, grown = joblogs.fold(job, prediction, attempt, self.settings.job_logs_max_bytes)
        fields.update(more)
        return grown

    async def _with_inputs(self, job: Job, request: GenerationRequest) -> GenerationRequest:
        """`request` with the job's input files (an `https://` one fetched the first time); no
        query for a job without inputs."""
        if not job.input_files:
            return request
        # A download may outlast the lease: renew it meanwhile, as while storing outputs.
        fetching = any(v.startswith("https://") for v in inputs.named(job.parameters).values())
        holding = asyncio.create_task(self._hold(job.id, job.attempt)) if fetching else None
        try:
            found = await inputs.refs(job, self.storage, self.settings, self.providers.outbound)
        finally:
            if holding is not None:
                holding.cancel()
        return dataclasses.replace(request, inputs=found)
