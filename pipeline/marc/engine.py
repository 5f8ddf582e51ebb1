"""The streaming engine: input -> detect -> frame -> parse -> rules -> encode -> sink, in flat memory.

The main process unwraps containers and writes results in input order. In one process (one core,
small inputs) it frames raw records and runs parsing, the rules and encoding on batches of them.
With a pool of worker processes (large inputs) it only cuts the stream into chunks of whole
records, and each worker frames its chunk with the same code (readers.py), then parses, applies
the rules and encodes: framing record by record in the main process kept a second core waiting.
At most `2 x workers` batches or chunks are in flight, so memory stays bounded whatever the input
size. Workers build their own encoder and get the run's compiled rules once (a RuleSet is pickled
as its text).

Without rules, MARC 21 -> MARC 21 and MARCXML -> MARCXML records that are already in the writer's
form are copied instead of parsed and re-encoded (`_passthrough`; same bytes, several times faster),
and their bytes do not travel back from the workers: the main process still holds them. With rules,
MARCXML -> MARCXML still re-uses the parsed text of every data field the rules left unchanged
(`MarcXmlEncoder.encode_reusing`) instead of formatting and escaping it again.

Every record ends in exactly one of: written, dropped by the rules, or rejected. A rejected record
goes to `<stem>.rejects.<ext>` in its original form and to `<stem>.rejects.jsonl` with the reason;
it never stops the stream. A file-level problem (unknown format, XML broken beyond one record, a
decompression cap) fails that file: its main output is aborted (nothing under the final name),
rejects found so far are kept, and the FileResult carries the error.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.destinations.base import Destination, DestinationError, OutputResult
from pipeline.marc import marcxml
from pipeline.marc.detect import CountingReader, Member, max_expanded_default, max_members_default, open_members
from pipeline.marc.encoders import Encoder, get_encoder
from pipeline.marc.framing import Chunk, Frame, InputError
from pipeline.marc.readers import Framing, reader
from pipeline.marc.record import Record, RecordError
from pipeline.marc.report import FileResult, RunReport
from pipeline.marc.sinks import FileSink, Sink, SinkFactory

log = logging.getLogger(__name__)

BATCH_RECORDS = 500
BATCH_BYTES = 512 << 10
AUTO_PARALLEL_BYTES = 4 << 20  # smaller inputs are not worth starting worker processes

OK, DROP, REJECT, RUN, COPY = 0, 1, 2, 3, 4


@dataclass
class Input:
    """One input file: a name (for messages and the output stem) and how to open it as a byte stream."""

    name: str
    open: Callable[[], BinaryIO]
    size: int | None = None

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> Input:
        p = Path(path)
        return cls(p.name, lambda: open(p, "rb"), p.stat().st_size)


# --- the per-batch work (same code in this process and in workers) ---------------------------------
Transform = Callable[[Record], Record | None]


def load(rules: Transform | None, rules_path: str | os.PathLike[str] | None) -> Transform | None:
    """The compiled rules of a run: `rules` as given, else the file at `rules_path` compiled here, once
    (a RuleSet travels to worker processes as its text and is compiled there once each)."""
    if rules is not None or not rules_path:
        return rules
    from pipeline.rules import load_rules

    return load_rules(rules_path)


class Work:
    """The encoder and transform of a run, built once per process."""

    def __init__(self, fmt: str, options: dict[str, Any] | None, rules: Transform | None) -> None:
        self.encoder: Encoder = get_encoder(fmt, **(options or {}))
        self.transform: Transform | None = rules

    def counters(self) -> dict[str, int]:
        """The encoder's counters since the last call (then reset)."""
        counters = getattr(self.encoder, "counters", None)
        if not counters:
            return {}
        taken = {k: v for k, v in counters.items() if v}
        for k in counters:
            counters[k] = 0
        return taken


