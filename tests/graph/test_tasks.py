"""The run's task ledger: tasks submitted by one step, awaited where needed or at the end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from image3_dask.graph.tasks import RunWatcher, StepFailed, TaskLedger, TaskSpec
from image3_dask.io.asn import Association
from image3_dask.pipeline.config import PipelineConfig
from image3_dask.pipeline.context import RunContext


def _write_after(path: str, seconds: float) -> str:
    time.sleep(seconds)
    Path(path).write_text("done")
    return path


def _fail(message: str) -> None:
    raise ValueError(message)


class _States(RunWatcher):
    def __init__(self):
        self.states = []

    def task_event(self, key, state):
        self.states.append((key[0], state))


def _ctx(client, tmp_path, watcher=None) -> RunContext:
    asn = Association(product_name="p", asn_id="a3001", members=[])
    return RunContext(
        client=client,
        config=PipelineConfig({}),
        asn=asn,
        output_dir=tmp_path,
        work_dir=tmp_path / "work",
        progress=False,
        tasks=TaskLedger(client, "t" + tmp_path.name[-8:], progress=False, watcher=watcher),
    )


def test_deferred_tasks_run_while_the_client_goes_on(client, tmp_path):
    watcher = _States()
    ctx = _ctx(client, tmp_path, watcher)
    out = tmp_path / "late.txt"
    ctx.submit([TaskSpec("late-write", "x", _write_after, (str(out), 1.0))])
    assert not out.exists()  # submit returned before the task finished
    ctx.finish_pending()
    assert out.read_text() == "done" and ctx.pending == []
    time.sleep(0.2)  # the done callback runs on the client's thread
    assert watcher.states == [("late-write", "waiting"), ("late-write", "done")]


def test_a_failed_deferred_task_fails_the_run_and_names_itself(client, tmp_path):
    ctx = _ctx(client, tmp_path)
    ctx.submit([TaskSpec("resample-fits", "p", _fail, ("disk full",))])
    with pytest.raises(StepFailed, match="resample-fits p failed: ValueError: disk full"):
        ctx.finish_pending()


def test_cancel_pending(client, tmp_path):
    ctx = _ctx(client, tmp_path)
    out = tmp_path / "never.txt"
    futures = ctx.submit([TaskSpec("slow-write", "x", _write_after, (str(out), 5.0))])
    ctx.cancel_pending()
    assert ctx.pending == []
    time.sleep(0.2)
    assert futures[0].status == "cancelled"


def _add(a: int, b: int) -> int:
    return a + b


def test_tasks_follow_futures_and_after_without_the_client_waiting(client, tmp_path):
    ctx = _ctx(client, tmp_path)
    out = tmp_path / "first.txt"
    (first,) = ctx.submit([TaskSpec("write", "first", _write_after, (str(out), 0.5))])
    # reads the file the first task writes: must follow it although it takes no result of it
    (second,) = ctx.submit(
        [TaskSpec("read", "second", Path.read_text, (out,), after=[first])]
    )
    (third,) = ctx.submit([TaskSpec("add", "third", _add, kwargs={"a": 1, "b": 2})])
    (fourth,) = ctx.submit([TaskSpec("add", "fourth", _add, kwargs={"a": third, "b": 10})])
    assert ctx.wait([second, fourth], "both") == ["done", 13]
    reports = []
    ctx.on_finish(lambda: reports.append(ctx.tasks.results([third])))
    ctx.finish_pending()
    assert reports == [[3]] and ctx.pending == []


def test_a_failure_names_the_task_that_failed_not_the_one_waited_for(client, tmp_path):
    ctx = _ctx(client, tmp_path)
    (bad,) = ctx.submit([TaskSpec("outlier-flag", "exp2", _fail, ("no space left",))])
    (later,) = ctx.submit([TaskSpec("resample-tile", "r000c000", _add, (1, 2), after=[bad])])
    with pytest.raises(StepFailed, match="outlier-flag exp2 failed: ValueError: no space left"):
        ctx.wait([later], "tiles")
