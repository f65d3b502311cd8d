"""The dedicated fuzz run: every test of tests/test_fuzz.py with many random examples.

Each test runs in its own ``python -m pytest`` process with the "rnnkit-fuzz" hypothesis profile
(random, ``RNNKIT_FUZZ_EXAMPLES`` examples shared out over the tests), so that a crash of the
compiled module (a signal such as SIGSEGV or SIGABRT, or the process killed) is reported as a crash
of that test -- with the faulthandler traceback from its log -- and the other tests still run. The
case counters the tests keep (``RNNKIT_FUZZ_COUNTS``) are collected from every process.

    python tests/fuzz_run.py                       # >= 12,000 cases, summary JSON in a temp folder
    python tests/fuzz_run.py --examples 2000 --seed 1 --out fuzz.json -k bad_x

It prints and writes JSON: valid cases checked, invalid cases tried, crashes, failures (with the
falsifying example from the log), hangs, skips, duration, machine, versions and the command.
Exit status 0 only when nothing crashed, failed or hung.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TEST_FILE = os.path.join(HERE, "test_fuzz.py")
EXAMPLES_ENV = "RNNKIT_FUZZ_EXAMPLES"
COUNTS_ENV = "RNNKIT_FUZZ_COUNTS"
LOG_TAIL_LINES = 60


def collect(select: Optional[str]) -> List[str]:
    """The node ids of test_fuzz.py's tests (optionally filtered with pytest's -k)."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", TEST_FILE]
    if select:
        cmd += ["-k", select]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    ids = [line.strip() for line in proc.stdout.splitlines() if "::" in line]
    if not ids:
        raise SystemExit(f"no tests collected from {TEST_FILE}:\n{proc.stdout}\n{proc.stderr}")
    return ids


def junit_outcome(path: str) -> Optional[str]:
    """"passed", "failed", "error" or "skipped" from pytest's JUnit XML (None when unreadable)."""
    try:
        case = ET.parse(path).getroot().find(".//testcase")
    except (ET.ParseError, OSError):
        return None
    if case is None:
        return None
    for tag, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        if case.find(tag) is not None:
            return outcome
    return "passed"


def tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def fatal_error_report(path: str, lines: int = LOG_TAIL_LINES) -> str:
    """faulthandler's report of a crash ("Fatal Python error: ..." and the stack that follows)."""
    with open(path, errors="replace") as f:
        log = f.readlines()
    for i, line in enumerate(log):
        if line.startswith("Fatal Python error"):
            return "".join(log[i:i + lines])
    return ""


def run_one(node: str, examples: int, seed: int, workdir: str, timeout: float) -> Dict[str, Any]:
    """Runs one test in a fresh process and classifies what happened."""
    name = node.split("::", 1)[1]
    counts_path = os.path.join(workdir, f"{name}.counts.json")
    junit_path = os.path.join(workdir, f"{name}.junit.xml")
    log_path = os.path.join(workdir, f"{name}.log")
    env = dict(os.environ, **{EXAMPLES_ENV: str(examples), COUNTS_ENV: counts_path})
    cmd = [sys.executable, "-X", "faulthandler", "-m", "pytest", "-q", "-p", "no:cacheprovider",
           f"--hypothesis-seed={seed}", f"--junitxml={junit_path}", node]
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            returncode: Optional[int] = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the test and anything it started
            proc.wait()
            returncode = None
    result: Dict[str, Any] = {"test": name, "seconds": round(time.monotonic() - start, 1), "log": log_path}
    try:
        with open(counts_path) as f:
            counts = json.load(f)
    except (OSError, ValueError):
        counts = {}
    result["valid"] = sum(c.get("valid", 0) for c in counts.values())
    result["invalid"] = sum(c.get("invalid", 0) for c in counts.values())
    if returncode is None:
        result["outcome"] = "hang"
        result["detail"] = f"no result after {timeout:.0f} s; killed"
    elif returncode < 0:
        result["outcome"] = "crash"
        result["detail"] = f"killed by {signal.Signals(-returncode).name}"
    else:
        outcome = junit_outcome(junit_path)
        if outcome is None:
            # pytest died without its report: the interpreter aborted (e.g. std::terminate) or exited.
            result["outcome"] = "crash"
            result["detail"] = f"exit status {returncode} without a pytest report"
        else:
            result["outcome"] = outcome
            result["detail"] = f"exit status {returncode}"
    if result["outcome"] == "crash":
        result["log_tail"] = fatal_error_report(log_path) or tail(log_path)
    elif result["outcome"] not in ("passed", "skipped"):
        result["log_tail"] = tail(log_path)
    elif result["outcome"] == "skipped":
        result["log_tail"] = tail(log_path, 5)
    return result


def machine() -> Dict[str, Any]:
    info: Dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        info["memory_bytes"] = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        pass
    probe = ("import json, numpy, hypothesis, rnnkit; print(json.dumps({'rnnkit': rnnkit.__version__, "
             "'numpy': numpy.__version__, 'hypothesis': hypothesis.__version__}))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    if proc.returncode == 0:
        info.update(json.loads(proc.stdout))
    return info


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=12000,
                        help="examples over all tests together (RNNKIT_FUZZ_EXAMPLES; default 12000)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: a random one, recorded)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one test may run before it is a hang")
    parser.add_argument("-k", dest="select", default=None, help="only the tests pytest -k selects")
    parser.add_argument("--out", default=None, help="the JSON summary (default: in the run's temporary folder)")
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error(f"--examples: expected a positive integer, got {args.examples}")
    seed = random.SystemRandom().randrange(2**32) if args.seed is None else args.seed
    workdir = tempfile.mkdtemp(prefix="rnnkit-fuzz-")
    out = args.out or os.path.join(workdir, "summary.json")

    started = time.monotonic()
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results = []
    for node in collect(args.select):
        r = run_one(node, args.examples, seed, workdir, args.timeout)
        results.append(r)
        print(f"{r['outcome']:>8}  {r['test']}  valid {r['valid']}, invalid {r['invalid']}, {r['seconds']} s",
              flush=True)
    summary = {
        "date": when,
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "seed": seed,
        "examples_setting": args.examples,
        "machine": machine(),
        "duration_s": round(time.monotonic() - started, 1),
        "valid_cases_checked": sum(r["valid"] for r in results),
        "invalid_cases_tried": sum(r["invalid"] for r in results),
        "tests": len(results),
        "crashes": [r for r in results if r["outcome"] == "crash"],
        "hangs": [r for r in results if r["outcome"] == "hang"],
        "failures": [r for r in results if r["outcome"] in ("failed", "error")],
        "skipped": [r["test"] for r in results if r["outcome"] == "skipped"],
        "per_test": {r["test"]: {k: r[k] for k in ("outcome", "valid", "invalid", "seconds")} for r in results},
        "logs": workdir,
    }
    summary["total_cases"] = summary["valid_cases_checked"] + summary["invalid_cases_tried"]
    with open(out, "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: (len(v) if isinstance(v, list) else v) for k, v in summary.items()
                      if k not in ("per_test", "machine")}, indent=1))
    print(f"summary: {out}")
    return 0 if not (summary["crashes"] or summary["hangs"] or summary["failures"]) else 1


if __name__ == "__main__":
    sys.exit(main())
