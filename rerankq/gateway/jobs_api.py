"""The async jobs API: submit now, fetch later (or be called back). Ids are the SDK's job ids."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from rerankq.errors import InvalidRequest
from rerankq.gateway.callback_targets import check_callback_url
from rerankq.gateway.callbacks import CallbackDispatcher
from rerankq.gateway.errors import Conflict
from rerankq.gateway.request_limits import check_documents_request
from rerankq.gateway.rerank_api import CallerOf, Service, cohere_response, document_texts
from rerankq.gateway.schemas import JobAccepted, JobRequest, JobState
from rerankq.gateway.service import RerankService
from rerankq.producer.job_status import JobStatus

router = APIRouter()

JobId = Annotated[str, Path(min_length=1, max_length=128)]


def callbacks_of(request: Request) -> CallbackDispatcher | None:
    dispatcher: CallbackDispatcher | None = request.app.state.callbacks
    return dispatcher


Callbacks = Annotated[CallbackDispatcher | None, Depends(callbacks_of)]


@router.post("/v1/jobs", status_code=202)
async def create_job(
    body: JobRequest,
    request: Request,
    response: Response,
    service: Service,
    caller: CallerOf,
    callbacks: Callbacks,
) -> JobAccepted:
    """Enqueue a Cohere-v1-shaped request; 202 with the job's id and where to poll it."""
    check_documents_request(body.documents, body.rank_fields, service.settings)
    if body.callback_url is not None and callbacks is None:
        raise InvalidRequest("callback_url", "callbacks need RERANKQ_CALLBACK_SECRET set on the gateway (to sign them)")
    if body.callback_url is not None:
        await check_callback_url(str(body.callback_url), service.settings.callback_allow_private)
    texts = document_texts(body.documents, body.rank_fields)
    options = {"top_n": body.top_n, "return_documents": body.return_documents, **body.text_options()}
    job = await service.submit(caller, body.query, texts, body.model, **options)
    if body.callback_url is not None and callbacks is not None:
        await callbacks.register(job.job_id, str(body.callback_url))
    status_url = str(request.url_for("get_job", job_id=job.job_id))
    response.headers["Location"] = status_url
    return JobAccepted(id=job.job_id, status=JobStatus.PENDING, status_url=status_url)


@router.get("/v1/jobs/{job_id}", name="get_job", response_model_exclude_none=True)
async def get_job(job_id: JobId, service: Service, caller: CallerOf) -> JobState:
    """The job's state; 404 for another key's job, as for one never submitted."""
    return await job_state(service, job_id, await service.check_owner(caller, job_id))


@router.delete("/v1/jobs/{job_id}", response_model_exclude_none=True)
async def cancel_job(job_id: JobId, service: Service, caller: CallerOf) -> JobState:
    """Cancel a job no worker has started; 409 when it already started or finished; 404 for
    another key's job."""
    await service.check_owner(caller, job_id)
    status = await service.cancel(job_id)
    if status != JobStatus.CANCELLED:
        raise Conflict(f"job {job_id} is {status}: only a job still waiting in its queue can be cancelled")
    return JobState(id=job_id, status=status)


async def job_state(service: RerankService, job_id: str, billed_documents: int | None) -> JobState:
    view = await service.view(job_id)
    result = cohere_response(view.result, "1", None, billed_documents) if view.result is not None else None
    return JobState(id=job_id, status=view.status, model=view.model, result=result, error=view.error)


async def finished_body(service: RerankService, job_id: str) -> bytes | None:
    """A finished job's state as JSON (what a callback carries), or None while it runs."""
    state = await job_state(service, job_id, await service.owner_documents(job_id))
    if state.status in (JobStatus.PENDING, JobStatus.STARTED, JobStatus.WAITING_FOR_CPU):
        return None
    return state.model_dump_json(exclude_none=True).encode()
