"""Speed on real Alma exports (issue 13): this engine against every MARC library usable from Python.

    python bench/real.py [--rounds N] [--skip-big]     (MARC_BENCH_QUICK=1 = --skip-big)

Inputs, built from ../shared/realdata (the real-data corpus beside the repository; the benchmark
skips with a message when it is absent) into bench/data/real/ (git-ignored), records byte for byte
as their producer wrote them:
- Alma-shaped MARCXML: MIT's and Princeton's Alma publishing output (the tar.gz files as published),
  every well-formed record, repeated to at least 50 MB: no namespace on `<collection>`, 9XX and
  AVA enrichment, Princeton's line breaks inside records;
- LoC: the 20 Library of Congress records of pymarc's sample data (`marc.dat`) repeated to 20,000,
  as MARC 21, and as MARCXML written by pymarc's XMLWriter (an independent writer).

Pipelines, each in a fresh process (so time and peak RSS are its own), rounds alternating so every
pipeline sees the same machine load, best of `--rounds`: this engine with 1 worker and with all
cores, without and with samples/rules/bench-12.yaml; pymarc (the project's venv); mrrc and rmarc
(compiled libraries, installed at run time into a bench-only venv under bench/data/, never into
requirements.txt; skipped with a message when they cannot be installed); yaz-marcdump (Debian
`yaz`; skipped when absent). Then the goals of issue 13 as ratios, and the engine's peak RSS on a
1 GB Alma-shaped input. The machine may be shared: ratios measured side by side are the figure to
read, and even they carry noise.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from marc import _hwm, _yaz  # bench/marc.py: peak RSS from /proc, yaz-marcdump as a task

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
DATA = ROOT / "bench" / "data" / "real"
BASELINE_VENV = ROOT / "bench" / "data" / "venv-baselines"
BASELINE_PINS = ("mrrc==0.9.2", "rmarc==5.4.0")
RULES = ROOT / "samples" / "rules" / "bench-12.yaml"
CORES = len(os.sched_getaffinity(0))

# Alma publishing output (MIT, Princeton): the files as their jobs wrote them
ALMA_SOURCES = (
    "alma-mit-timdex/TIMDEX_ALMA_EXPORT_DAILY_20220912_210929[053]_new_1.tar.gz",
    "alma-princeton-libjobs/pod.tar.gz",
    "alma-princeton-libjobs/incremental_recap_25908087650006421_20230420_160408[057]_new.xml.tar.gz",
    "alma-princeton-bibdata/spec__fixtures__files__alma__incremental_dump__1.tar.gz",
    "alma-princeton-bibdata/spec__fixtures__files__alma__incremental_dump__2.tar.gz",
    "alma-princeton-bibdata/spec__fixtures__files__alma__full_dump__1.xml.tar.gz",
    "alma-princeton-bibdata/spec__fixtures__files__alma__full_dump__2.xml.tar.gz",
    "alma-princeton-bibdata/spec__fixtures__files__alma__scsb_dump_fixtures__cacheable_scsb_records.tar.gz",
    "alma-princeton-bibdata/spec__fixtures__files__alma__scsb_dump_fixtures__"
    "recap_6836725000006421_20210401_010420[012]_new_1.xml.tar.gz",
)
LOC_SOURCE = "pymarc/marc.dat"
ALMA_MIN_BYTES = 50_000_000
LOC_REPEAT = 1000
XML_HEAD = b'<?xml version="1.0" encoding="UTF-8"?>\n<collection>\n'
_RECORD = re.compile(rb"<record>.*?</record>", re.S)


# --- the measured tasks: `real.py --measure TASK IN OUT` in a fresh process ----------------------------
# (tasks for mrrc/rmarc run under the bench-only venv's Python: only the standard library at module level)
def _engine(fmt: str, workers: int, rules: bool):
    def run(src: str, out: str) -> dict:
        sys.path.insert(0, str(ROOT))
        from pipeline.destinations.local import LocalDestination
        from pipeline.marc.engine import Input, process

        report = process([Input.from_path(src)], LocalDestination(out), fmt=fmt, workers=workers,
                         rules_path=str(RULES) if rules else None)
        if report.files[0].error:
            raise SystemExit(report.files[0].error)
        return {"records": report.files[0].records_in, "rss_main": report.peak_rss_mb["main"],
                "rss_workers": report.peak_rss_mb.get("workers")}
    return run


def _pymarc_xml(module: str):
    def run(src: str, out: str) -> dict:
        lib = __import__(module)
        count = [0]
        with open(out, "wb") as dst:
            writer = lib.XMLWriter(dst)

            def write(rec) -> None:
                writer.write(rec)
                count[0] += 1

            lib.map_xml(write, src)
            writer.close(close_fh=False)
        return {"records": count[0]}
    return run


def _pymarc_mrc(module: str):
    def run(src: str, out: str) -> dict:
        lib = __import__(module)
        n = 0
        with open(src, "rb") as fh, open(out, "wb") as dst:
            for rec in lib.MARCReader(fh, to_unicode=True, force_utf8=True):
                dst.write(rec.as_marc())
                n += 1
        return {"records": n}
    return run


def _mrrc_xml(src: str, out: str) -> dict:
    """mrrc has no streaming MARCXML reader: the whole document is parsed into a list."""
    import mrrc

    with open(src, encoding="utf-8") as fh:
        records = mrrc.xml_to_records(fh.read())
    with open(out, "w", encoding="utf-8") as dst:
        dst.write('<?xml version="1.0" encoding="UTF-8"?>\n<collection xmlns="http://www.loc.gov/MARC21/slim">\n')
        for rec in records:
            dst.write(mrrc.record_to_xml(rec))
            dst.write("\n")
        dst.write("</collection>\n")
    return {"records": len(records)}


def _mrrc_mrc(src: str, out: str) -> dict:
    import mrrc

    n = 0
    with open(src, "rb") as fh, open(out, "wb") as dst:
        writer = mrrc.MARCWriter(dst)
        for rec in mrrc.MARCReader(fh):
            writer.write(rec)
            n += 1
        writer.close()
    return {"records": n}


ENGINE_1 = "this project, 1 worker"
ENGINE_N = f"this project, {CORES} workers"
ENGINE_1R = "this project, 1 worker, 12 rules"
ENGINE_NR = f"this project, {CORES} workers, 12 rules"
# name -> (task for MARCXML->MARCXML, task for MARC21->MARC21, runs under: "project" | "baselines" | "yaz")
TASKS: dict[str, tuple] = {
    ENGINE_1: (_engine("marcxml", 1, False), _engine("marc21", 1, False), "project"),
    ENGINE_N: (_engine("marcxml", CORES, False), _engine("marc21", CORES, False), "project"),
    ENGINE_1R: (_engine("marcxml", 1, True), _engine("marc21", 1, True), "project"),
    ENGINE_NR: (_engine("marcxml", CORES, True), _engine("marc21", CORES, True), "project"),
    "pymarc": (_pymarc_xml("pymarc"), _pymarc_mrc("pymarc"), "project"),
    "mrrc 0.9.2 (Rust)": (_mrrc_xml, _mrrc_mrc, "baselines"),
    "rmarc 5.4.0 (Rust)": (_pymarc_xml("rmarc"), _pymarc_mrc("rmarc"), "baselines"),
    "yaz-marcdump (C)": (_yaz(["-i", "marcxml", "-o", "marcxml"]), _yaz(["-i", "marc", "-o", "marc"]), "yaz"),
}


def measure_main(task: str, kind: str, src: str, out: str) -> None:
    run = TASKS[task][0 if kind == "xml" else 1]
    own, children = _cpu()
    start = time.perf_counter()
    info = run(src, out)
    seconds = time.perf_counter() - start
    own_after, children_after = _cpu()
    rss = info.pop("rss_child", None) or max(_hwm("/proc/self/status") / 1024, info.pop("rss_main", 0))
    print(json.dumps({"seconds": seconds, "cpu": own_after + children_after - own - children,
                      "cpu_main": own_after - own, "rss": rss, **info}))


def _cpu() -> tuple[float, float]:
    """CPU seconds of this process, and of its waited-for children (workers, yaz-marcdump): the
    per-core measure, which other load on a shared machine disturbs far less than elapsed time."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def measure_once(python: str, task: str, kind: str, src: Path) -> dict:
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        out = Path(tmp) / ("out" if task.startswith("this project") else "out.dat")
        proc = subprocess.run([python, __file__, "--measure", task, kind, str(src), str(out)],
                              capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- inputs ------------------------------------------------------------------------------------------------
def _well_formed(record: bytes) -> bool:
    from lxml import etree

    try:
        etree.fromstring(record)
    except etree.XMLSyntaxError:
        return False
    return True


def alma_records() -> list[bytes]:
    """Every well-formed `record` element of the Alma publishing files, as the files hold them."""
    out: list[bytes] = []
    for name in ALMA_SOURCES:
        with tarfile.open(REALDATA / name) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    out.extend(r for r in _RECORD.findall(data) if _well_formed(r))
    return out


def _write_collection(path: Path, records: list[bytes], repeat: int) -> int:
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as fh:
        fh.write(XML_HEAD)
        block = b"\n".join(records) + b"\n"
        for _ in range(repeat):
            fh.write(block)
        fh.write(b"</collection>\n")
    tmp.rename(path)
    return len(records) * repeat


def make_inputs() -> dict[str, tuple[Path, int]]:
    """name -> (path, records); built once into bench/data/real/."""
    DATA.mkdir(parents=True, exist_ok=True)
    meta = DATA / "inputs.json"
    if meta.exists():
        known = json.loads(meta.read_text())
        if all(Path(p).exists() for p, _ in known.values()):
            return {k: (Path(p), n) for k, (p, n) in known.items()}
    alma = alma_records()
    repeat = -(-ALMA_MIN_BYTES // sum(len(r) + 1 for r in alma))
    inputs: dict[str, tuple[Path, int]] = {}
    path = DATA / "alma.xml"
    inputs["alma-xml"] = (path, _write_collection(path, alma, repeat))
    loc = (REALDATA / LOC_SOURCE).read_bytes()
    path = DATA / "loc.mrc"
    with open(path, "wb") as fh:
        for _ in range(LOC_REPEAT):
            fh.write(loc)
    inputs["loc-mrc"] = (path, loc.count(b"\x1d") * LOC_REPEAT)
    sys.path.insert(0, str(ROOT))
    import pymarc

    buf = io.BytesIO()
    writer = pymarc.XMLWriter(buf)
    for rec in pymarc.MARCReader(io.BytesIO(loc), to_unicode=True, force_utf8=True):
        writer.write(rec)
    writer.close(close_fh=False)
    loc_xml = _RECORD.findall(buf.getvalue())
    path = DATA / "loc.xml"
    inputs["loc-xml"] = (path, _write_collection(path, loc_xml, LOC_REPEAT))
    meta.write_text(json.dumps({k: (str(p), n) for k, (p, n) in inputs.items()}))
    return inputs


def make_big(records: list[bytes], size: int = 1 << 30) -> Path:
    path = DATA / "alma-1g.xml"
    if not path.exists():
        _write_collection(path, records, -(-size // sum(len(r) + 1 for r in records)))
    return path


def baseline_python() -> str | None:
    """The bench-only venv's Python with mrrc and rmarc, created on first use; None (with a message)
    when it cannot be (no network, no wheel)."""
    python = BASELINE_VENV / "bin" / "python"
    stamp = BASELINE_VENV / ".installed"
    if stamp.exists() and stamp.read_text() == " ".join(BASELINE_PINS):
        return str(python)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(BASELINE_VENV)], check=True,
                       capture_output=True, text=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--only-binary=:all:", *BASELINE_PINS], check=True, capture_output=True, text=True,
                       timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        print(f"mrrc/rmarc not installable into {BASELINE_VENV.relative_to(ROOT)} "
              f"({detail.strip().splitlines()[-1] if detail.strip() else exc}): their columns are skipped")
        return None
    stamp.write_text(" ".join(BASELINE_PINS))
    return str(python)


# --- the run -----------------------------------------------------------------------------------------------
CASES = (  # (label, input, kind)
    ("Alma-shaped MARCXML -> MARCXML", "alma-xml", "xml"),
    ("LoC MARCXML -> MARCXML", "loc-xml", "xml"),
    ("LoC MARC 21 -> MARC 21", "loc-mrc", "mrc"),
)


def run_case(label: str, src: Path, records: int, kind: str, pythons: dict[str, str], rounds: int) -> dict:
    """Best elapsed and best CPU time of each pipeline over `rounds` alternating rounds."""
    tasks = [t for t in TASKS if TASKS[t][2] in pythons]
    best: dict[str, dict] = {}
    for _ in range(rounds):  # alternate: every pipeline sees the same machine load
        for task in tasks:
            r = measure_once(pythons[TASKS[task][2]], task, kind, src)
            if "error" in r:
                best.setdefault(task, r)
                continue
            b = best.get(task)
            if b is None or "error" in b:
                best[task] = r
            else:
                if r["cpu"] < b["cpu"]:
                    b.update(cpu=r["cpu"], cpu_main=r["cpu_main"])
                b.update(seconds=min(b["seconds"], r["seconds"]), rss=max(b["rss"], r["rss"]),
                         rss_workers=max(b.get("rss_workers") or 0, r.get("rss_workers") or 0) or None)
    size = src.stat().st_size
    print(f"\n{label}: {records:,} records, {size / 1e6:.0f} MB, best of {rounds}")
    print(f"  {'pipeline':<36} {'elapsed s':>9} {'CPU s':>7} {'rec/CPU s':>10} {'peak RSS MB':>12}  records"
          "  (with workers: CPU of the main process; RSS of each worker)")
    for task in tasks:
        r = best[task]
        if "error" in r:
            print(f"  {task:<36} failed: {r['error'][:90]}")
            continue
        got = r.get("records")
        got = None if got == -1 else got  # yaz-marcdump does not count
        note = "" if got in (None, records) else f"  ({got:,} read: not the {records:,} in the input)"
        split = ""
        if r.get("rss_workers"):
            split = f"  (main {r['cpu_main']:.2f} s; {r['rss_workers']:.1f} MB)"
        print(f"  {task:<36} {r['seconds']:>9.2f} {r['cpu']:>7.2f} {records / r['cpu']:>10,.0f} {r['rss']:>12.1f}"
              f"  {got if got is not None else '-':>7}{note}{split}")
    return best


def ratio(best: dict, a: str, b: str, key: str) -> float | None:
    """How many times faster `a` is than `b`, by `key` ("cpu": per core; "seconds": elapsed)."""
    if key not in best.get(a, {}) or key not in best.get(b, {}):
        return None
    return best[b][key] / best[a][key]


def print_goals(results: dict[str, dict]) -> None:
    print("\ngoals of issue 13: how many times faster this project is (per core: CPU time; all cores:"
          " elapsed time); the goal in brackets")

    def line(label: str, best: dict, a: str, b: str, key: str, goal: float | None) -> None:
        r = ratio(best, a, b, key)
        if r is None:
            shown = "n/a (not measured)"
        else:
            shown = f"{r:5.2f}x" + ("" if goal is None else f"  {'met' if r >= goal else 'NOT met'}")
        print(f"  {label:<54} {shown:<18}" + ("" if goal is None else f" [>= {goal}x]"))

    mrrc, pymarc, yaz = "mrrc 0.9.2 (Rust)", "pymarc", "yaz-marcdump (C)"
    for label, _, kind in CASES:
        best = results[label]
        print(f" {label}")
        for engine, what in ((ENGINE_1, "1 worker"), (ENGINE_1R, "1 worker, 12 rules")):
            line(f"{what} vs mrrc (per core)", best, engine, mrrc, "cpu", 1.0 if engine == ENGINE_1 or kind == "xml"
                 else None)
            line(f"{what} vs pymarc (per core)", best, engine, pymarc, "cpu", 4.0 if kind == "xml" else None)
            line(f"{what} vs rmarc (per core)", best, engine, "rmarc 5.4.0 (Rust)", "cpu", None)
            line(f"{what} vs yaz-marcdump (per core)", best, engine, yaz, "cpu", None)
        for engine, what in ((ENGINE_N, f"{CORES} workers"), (ENGINE_NR, f"{CORES} workers, 12 rules")):
            line(f"{what} vs yaz-marcdump (elapsed)", best, engine, yaz, "seconds", 0.5 if kind == "xml" else None)
        goal = 1.8 if CORES >= 2 else None
        line(f"{CORES} workers vs 1 worker (elapsed)", best, ENGINE_N, ENGINE_1, "seconds", goal)
        line(f"{CORES} workers vs 1 worker, 12 rules (elapsed)", best, ENGINE_NR, ENGINE_1R, "seconds", goal)
        for engine, one, what in ((ENGINE_N, ENGINE_1, ""), (ENGINE_NR, ENGINE_1R, ", 12 rules")):
            r = _split_bound(best, engine, one)
            if r is not None:
                print(f"  {f'({CORES} workers vs 1 worker{what}: at most, by the CPU split)':<54} {r:5.2f}x")


def _split_bound(best: dict, engine: str, one: str) -> float | None:
    """The speed-up an idle machine would allow at most: one worker's CPU time over the larger of the
    main process's CPU time and the workers' CPU time shared by the cores. Elapsed time on a busy
    machine says little about scaling; this says where the sequential part stands."""
    if "cpu_main" not in best.get(engine, {}) or "cpu" not in best.get(one, {}):
        return None
    r = best[engine]
    return min(float(CORES), best[one]["cpu"] / max(r["cpu_main"], (r["cpu"] - r["cpu_main"]) / CORES))


def big_run(records: list[bytes], pythons: dict[str, str]) -> None:
    path = make_big(records)
    size = path.stat().st_size
    print(f"\npeak RSS on a {size / 1e9:.2f} GB Alma-shaped MARCXML input (MARCXML -> MARCXML) [<= 64 MB]:")
    for task in (ENGINE_N,):  # (with the 12 rules too: the same memory, four times the time)
        r = measure_once(pythons["project"], task, "xml", path)
        if "error" in r:
            print(f"  {task}: failed: {r['error']}")
            continue
        print(f"  {task}: {r['records']:,} records in {r['seconds']:.1f} s ({size / 1e6 / r['seconds']:.0f} MB/s), "
              f"peak RSS of the main process {r['rss']:.1f} MB, of each worker {r.get('rss_workers') or 0:.1f} MB")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_REAL_ROUNDS", "2")))
    parser.add_argument("--skip-big", action="store_true", default=os.environ.get("MARC_BENCH_QUICK") == "1")
    parser.add_argument("--measure", nargs=4, metavar=("TASK", "KIND", "IN", "OUT"))
    args = parser.parse_args()
    if args.measure:
        measure_main(*args.measure)
        return 0
    if not REALDATA.is_dir():
        print(f"skipped: the real-data corpus is not at {REALDATA} (see the project README)")
        return 0
    inputs = make_inputs()
    pythons = {"project": sys.executable}
    baseline = baseline_python()
    if baseline:
        pythons["baselines"] = baseline
    if shutil.which("yaz-marcdump"):
        pythons["yaz"] = sys.executable
    else:
        print("yaz-marcdump not installed: its column is skipped (apt-get install yaz)")
    print(f"{CORES} cores; each pipeline in its own process, rounds alternating")
    results = {}
    for label, name, kind in CASES:
        path, count = inputs[name]
        results[label] = run_case(label, path, count, kind, pythons, args.rounds)
    print_goals(results)
    if not args.skip_big:
        big_run(alma_records(), pythons)
    return 0


if __name__ == "__main__":
    sys.exit(main())
