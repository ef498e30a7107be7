"""The Ray Data engine of ``vspbfr batch --engine ray`` (``pip install "vspbfr[ray]"``).

:func:`run_ray` turns the items into a Ray Dataset of plain dicts (input, output, rel, done_sha256: only paths
travel; each worker reads its inputs and writes its outputs itself through :class:`~.files.FileRestorer`, so the
driver's memory does not grow with the size of the archive) and maps it with an actor pool:

* one actor per worker (``workers``), each reserving ``gpus_per_worker`` GPUs and ``cpus_per_worker`` CPUs
  (fractions work); an actor builds its :class:`~.files.FileRestorer` (networks, detector, embedder, reference)
  once, then restores ``batch_size`` inputs per call;
* each input is tried as :func:`~.jobs.run_local` tries it (the same function runs inside the actor): a failure
  that is not a bad input is tried again up to ``retries`` more times, and the input gives exactly one result;
* a worker process that dies (killed, out of memory, a lost node) is restarted and its batch is run again (Ray
  Data's actor pool creates its actors with ``max_restarts=-1`` and ``max_task_retries=-1``): the inputs of that
  batch that were already written are found byte-identical and not written again, and each input still gives
  exactly one result;
* results stream back to the caller as batches finish (never gathered in memory), in no particular order.

Cluster: ``address`` (``auto`` on a node of a running cluster, ``ray://HOST:PORT`` through Ray Client) is passed to
``ray.init``; without one, ``ray.init()`` starts a local cluster on this machine (or joins the cluster that the
``RAY_ADDRESS`` environment variable names, as Ray does).  When Ray is already initialised in this process (a
notebook, a test, a caller's own job) it is used as it is.  Only a Ray session started here is shut down at the end.

Threads and identical bytes: ``config.threads > 0`` (``--threads N``) makes every worker call
``torch.set_num_threads(N)``, as ``vspbfr restore --threads N`` does.  With ``threads == 0`` the thread count is
left to Ray, which sets ``OMP_NUM_THREADS`` in each worker from its ``num_cpus`` (at least 1): CPU results can then
differ in the last bits from those of ``vspbfr restore`` or the local engine, which use all cores.  **Give
``--threads N`` (the same N to every command) when the outputs must be byte-identical across engines**; the
engine logs a warning when it runs with ``threads == 0``.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, fields
from typing import Any

from .._lazy import optional_import
from ..errors import VSPBFRError
from .files import BatchConfig, BatchItem, ItemResult

__all__ = ["run_ray"]

log = logging.getLogger(__name__)

_INSTALL = 'pip install "vspbfr[ray]"'
_warned_threads = False


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or :class:`MissingPackageError` saying what to install."""
    optional_import("ray.data", f"the Ray engine (--engine ray) needs the Python package ray with Ray Data: {_INSTALL}")
    import ray

    return ray


def _row_schema() -> Any:
    """The Arrow schema of a result row: every :class:`ItemResult` field, typed, so that empty identity lists and
    None values keep their types in every block."""
    import pyarrow as pa

    types = {"input": pa.string(), "output": pa.string(), "options": pa.string(), "status": pa.string(),
             "input_sha256": pa.string(), "faces": pa.int32(), "identity_input": pa.list_(pa.float64()),
             "identity_reference": pa.list_(pa.float64()), "seconds": pa.float64(), "worker": pa.string(),
             "error": pa.string(), "attempts": pa.int32(), "written": pa.bool_(), "retry": pa.bool_()}
    return pa.schema([(f.name, types[f.name]) for f in fields(ItemResult)])


def rows_table(results: Iterable[ItemResult]) -> Any:
    """The results as a pyarrow Table with :func:`_row_schema` (what an actor returns for a batch)."""
    import pyarrow as pa

    return pa.Table.from_pylist([asdict(r) for r in results], schema=_row_schema())


def result_from_row(row: dict[str, Any]) -> ItemResult:
    """An :class:`ItemResult` back from a row of :func:`rows_table` (lists as lists, None as None)."""
    values = {f.name: row[f.name] for f in fields(ItemResult) if f.name in row}
    for name in ("identity_input", "identity_reference"):
        values[name] = list(values.get(name) or [])
    return ItemResult(**values)


class _Restore:
    """The callable class of ``map_batches``: one :class:`FileRestorer` per actor, a batch of item rows in, a batch
    of result rows out."""

    def __init__(self, config: BatchConfig, retries: int) -> None:
        from .files import FileRestorer

        self.restorer = FileRestorer(config)
        self.retries = retries

    def __call__(self, batch: Any) -> Any:
        from .jobs import run_local

        items = [BatchItem(r["input"], r["output"], r.get("rel") or "", r.get("done_sha256"))
                 for r in batch.to_pylist()]
        return rows_table(run_local(self.restorer, items, self.retries))


def _warn_threads(config: BatchConfig) -> None:
    global _warned_threads
    if config.threads == 0 and not _warned_threads:
        _warned_threads = True
        log.warning("the ray engine runs with --threads 0: each worker's thread count then follows its "
                    "--cpus-per-worker (Ray sets OMP_NUM_THREADS), and CPU outputs can differ in the last bits "
                    "from vspbfr restore and the local engine; give --threads N for byte-identical outputs")


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]


def _user_error(exc: BaseException) -> BaseException | None:
    """What to tell the user when a Ray job fails: the VSPBFRError the Ray error carries, or, for a worker whose
    pipeline failed to load (bad models folder, ...) when Ray kept only the text, a VSPBFRError with its last line."""
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, VSPBFRError):
            return e
    for e in chain:
        if getattr(e, "actor_init_failed", False):
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            last = next((ln for ln in reversed(lines) if "Error: " in ln), lines[-1] if lines else type(e).__name__)
            return VSPBFRError(f"a Ray worker could not start: {last.split('vspbfr_core.errors.', 1)[-1]}")
    return None


def run_ray(config: BatchConfig, items: Iterable[BatchItem], *, retries: int = 1, workers: int = 1,
            gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0, batch_size: int = 4,
            address: str | None = None) -> Iterator[ItemResult]:
    """Restore ``items`` on a Ray cluster (see the module); yields one :class:`ItemResult` per item as it is done.

    ``MissingPackageError`` (raised here, before anything runs) when ray is not installed."""
    ray = import_ray()
    items = list(items)
    _warn_threads(config)
    return _run(ray, config, items, retries=retries, workers=workers, gpus_per_worker=gpus_per_worker,
                cpus_per_worker=cpus_per_worker, batch_size=batch_size, address=address)


def _run(ray: Any, config: BatchConfig, items: list[BatchItem], *, retries: int, workers: int,
         gpus_per_worker: float, cpus_per_worker: float, batch_size: int, address: str | None
         ) -> Iterator[ItemResult]:
    if not items:
        return
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            ray.init()
        started = True
    try:
        ds = ray.data.from_items([{"input": i.input, "output": i.output, "rel": i.rel, "done_sha256": i.done_sha256}
                                  for i in items])
        # actor restarts and task retries: Ray Data's actor pool creates its actors with max_restarts=-1 and
        # max_task_retries=-1 (extra remote arguments to map_batches are deprecated in Ray 2.60)
        results = ds.map_batches(_Restore, fn_constructor_args=(config, retries), batch_size=batch_size,
                                 batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
                                 num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None)
        try:
            for block in results.iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in block.to_pylist():
                    yield result_from_row(row)
        except Exception as exc:
            user = _user_error(exc)
            if user is not None and user is not exc:
                raise user from exc
            raise
    finally:
        if started:
            ray.shutdown()