def run_batch(work: Work, input_format: str, context: Any, batch: list[tuple[int, Frame]],
              want_records: bool) -> tuple[list[tuple], dict[str, int]]:
    """Parse, transform and encode one batch. Outcomes, in order: `(OK, index, data, record)`,
    `(DROP, index)`, `(REJECT, index, stage, error, id, reason)`; without `want_records`, consecutive written
    records come as one `(RUN, count, data)` (cheaper to send back from a worker), and consecutive
    records whose output is their own input bytes plus `suffix` (the pass-through) as `(COPY, count,
    suffix)`: the main process still holds those bytes, so they need not travel back at all.

    The cyclic garbage collector is paused for the batch: records hold no reference cycles (they are
    freed by reference counting), and collections triggered by their many small objects would
    otherwise cost a third of the time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _run_batch(work, input_format, context, batch, want_records)
    finally:
        if enabled:
            gc.enable()


def _passthrough(work: Work, input_format: str, context: Any,
                 want_records: bool) -> tuple[Callable[[bytes], bytes | None], bytes] | None:
    """The pass-through for this batch, if any: `(copy, suffix)`, where `copy(raw)` gives a record's
    output bytes, less `suffix`, straight from its input bytes (None for a record it cannot vouch
    for; `raw` itself when the output is `raw + suffix`). Only without rules, without a sink that
    wants Records, and for exactly the engine's own writer of the input's format: then parse +
    encode is a round trip, and most records are already in the writer's form."""
    if work.transform is not None or want_records:
        return None
    return reader(input_format).copy(work.encoder, context)


def _run_batch(work: Work, input_format: str, context: Any, batch: list[tuple[int, Frame]],
               want_records: bool) -> tuple[list[tuple], dict[str, int]]:
    passthrough = _passthrough(work, input_format, context, want_records)
    copied: dict[int, bytes] = {}
    suffix = b""
    if passthrough is not None:
        copy, suffix = passthrough
        for index, frame in batch:
            if frame.error is None:
                data = copy(frame.raw)  # type: ignore[arg-type]  # a frame without error has raw bytes
                if data is not None:
                    copied[index] = data
    good = [f.raw for i, f in batch if f.error is None and i not in copied]
    encoder, transform = work.encoder, work.transform
    encode: Callable[[Record], bytes] = encoder.encode
    fragments: marcxml.Fragments | None = None
    read = reader(input_format)
    if read.reuses_text and type(encoder) is marcxml.MarcXmlEncoder:
        # MARCXML -> MARCXML: the writer reuses the parsed text of the fields the rules left alone
        fragments = {}
        encode = partial(encoder.encode_reusing, fragments=fragments)
    salvaged: dict[str, int] = {}
    parsed = iter(read.parse(context, good, fragments, salvaged)) if good else iter(())  # type: ignore[arg-type]
    outcomes: list[tuple] = []
    for index, frame in batch:
        if frame.error is not None:
            outcomes.append((REJECT, index, "read", frame.error, read.salvage(frame.raw),
                             frame.reason or "read-error"))
            continue
        if copied:
            data = copied.get(index)
            if data is frame.raw:
                if outcomes and outcomes[-1][0] == COPY:
                    outcomes[-1] = (COPY, outcomes[-1][1] + 1, suffix)
                else:
                    outcomes.append((COPY, 1, suffix))
                continue
            if data is not None:
                if outcomes and outcomes[-1][0] == RUN:
                    last = outcomes[-1]
                    last[2].append(data)
                    outcomes[-1] = (RUN, last[1] + 1, last[2])
                else:
                    outcomes.append((RUN, 1, [data]))
                if suffix:
                    outcomes[-1][2].append(suffix)
                continue
        item = next(parsed)
        if isinstance(item, RecordError):
            outcomes.append((REJECT, index, "read", str(item), read.salvage(frame.raw),
                             item.code or "read-error"))
            continue
        record: Record | None = item
        if transform is not None:
            try:
                record = transform(item)
            except RecordError as exc:
                outcomes.append((REJECT, index, "rules", str(exc), item.id, exc.code or "rules-reject"))
                continue
            except Exception as exc:  # a rule or plugin bug costs this record, reported with its type
                outcomes.append((REJECT, index, "rules", f"{type(exc).__name__}: {exc}", item.id, "rules-exception"))
                continue
            if record is None:
                outcomes.append((DROP, index))
                continue
        try:
            data = encode(record)
        except RecordError as exc:
            outcomes.append((REJECT, index, "write", str(exc), record.id, exc.code or "write-error"))
            continue
        except Exception as exc:
            outcomes.append((REJECT, index, "write", f"{type(exc).__name__}: {exc}", record.id, "write-exception"))
            continue
        if want_records:
            outcomes.append((OK, index, data, record))
        elif outcomes and outcomes[-1][0] == RUN:  # consecutive records travel as one bytes object
            last = outcomes[-1]
            last[2].append(data)
            outcomes[-1] = (RUN, last[1] + 1, last[2])
        else:
            outcomes.append((RUN, 1, [data]))
    if not want_records:
        outcomes = [(RUN, o[1], b"".join(o[2])) if o[0] == RUN else o for o in outcomes]
    counters = work.counters()
    for key, value in salvaged.items():
        counters[key] = counters.get(key, 0) + value
    return outcomes, counters


