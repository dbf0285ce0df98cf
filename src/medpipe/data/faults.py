"""Faults of the machine are not bad data: they end the job instead of quarantining a case.

A full disk, an exceeded quota, a read-only file system, an I/O error or exhausted memory says
nothing about the case being ingested: quarantining it would publish a store without a good case
(and, with a disk full from the start, blame every case). Such an error, wherever it surfaces
(raised by zarr while writing a chunk, or wrapped in a reader's ``ReadError``), ends the ingest
with one line naming the path; the partial store is removed and nothing is published, so the
rerun after the fault is fixed builds the whole store. Only errors about a case's content
(unreadable, inconsistent, non-finite ...) quarantine it.
"""

from __future__ import annotations

import errno

from medpipe.errors import MedpipeError

#: errno values of the machine, never of a case's content
FAULT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOMEM}


class IngestFault(MedpipeError, RuntimeError):
    """The machine failed (disk full, read-only, I/O error, out of memory); nothing was published."""

    exit_code = 1  # a machine fault, not bad input


def machine_fault(exc: BaseException) -> BaseException | None:
    """The out-of-space, read-only, I/O or out-of-memory error behind ``exc`` (itself or a cause), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in FAULT_ERRNOS):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def raise_if_fault(exc: BaseException, dataset: str, case_id: str) -> None:
    """Re-raise a machine fault behind ``exc`` as :class:`IngestFault` (one line naming the path)."""
    fault = machine_fault(exc)
    if fault is None:
        return
    if isinstance(fault, MemoryError):
        what = f"out of memory ({fault})" if str(fault) else "out of memory"
        where = f"datasets.{dataset}, case {case_id!r}"
    else:
        what = fault.strerror or errno.errorcode.get(fault.errno, str(fault.errno))
        where = fault.filename or f"datasets.{dataset}, case {case_id!r}"
    raise IngestFault(f"{where}: {what} while ingesting case {case_id!r} of {dataset}; the ingest stopped and "
                      "published nothing (no case was quarantined for it): fix the fault and rerun") from exc
