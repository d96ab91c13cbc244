"""The job history read back read-only (drd status, drd report) from any directory name,
without ever writing to the file the daemon owns."""

from __future__ import annotations

from pathlib import Path

import pytest

from drd.daemon.history import History, HistoryReader, read_finished

# Characters a sqlite URI would take for its query, its fragment or an escape.
AWKWARD = ["state?mode=rw", "state#1", "state%41", "st ate"]


@pytest.mark.parametrize("name", AWKWARD)
def test_readers_open_the_history_whatever_the_directory_is_called(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / name / "history.sqlite"
    history = History(path)
    done = history.start("backup", "p", "s", now=100.0)
    history.finish(done, "success", backup_id="B1", now=110.0)
    running = history.start("backup", "p", "s", now=200.0)
    history.close()

    reader = HistoryReader(path)
    try:
        last = reader.last("backup", "p", "s")
        assert last is not None and last.backup_id == "B1"
        assert [r.id for r in reader.unfinished()] == [running]
    finally:
        reader.close()
    assert [r.backup_id for r in read_finished(path, "backup", "p", since=0.0)] == ["B1"]
    # Nothing was created beside it by a URI read the wrong way.
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_the_reader_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    history = History(path)
    history.start("backup", "p", "s", now=1.0)
    history.close()
    reader = HistoryReader(path)
    try:
        with pytest.raises(Exception, match="readonly"):
            reader._db.execute("DELETE FROM jobs")
    finally:
        reader.close()
