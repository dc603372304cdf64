"""Running benchmark commands from a small process of their own, shared by harness.py and fit.py:
a child forked from a large driver would count the driver's pages in its own peak RSS."""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPAWNER = r"""
import json, os, signal, subprocess, sys, time
for line in sys.stdin:
    req = json.loads(line)
    res = {}
    try:
        with open(req["stdout"], "wb") as out, open(req["stderr"], "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(req["cmd"], cwd=req["cwd"], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True)
            deadline = t0 + req["timeout"]
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    pid, status, usage = os.wait4(proc.pid, 0)
                    res["timed_out"] = True
                    break
                time.sleep(0.005)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here
            res.update(rc=proc.returncode, wall_s=wall, maxrss_kib=usage.ru_maxrss)
    except Exception as e:
        res = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
"""


class PeerFailed(Exception):
    def __init__(self, message, timed_out=False):
        super().__init__(message)
        self.timed_out = timed_out


class Spawner:
    """Runs commands one at a time in a small process of its own; reports wall time, exit code
    and peak RSS (wait4's ru_maxrss) of each; kills a command (and its process group) at its timeout."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        os.makedirs(log_dir, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-c", SPAWNER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def run(self, name, cmd, timeout):
        cmd = [str(a) for a in cmd]
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
        out, err = os.path.join(self.log_dir, name + ".stdout"), os.path.join(self.log_dir, name + ".stderr")
        self.proc.stdin.write(json.dumps({"cmd": cmd, "cwd": ROOT, "stdout": out, "stderr": err, "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        res = json.loads(self.proc.stdout.readline())
        if "error" in res:
            raise PeerFailed(f"could not start {os.path.basename(cmd[0])}: {res['error']}")
        res["stdout"] = open(out, errors="replace").read()
        res["stderr"] = open(err, errors="replace").read()
        res["peak_rss_mib"] = res["maxrss_kib"] / 1024
        print(f"  exit {res['rc']}, {res['wall_s']:.1f} s, peak {res['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
        if res.get("timed_out"):
            raise PeerFailed(f"timed out after {timeout:g} s (--timeout)", timed_out=True)
        if res["rc"] != 0:
            tail = [l for l in res["stderr"].strip().splitlines() if l.strip()][-3:]
            print("  " + "\n  ".join(tail), file=sys.stderr)
            raise PeerFailed(f"exited with {res['rc']}: " + (" / ".join(tail)[-300:] or "no message"))
        return res

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def json_line(res, what):
    lines = [l for l in res["stdout"].splitlines() if l.startswith("{")]
    if not lines:
        raise PeerFailed(f"{what} printed no JSON line")
    return json.loads(lines[-1])


def drive_and_record(drive, args, log_dir, json_path):
    """Runs a benchmark driver `drive(args, spawner)` with a fresh spawner, times it, notes the
    load at the end and writes its results to `json_path`; returns the results."""
    started = time.perf_counter()
    spawner = Spawner(log_dir)   # first, while the driver is small
    try:
        results = drive(args, spawner)
    finally:
        spawner.close()
    results["wall_seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    with open(json_path, "w") as fh:
        json.dump(results, fh, indent=1)
    return results
