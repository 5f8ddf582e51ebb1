"""MARC engine benchmark for the general path (parse -> rules -> encode), one worker.

    python bench/marc_general.py [--records N] [--repeat R] [--compare OTHER_ROOT]

The pass-through (bench/marc.py) only applies without rules; production runs apply rules
(samples/rules/discovery-cleanup.yaml), and indented or MARC-8 inputs always take this path.
Each case runs in a fresh process, best of `--repeat`. `--compare DIR` also runs every case against
another checkout's `pipeline` package (e.g. an export of the last commit) in alternating rounds, so
the two are measured side by side under the same machine load, and checks that their outputs are
byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"
RULES = ROOT / "samples" / "rules" / "discovery-cleanup.yaml"

# name -> (input kind, output format, rules?)
CASES: dict[str, tuple[str, str, bool]] = {
    "xml->xml rules": ("xml", "marcxml", True),
    "mrc->mrc rules": ("mrc", "marc21", True),
    "xml->mrc rules": ("xml", "marc21", True),
    "mrc->xml rules": ("mrc", "marcxml", True),
    "indented xml->xml": ("xml-indented", "marcxml", False),
    "marc8 mrc->mrc": ("mrc-marc8", "marc21", False),
}


def measure_main(root: str, src: str, fmt: str, rules: str, out: str) -> None:
    """One timed run (in its own process, with `root` first on sys.path)."""
    sys.path.insert(0, root)
    from pipeline.destinations.local import LocalDestination
    from pipeline.marc.engine import Input, process_file

    start = time.perf_counter()
    result = process_file(Input.from_path(src), LocalDestination(out), fmt=fmt, rules_path=rules or None,
                          workers=1)
    seconds = time.perf_counter() - start
    assert result.error is None, result.error
    digest = hashlib.sha256()
    for path in sorted(Path(out).iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    print(json.dumps({"seconds": seconds, "records": result.records_in, "out": result.records_out,
                      "sha": digest.hexdigest()[:16]}))


def run_once(root: Path, src: Path, fmt: str, rules: bool) -> dict:
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        proc = subprocess.run([sys.executable, __file__, "--measure", str(root), str(src), fmt,
                               str(RULES) if rules else "", tmp], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_inputs(n: int) -> dict[str, Path]:
    """Alma-like MARCXML (un-namespaced, one record per line), its indented copy, MARC 21 UTF-8 and MARC-8."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import marcgen

    DATA.mkdir(parents=True, exist_ok=True)
    paths = {"xml": DATA / f"general-{n}.xml", "xml-indented": DATA / f"general-{n}-indented.xml",
             "mrc": DATA / f"general-{n}.mrc", "mrc-marc8": DATA / f"general-{n}-marc8.mrc"}
    if not all(p.exists() for p in paths.values()):
        from lxml import etree

        recs = marcgen.records(n, seed=7)
        marcgen.write_marcxml(paths["xml"], recs, namespace=False)
        marcgen.write_marc21(paths["mrc"], recs)
        marcgen.write_marc21(paths["mrc-marc8"], marcgen.records(n, seed=8, marc8_safe=True), marc8=True)
        tree = etree.parse(str(paths["xml"]), etree.XMLParser(remove_blank_text=True))
        etree.indent(tree, space="  ")
        tree.write(str(paths["xml-indented"]), xml_declaration=True, encoding="UTF-8")
    return paths


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare", help="another root holding a `pipeline` package, run side by side")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--measure", nargs=5, metavar=("ROOT", "IN", "FMT", "RULES", "OUT"))
    args = parser.parse_args()
    if args.measure:
        measure_main(*args.measure)
        return 0
    paths = make_inputs(args.records)
    roots = {"this": ROOT}
    if args.compare:
        roots = {"other": Path(args.compare).resolve(), "this": ROOT}
    cases = args.cases.split(",") if args.cases else list(CASES)
    print(f"{args.records:,} Alma-like records, 1 worker, best of {args.repeat}"
          f" (rules: {RULES.relative_to(ROOT)}); cores: {len(os.sched_getaffinity(0))}\n")
    head = f"{'case':<20}" + "".join(f" {name + ' rec/s':>14}" for name in roots)
    print(head + (f" {'speed-up':>9} {'same output':>12}" if len(roots) > 1 else ""))
    for case in cases:
        kind, fmt, rules = CASES[case]
        best: dict[str, dict] = {}
        for _ in range(args.repeat):  # alternate the roots: both see the same machine load
            for name, root in roots.items():
                r = run_once(root, paths[kind], fmt, rules)
                if name not in best or r["seconds"] < best[name]["seconds"]:
                    best[name] = r
        line = f"{case:<20}" + "".join(f" {best[n]['records'] / best[n]['seconds']:>14,.0f}" for n in roots)
        if len(roots) > 1:
            ratio = best["other"]["seconds"] / best["this"]["seconds"]
            same = best["other"]["sha"] == best["this"]["sha"]
            line += f" {ratio:>8.2f}x {'yes' if same else 'NO':>12}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
