"""/admin: operations on the whole deployment (an admin key): a backup streamed while serving."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from app.dependencies import BackupDep, require_deployment_admin_key
from app.schemas import error_responses
from app.store import timestamp

router = APIRouter(
    prefix="/admin",
    tags=["operations"],
    dependencies=[Depends(require_deployment_admin_key)],
    responses=error_responses(401, 403),
)


@router.post(
    "/backup",
    summary="Back up the whole database",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "the archive"}},
)
async def backup(service: BackupDep):
    """The archive ``python -m app backup`` writes (its format: app/backup.py, the README's
    operator's page), streamed as it is written from one consistent snapshot."""
    name = f"hsn-backup-{timestamp().replace(':', '-')}.zip"
    return StreamingResponse(
        service.stream(),
        media_type="application/zip",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )
