"""Faults fail, bad data is quarantined (issue 19, item 3): a full disk never blames a case."""

import errno

import pytest

import medpipe.data.ingest as ingest
from medpipe import cli
from medpipe.data.faults import IngestFault
from medpipe.io.readers import ReadError
from medpipe.store import DatasetStore

from test_ingest import dataset_2d, run_ingest, write_config  # noqa: F401 (fixture)


def fail_writes_from_case(monkeypatch, number, error):
    """Every chunk write of the ``number``-th case and later raises ``error`` (a disk that fills up)."""
    real, cases = ingest._ingest_case, []

    def counting(group, case, *args):
        cases.append(case.case_id)
        return real(group, case, *args)

    def write(role, block, target, region, check):
        if len(cases) >= number:
            raise error
        return real_write(role, block, target, region, check)

    real_write = ingest._write_block
    monkeypatch.setattr(ingest, "_ingest_case", counting)
    monkeypatch.setattr(ingest, "_write_block", write)


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device", "out/ds.zarr.partial-1/cases/p1_img/image/c/0/0"),
    OSError(errno.EROFS, "Read-only file system", "out/ds.zarr.partial-1/cases/p1_img/label/c/0/0"),
    OSError(errno.EIO, "Input/output error", "out/ds.zarr.partial-1/x"),
    MemoryError(),
])
def test_a_fault_while_writing_ends_the_ingest_and_blames_no_case(dataset_2d, monkeypatch, error):  # noqa: F811
    root, spec = dataset_2d
    run_ingest(root, {**spec, "images": "images/p0_*"})  # an earlier, complete store and quarantine table
    table = (root / "out/ds.quarantine.tsv").read_text()
    fail_writes_from_case(monkeypatch, 2, error)
    with pytest.raises(IngestFault, match=r"while ingesting case 'p1_img' of ds; the ingest stopped") as caught:
        run_ingest(root, spec)
    if isinstance(error, OSError):
        assert str(caught.value).startswith(f"{error.filename}: {error.strerror}")
    assert DatasetStore(root / "out/ds.zarr").case_ids == ["p0_img"]  # nothing published
    assert sorted(p.name for p in (root / "out").iterdir()) == ["ds.quarantine.tsv", "ds.zarr"]
    assert (root / "out/ds.quarantine.tsv").read_text() == table  # no good case blamed


def test_a_disk_full_from_the_start_is_one_line_and_exit_1(dataset_2d, monkeypatch, capsys):  # noqa: F811
    root, spec = dataset_2d
    config = write_config(root, spec)
    fail_writes_from_case(monkeypatch, 1, OSError(errno.ENOSPC, "No space left on device", "out/ds.zarr.p/c/0"))
    assert cli.main(["ingest", "--config", str(config), "--dataset", "ds", "--out", "out/ds.zarr",
                     "--quarantine", "out/ds.quarantine.tsv"]) == 1
    # the error contract: one line on stderr, besides the progress bars
    errors = [line for line in capsys.readouterr().err.strip().splitlines() if "case/s]" not in line]
    assert len(errors) == 1 and errors[0].startswith("out/ds.zarr.p/c/0: No space left on device"), errors
    assert not (root / "out/ds.zarr").exists() and not (root / "out/ds.quarantine.tsv").exists()


def test_a_fault_behind_a_readers_error_is_a_fault_and_bad_content_is_still_quarantined(dataset_2d,  # noqa: F811
                                                                                         monkeypatch):
    root, spec = dataset_2d
    (root / "images/p2_img.png").write_bytes(b"not a png")  # bad content: quarantined, the rest goes on
    report, store, rows = run_ingest(root, spec)
    assert store.case_ids == ["p0_img", "p1_img"] and [r.case_id for r in rows] == ["p2_img"]

    def read_fails(group, case, *args):
        try:
            raise OSError(errno.EIO, "Input/output error", case.image_text)
        except OSError as exc:
            raise ReadError(f"{case.image_text}: cannot read") from exc

    monkeypatch.setattr(ingest, "_ingest_case", read_fails)
    with pytest.raises(IngestFault, match="Input/output error"):
        run_ingest(root, spec)