_WORKER: Work | None = None


def _worker_init(fmt: str, options: dict[str, Any] | None, rules: Transform | None) -> None:
    global _WORKER
    _WORKER = Work(fmt, options, rules)


def _worker_batch(input_format: str, context: Any, batch: list[tuple[int, Frame]],
                  want_records: bool) -> tuple[list[tuple], dict[str, int], int]:
    assert _WORKER is not None
    outcomes, counters = run_batch(_WORKER, input_format, context, batch, want_records)
    return outcomes, counters, peak_rss_kb()


def run_chunk(work: Work, input_format: str, context: Any, chunk_context: Any, chunk: Chunk,
              want_records: bool) -> tuple[list[tuple], dict[str, int], dict[int, Frame], int, str | None]:
    """Frame a chunk exactly as the main process would have, then run its records as one batch.

    Returns the outcomes indexed from 0 within the chunk, with copied records already joined (the
    main process does not hold them); the frames of rejected records and of records sent back
    whole (their raw bytes and offsets go to the rejects if the sink refuses them); the number of
    records; and the file-level error framing met, if any (the records before it are still in the
    outcomes, as when the main process frames)."""
    frames: list[Frame] = []
    error = None
    try:
        frames.extend(reader(input_format).frame_chunk(chunk_context, chunk))  # type: ignore[misc]
    except InputError as exc:
        error = str(exc)
    outcomes, counters = run_batch(work, input_format, context, list(enumerate(frames)), want_records) \
        if frames else ([], {})
    out: list[Any] = []  # a run is gathered as [RUN, count, pieces] and joined once at the end
    rejected: dict[int, Frame] = {}
    n = 0
    for outcome in outcomes:
        kind = outcome[0]
        if kind == COPY:
            count = outcome[1]
            _add_run(out, count, copied([frame.raw for frame in frames[n:n + count]], outcome[2]))
            n += count
            continue
        if kind == REJECT or kind == OK:
            rejected[outcome[1]] = frames[outcome[1]]
        if kind == RUN:
            _add_run(out, outcome[1], outcome[2])
        else:
            out.append(outcome)
        n += outcome[1] if kind == RUN else 1
    joined = [(RUN, o[1], b"".join(o[2])) if o[0] == RUN else o for o in out]
    return joined, counters, rejected, len(frames), error


def copied(raws: list[bytes], suffix: bytes | None) -> bytes:
    """The output of records copied through: their input bytes, each followed by the writer's suffix."""
    return suffix.join(raws) + suffix if suffix else b"".join(raws)


def _add_run(out: list[Any], count: int, data: bytes) -> None:
    if out and out[-1][0] == RUN:
        out[-1][1] += count
        out[-1][2].append(data)
    else:
        out.append([RUN, count, [data]])


def _worker_chunk(input_format: str, context: Any, chunk_context: Any, chunk: Chunk,
                  want_records: bool) -> tuple[list[tuple], dict[str, int], dict[int, Frame], int, str | None, int]:
    assert _WORKER is not None
    return (*run_chunk(_WORKER, input_format, context, chunk_context, chunk, want_records), peak_rss_kb())


