"""The import route: a CSV file uploaded by an account owner becomes contract events
published through the bus like any producer's (see docs/import.md)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from litestar import post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery, Parameter

from services.api.deps import Caller, Ctx, instant, instant_parameter
from services.api.errors import ApiError, error_responses
from services.importing.files import CsvFileError, delimiter_named, load_mapping
from services.importing.importer import ImportOptions, ImportRefused, import_csv
from services.importing.mapping import MappingError

MAX_UPLOAD_BYTES = 1 << 30  # 1 GiB: about ten million rows


@dataclass
class ImportUpload:
    """``file``: the CSV; ``mapping``: an optional JSON or YAML mapping file."""

    file: UploadFile
    mapping: UploadFile | None = None


def _uploaded(error: Exception, folder: Path) -> str:
    """The error's sentence about the uploaded files, without the server's folder."""
    return str(error).replace(f"{folder}/", "")


def _keep(upload: UploadFile, folder: Path, fallback: str) -> Path:
    name = Path(upload.filename or fallback).name or fallback
    path = folder / name
    upload.file.seek(0)
    with path.open("wb") as out:
        shutil.copyfileobj(upload.file, out)
    return path


@post("/imports", responses=error_responses(403, 413, 503),
      status_code=200, request_max_body_size=MAX_UPLOAD_BYTES, opt={"upload": True},
      summary="Import a CSV file of contacts (admin)",
      description="Multipart form: `file` (the CSV) and optionally `mapping` (a JSON or "
      "YAML mapping file). Every row is validated; accepted rows are published as "
      "contact_updated (plus list and consent events) with ids derived from the file and "
      "the row, so uploading the same file twice changes nothing. The answer is the "
      "import's report, with the first rejected rows (line, column, reason).")
async def import_route(
    tenant: FromPath[str], ctx: Ctx, admin: Caller,
    data: Annotated[ImportUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
    dry_run: FromQuery[bool] = False,
    all_or_nothing: FromQuery[bool] = False,
    ignore_unknown_columns: FromQuery[bool] = False,
    occurred_at: Annotated[str | None, instant_parameter(
        "The events' occurred_at (default: when the import starts)")] = None,
    encoding: Annotated[str, Parameter(
        max_length=40, description="The file's encoding, e.g. cp1252.")] = "utf-8",
    delimiter: Annotated[str | None, Parameter(
        description="Cell delimiter: , ; | or tab (default: the header's commonest).")] = None,
) -> Any:
    moment = instant(occurred_at, "occurred_at")
    try:
        delimiter = delimiter_named(delimiter)
    except CsvFileError as error:
        raise ApiError(400, "invalid_request", f"delimiter: {error}", "delimiter") from None
    folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="ficha-import-"))
    try:
        csv_path = await asyncio.to_thread(_keep, data.file, folder, "upload.csv")
        mapping = None
        if data.mapping is not None:
            mapping_path = await asyncio.to_thread(_keep, data.mapping, folder, "mapping.json")
            mapping = await asyncio.to_thread(load_mapping, mapping_path)
        options = ImportOptions(source="api-import", dry_run=dry_run, occurred_at=moment,
                                all_or_nothing=all_or_nothing, encoding=encoding,
                                delimiter=delimiter,
                                ignore_unknown_columns=ignore_unknown_columns,
                                mapping_processes=0)
        definitions = await asyncio.to_thread(ctx.tenants.settings, tenant)
        report = await import_csv(csv_path, tenant=tenant,
                                  js=None if dry_run else await ctx.bus.js(), mapping=mapping,
                                  options=options, definitions=definitions,
                                  name=data.file.filename or "upload.csv")
    except MappingError as error:
        raise ApiError(400, "invalid_mapping", _uploaded(error, folder), "mapping") from None
    except (CsvFileError, ImportRefused) as error:
        raise ApiError(400, "invalid_file", _uploaded(error, folder), "file") from None
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)
    if not report.completed:
        raise ApiError(503, "import_stopped",
                       f"the import stopped after {report.rows_published} rows were published "
                       f"({report.stopped}); uploading the same file again is safe: rows "
                       "already published are not applied twice")
    return report


ROUTES = [import_route]