def peak_rss_kb() -> int:
    """This process's peak RSS in KiB. /proc's VmHWM is per process image; ru_maxrss would include the
    parent's peak inherited at fork/exec."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class WorkerPool:
    """Worker processes for one run.

    `fork` starts fastest and is used when this process runs a single thread (the CLI); in a
    threaded host (Azure Functions' worker) forking could copy a held lock, so `forkserver` is used,
    which, like `spawn`, imports the caller's `__main__` module in the workers (scripts need the
    usual `if __name__ == "__main__":` guard).
    """

    def __init__(self, workers: int, fmt: str, options: dict[str, Any] | None, rules: Transform | None) -> None:
        import multiprocessing
        import threading

        methods = multiprocessing.get_all_start_methods()
        if "fork" in methods and threading.active_count() == 1:
            method = "fork"
        else:
            method = "forkserver" if "forkserver" in methods else "spawn"
        self.workers = workers
        self.peak_rss_kb = 0
        self._executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                             initializer=_worker_init, initargs=(fmt, options, rules))

    def submit(self, *args: Any) -> Future:
        return self._executor.submit(_worker_batch, *args)

    def submit_chunk(self, *args: Any) -> Future:
        return self._executor.submit(_worker_chunk, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- rejects ------------------------------------------------------------------------------------------
class _Rejects:
    """`<stem>.rejects.<ext>` (original bytes) and `<stem>.rejects.jsonl` (reasons), opened on first use."""

    def __init__(self, destination: Destination, name: str, stem: str, ext: str,
                 wrapper: Callable[[], tuple[bytes, bytes]]) -> None:
        self._destination, self._name, self._stem, self._ext, self._wrapper = destination, name, stem, ext, wrapper
        self._raw: FileSink | None = None
        self._log: FileSink | None = None

    def add(self, index: int, offset: int | None, record_id: str | None, stage: str, error: str,
            raw: bytes | None, member: str, reason: str) -> None:
        if self._log is None:
            header, footer = self._wrapper()
            self._raw = FileSink(self._destination, f"{self._stem}.rejects.{self._ext}", header, footer)
            self._log = FileSink(self._destination, f"{self._stem}.rejects.jsonl", b"", b"")
            self._raw.begin()
            self._log.begin()
        assert self._raw is not None
        if raw is not None:
            self._raw.write(raw if self._ext != "xml" else raw + b"\n")
        entry = {"input": member, "index": index, "offset": offset, "id": record_id, "stage": stage,
                 "reason": reason, "error": error}
        if raw is None and stage == "read":
            entry["raw"] = "not kept (too large)"
        # backslashreplace: a lone surrogate (from a JSON record's \\ud800) stays a valid JSON escape
        self._log.write(json.dumps(entry, ensure_ascii=False).encode("utf-8", "backslashreplace") + b"\n")

    def end(self) -> list[OutputResult]:
        if self._log is None:
            return []
        assert self._raw is not None
        results = []
        for sink, kind in ((self._raw, "rejects"), (self._log, "rejects-log")):
            for result in sink.end():
                result.extra["kind"] = kind
                results.append(result)
        return results

    def abort(self) -> None:
        for sink in (self._raw, self._log):
            if sink is not None:
                sink.abort()


# --- one member of an input ---------------------------------------------------------------------------
class _MemberRun:
    """State for one member (a plain file, or one file inside an archive)."""

    def __init__(self, member: Member, stem: str, first_index: int, start_record: int, destination: Destination,
                 encoder: Encoder, sink_factory: SinkFactory, result: FileResult) -> None:
        self.member = member
        self.first_index = first_index
        self.start_record = start_record
        self.destination = destination
        self.encoder = encoder
        self.sink_factory = sink_factory
        self.result = result
        self.sink: Sink | None = None
        self.reader = reader(member.format)
        self.framer: Framing = self.reader.framing(member.stream)
        suffix = f".from-{start_record}" if start_record else ""
        self.rejects = _Rejects(destination, member.name, stem + suffix, self.reader.reject_ext,
                                self.framer.rejects_wrapper)
        self.stem = stem

    def frames(self, chunked: bool = False) -> Iterator[Frame | Chunk]:
        return self.framer.frames(chunked and self.reader.frame_chunk is not None)

    def context(self) -> Any:
        return self.framer.context()

    def open_sink(self) -> Sink:
        if self.sink is None:
            write_header = self.first_index >= self.start_record
            self.sink = self.sink_factory(self.destination, self.stem, self.encoder, write_header)
            self.sink.begin()
        return self.sink

    def deliver(self, batch: list[tuple[int, Frame]], outcomes: list[tuple], counters: dict[str, int]) -> None:
        result = self.result
        sink = self.open_sink()
        frames: dict[int, Frame] | None = None
        n = 0
        for outcome in outcomes:
            kind = outcome[0]
            if kind == COPY:  # output = the input bytes (+ suffix) of the next `count` frames
                count, suffix = outcome[1], outcome[2]
                sink.record(None, copied([frame.raw for _, frame in batch[n:n + count]], suffix))
                result.records_out += count
                n += count
            elif kind == RUN:
                sink.record(None, outcome[2])
                result.records_out += outcome[1]
                n += outcome[1]
            elif kind == OK:
                n += 1
                try:
                    sink.record(outcome[3], outcome[2])
                except RecordError as exc:  # the sink cannot place this record (e.g. its per-record name)
                    frames = frames if frames is not None else dict(batch)
                    self._reject(frames[outcome[1]], outcome[1], outcome[3].id, "write", str(exc),
                                 exc.code or "write-error")
                    continue
                result.records_out += 1
            elif kind == DROP:
                result.dropped += 1
                n += 1
            else:
                n += 1
                if frames is None:
                    frames = dict(batch)
                _, index, stage, error, record_id, reason = outcome
                self._reject(frames[index], index, record_id, stage, error, reason)
        result.records_in += n
        for key, value in counters.items():
            result.counters[key] = result.counters.get(key, 0) + value

    def _reject(self, frame: Frame, index: int, record_id: str | None, stage: str, error: str, reason: str) -> None:
        self.rejects.add(index, frame.offset, record_id, stage, error, frame.raw, self.member.name, reason)
        self.result.rejected += 1
        self.result.rejected_by_reason[reason] = self.result.rejected_by_reason.get(reason, 0) + 1
        log.debug("%s: record %d rejected (%s): %s", self.member.name, index, stage, error)

    def finish(self, complete: bool) -> None:
        if self.sink is None and self.first_index >= self.start_record and "/" not in self.member.name:
            self.open_sink()  # an input without records still gets its (empty) output; an archive member not
        if self.sink is not None:
            self.result.outputs.extend(self.sink.end(complete))
            self.sink = None
        self.result.outputs.extend(self.rejects.end())

    def fail(self) -> None:
        if self.sink is not None:
            self.sink.abort()
            self.sink = None
        try:
            self.result.outputs.extend(self.rejects.end())
        except Exception:  # the destination is failing too: leave nothing half-written
            self.rejects.abort()


def _batches(frames: Iterable[Frame], first: int, start_record: int,
             counter: list[int]) -> Iterator[list[tuple[int, Frame]]]:
    """Group frames into batches, numbering them; frames before `start_record` are skipped unparsed."""
    batch: list[tuple[int, Frame]] = []
    size = 0
    index = first
    try:
        for frame in frames:
            index_now = index
            index += 1
            counter[0] = index
            if index_now < start_record:
                continue
            batch.append((index_now, frame))
            size += len(frame.raw) if frame.raw else 0
            if len(batch) >= BATCH_RECORDS or size >= BATCH_BYTES:
                yield batch
                batch = []
                size = 0
    except InputError:
        if batch:  # the records read before a file-level error are still processed and reported
            yield batch
        raise
    if batch:
        yield batch


def _pieces(items: Iterable[Frame | Chunk]) -> Iterator[list[tuple[int, Frame]] | Chunk]:
    """For workers that frame: chunks as they come, frames between them in batches numbered from 0
    (records are numbered when their results come back in order; a chunk's count is known only then)."""
    batch: list[tuple[int, Frame]] = []
    size = 0
    try:
        for item in items:
            if type(item) is Chunk:
                if batch:
                    yield batch
                    batch, size = [], 0
                yield item
                continue
            batch.append((len(batch), item))  # type: ignore[arg-type]
            size += len(item.raw) if item.raw else 0  # type: ignore[union-attr]
            if len(batch) >= BATCH_RECORDS or size >= BATCH_BYTES:
                yield batch
                batch, size = [], 0
    except InputError:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def _unique(stem: str, used: set[str]) -> str:
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


# --- public API -------------------------------------------------------------------------------------------
def process_file(
    input: Input,
    destination: Destination,
    *,
    fmt: str = "marcxml",
    rules_path: str | None = None,
    rules: Transform | None = None,
    encoder_options: dict[str, Any] | None = None,
    workers: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    start_record: int = 0,
    sink_factory: SinkFactory | None = None,
    max_expanded_bytes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    pool: WorkerPool | None = None,
    used_stems: set[str] | None = None,
    max_members: int | None = None,
) -> FileResult:
    """Process one input (every member of a container) into `destination`; never raises for bad data
    (`FileResult.error` says what failed). A `DestinationError` (delivery failed) is raised after the
    outputs in progress are aborted.

    `should_stop()` is checked between batches, once a first batch is done (so every call makes
    progress, however small the budget); when it returns True the run stops at a record
    boundary and returns `complete=False` with `records_done`. Call again with
    `start_record=records_done` to continue: earlier records are skipped unparsed and no header is
    written again (the sink decides how parts join). `progress(records, bytes_read)` is called after
    each batch. `pool` shares worker processes between files (see `process`). An archive with more
    than `max_members` members (default MAX_ARCHIVE_MEMBERS) fails the file.
    """
    started = time.monotonic()
    result = FileResult(name=input.name, records_done=start_record)
    rules = load(rules, rules_path)
    local = Work(fmt, encoder_options, rules)  # also validates format and options up front
    factory = sink_factory or FileSink.factory
    cap = max_expanded_bytes if max_expanded_bytes is not None else max_expanded_default()
    stems = used_stems if used_stems is not None else set()
    member_cap = max_members if max_members is not None else max_members_default()
    own_pool = None
    if pool is None:
        wanted = workers if workers is not None else (
            available_cores() if input.size is None or input.size >= AUTO_PARALLEL_BYTES else 1)
        if wanted > 1:
            own_pool = pool = WorkerPool(wanted, fmt, encoder_options, rules)
    counter = [0]  # next record index (across members)
    current: _MemberRun | None = None
    try:
        source = input.open()
    except OSError as exc:
        result.error = f"{input.name}: cannot open: {exc}"
        result.seconds = time.monotonic() - started
        if own_pool:
            own_pool.close()
        return result
    counting = CountingReader(source)
    try:
        for member in open_members(input.name, counting, max_expanded=cap):
            if len(result.members) >= member_cap:
                raise InputError(f"{input.name}: more than {member_cap} members (MAX_ARCHIVE_MEMBERS); "
                                 "not processed further")
            result.members.append(member.name)
            result.input_format = result.input_format or member.format
            current = _MemberRun(member, _unique(member.stem, stems), counter[0], start_record, destination,
                                 local.encoder, factory, result)
            if pool is not None and start_record <= counter[0]:  # workers frame: nothing to skip here
                stopped = _run_member_chunked(current, _pieces(current.frames(chunked=True)), pool, should_stop,
                                              progress, counting, counter)
            else:
                batches = _batches(current.frames(), counter[0], start_record, counter)
                stopped = _run_member(current, batches, local, pool, should_stop, progress, counting)
            if stopped is not None:
                current.finish(complete=False)
                result.complete = False
                result.records_done = stopped
                current = None
                break
            current.finish(complete=True)
            current = None
        else:
            result.records_done = max(counter[0], start_record)
    except DestinationError:  # not bad data: the caller decides (it knows whether retrying may help)
        if current is not None:
            current.fail()
            current = None
        raise
    except InputError as exc:
        result.error = str(exc) if input.name in str(exc) else f"{input.name}: {exc}"
    except OSError as exc:
        result.error = f"{input.name}: {exc}"
    except Exception as exc:  # a bug: fail this file with the reason, keep going with the others
        log.exception("processing %s failed", input.name)
        result.error = f"{input.name}: internal error: {type(exc).__name__}: {exc}"
    except BaseException:
        if current is not None:
            current.fail()
        raise
    finally:
        if own_pool:
            own_pool.close()
        result.bytes_in = counting.count
        try:
            source.close()
        except OSError:
            pass
    if result.error and current is not None:
        current.fail()
    result.seconds = time.monotonic() - started
    return result


def _run_member(run: _MemberRun, batches: Iterator[list[tuple[int, Frame]]], local: Work,
                pool: WorkerPool | None, should_stop: Callable[[], bool] | None,
                progress: Callable[[int, int], None] | None, counting: CountingReader) -> int | None:
    """Process the member's batches in order; return the next record index if stopped early, else None."""
    def done(batch: list[tuple[int, Frame]], outcomes: list[tuple], counters: dict[str, int]) -> None:
        run.deliver(batch, outcomes, counters)
        if progress is not None:
            progress(run.result.records_in, counting.count)

    if pool is None:
        for batch in batches:
            if should_stop is not None and run.result.records_in and should_stop():  # progress first
                return batch[0][0]
            context = run.context()
            want = bool(run.open_sink().wants_record)
            outcomes, counters = run_batch(local, run.member.format, context, batch, want)
            done(batch, outcomes, counters)
        return None
    inflight: deque[tuple[list[tuple[int, Frame]], Future]] = deque()
    limit = 2 * pool.workers
    stopped_at: int | None = None
    try:
        for batch in batches:
            if should_stop is not None and run.result.records_in and should_stop():  # progress first
                stopped_at = batch[0][0]
                break
            want = bool(run.open_sink().wants_record)  # records go back to the main process only if needed
            inflight.append((batch, pool.submit(run.member.format, run.context(), batch, want)))
            while len(inflight) >= limit:
                _collect(inflight.popleft(), done, pool)
        while inflight:
            _collect(inflight.popleft(), done, pool)
    finally:
        for _, future in inflight:
            future.cancel()
    return stopped_at


def _run_member_chunked(run: _MemberRun, pieces: Iterator[list[tuple[int, Frame]] | Chunk], pool: WorkerPool,
                        should_stop: Callable[[], bool] | None, progress: Callable[[int, int], None] | None,
                        counting: CountingReader, counter: list[int]) -> int | None:
    """`_run_member` with framing in the workers: chunks and batches are numbered as their results
    come back, in order (`counter[0]` is the next record's index)."""
    inflight: deque[tuple[list[tuple[int, Frame]] | Chunk, Future]] = deque()
    limit = 2 * pool.workers
    stopped = False

    def collect() -> None:
        item, future = inflight.popleft()
        base = counter[0]
        if type(item) is Chunk:
            outcomes, counters, rejected, count, error, rss = future.result()
            batch = [(base + i, frame) for i, frame in rejected.items()]
        else:
            outcomes, counters, rss = future.result()
            count, error = len(item), None
            batch = [(base + i, frame) for i, frame in item]  # type: ignore[union-attr]
        pool.peak_rss_kb = max(pool.peak_rss_kb, rss)
        outcomes = [(o[0], base + o[1], *o[2:]) if o[0] == REJECT or o[0] == OK else o for o in outcomes]
        run.deliver(batch, outcomes, counters)
        counter[0] = base + count
        if progress is not None:
            progress(run.result.records_in, counting.count)
        if error is not None:
            raise InputError(error)

    try:
        for item in pieces:
            if should_stop is not None and run.result.records_in and should_stop():  # progress first
                stopped = True
                break
            want = bool(run.open_sink().wants_record)  # records go back to the main process only if needed
            if type(item) is Chunk:
                future = pool.submit_chunk(run.member.format, run.context(), run.framer.chunk_context(), item, want)
            else:
                future = pool.submit(run.member.format, run.context(), item, want)
            inflight.append((item, future))
            while len(inflight) >= limit:
                collect()
        while inflight:
            collect()
    finally:
        for _, future in inflight:
            future.cancel()
    return counter[0] if stopped else None


def _collect(item: tuple[list[tuple[int, Frame]], Future], done: Callable[..., None], pool: WorkerPool) -> None:
    batch, future = item
    outcomes, counters, rss = future.result()
    pool.peak_rss_kb = max(pool.peak_rss_kb, rss)
    done(batch, outcomes, counters)


def process(
    inputs: Iterable[Input],
    destination: Destination,
    *,
    fmt: str = "marcxml",
    rules_path: str | None = None,
    rules: Transform | None = None,
    encoder_options: dict[str, Any] | None = None,
    workers: int | None = None,
    progress: bool = False,
    max_expanded_bytes: int | None = None,
    sink_factory: SinkFactory | None = None,
) -> RunReport:
    """Process every input into `destination` and write `report.json` there; one file's failure
    does not stop the others (see `RunReport.ok`)."""
    started = time.monotonic()
    inputs = list(inputs)
    rules = load(rules, rules_path)  # compiled once for the run: bad rules fail before any output
    Work(fmt, encoder_options, rules)  # bad format / options fail before any output
    report = RunReport(format=fmt, rules=str(rules_path) if rules_path else getattr(rules, "source", None),
                       started=datetime.now(UTC).isoformat(timespec="seconds"))
    total = sum(i.size or 0 for i in inputs)
    wanted = workers if workers is not None else (
        available_cores() if any(i.size is None or i.size >= AUTO_PARALLEL_BYTES for i in inputs) else 1)
    pool = WorkerPool(wanted, fmt, encoder_options, rules) if wanted > 1 else None
    report.workers = wanted
    bar = _Progress(total) if progress and sys.stderr.isatty() else None
    stems: set[str] = set()
    done_bytes = 0
    try:
        for item in inputs:
            callback = None
            if bar is not None:
                base = done_bytes
                name = item.name

                def callback(records: int, nbytes: int, base: int = base, name: str = name) -> None:
                    bar.update(name, records, base + nbytes)
            try:
                result = process_file(item, destination, fmt=fmt, rules=rules,
                                      encoder_options=encoder_options, workers=1 if pool is None else wanted,
                                      max_expanded_bytes=max_expanded_bytes, progress=callback, pool=pool,
                                      used_stems=stems, sink_factory=sink_factory)
            except DestinationError as exc:
                result = FileResult(name=item.name, error=f"{item.name}: {exc}")
            done_bytes += result.bytes_in
            report.files.append(result)
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.close()
    report.seconds = time.monotonic() - started
    report.peak_rss_mb = {"main": round(peak_rss_kb() / 1024, 1)}
    if pool is not None:
        report.peak_rss_mb["workers"] = round(pool.peak_rss_kb / 1024, 1)
    destination.write_bytes("report.json", report.to_json())
    return report


class _Progress:
    """A one-line progress display on a terminal: records, records/s, percent of input bytes."""

    def __init__(self, total_bytes: int) -> None:
        self.total = total_bytes
        self.started = time.monotonic()
        self.last = 0.0
        self._records: dict[str, int] = {}
        self._state = ("", 0)

    def update(self, name: str, records: int, nbytes: int, force: bool = False) -> None:
        self._records[name] = records
        self._state = (name, nbytes)
        now = time.monotonic()
        if now - self.last < 0.25 and not force:
            return
        self.last = now
        total = sum(self._records.values())
        rate = total / max(now - self.started, 1e-6)
        pct = f" {min(100.0, 100 * nbytes / self.total):5.1f}%" if self.total else ""
        sys.stderr.write(f"\r{name[-40:]:<40} {total:>10,} records {rate:>9,.0f} rec/s{pct}")
        sys.stderr.flush()

    def close(self) -> None:
        name, nbytes = self._state
        if name:
            self.update(name, self._records[name], nbytes, force=True)
        sys.stderr.write("\n")
        sys.stderr.flush()
