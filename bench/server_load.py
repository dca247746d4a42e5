"""Load on `imagesynth serve`: concurrent clients submitting small jobs, memory, cancel.

Starts the server in a subprocess (temporary outputs, a small queue so that a full queue is
actually reached), then N client threads (httpx) submit M small txt2img jobs in total (the
bundled 32 px model, 2-4 steps) and follow each one's Server-Sent Events to its end. A 429
answer is counted (its message checked) and the client retries after a short pause, so every
job finishes or was refused with a clear 429. Reported: jobs finished / failed, 429 answers,
wall time, jobs/s, p50 / p95 latency (submit to done, including queueing), the server's
resident memory (idle start, after warm-up, peak, end; and its growth per job over the second
half of the run), and a cancel issued mid-job: seconds and denoising steps from the cancel
request to the cancelled state.

    OMP_NUM_THREADS=1 nice -n 10 python bench/server_load.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from common import command_line, write_result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident (VmRSS) or peak resident (VmHWM) memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


class Monitor(threading.Thread):
    """Samples the server's RSS every `every` s together with the count of finished jobs."""

    def __init__(self, pid: int, done: list[int], every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.done, self.every = pid, done, every
        self.samples: list[tuple[int, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append((self.done[0], rss_mib(self.pid)))
            except (OSError, RuntimeError):
                return
            time.sleep(self.every)


def follow(client: httpx.Client, job_id: str) -> dict:
    """Read the job's SSE stream to its last event; returns the final job info."""
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events", timeout=None) as resp:
        for line in resp.iter_lines():
            if line.startswith("event: ") and line[7:] in ("done", "cancelled", "error"):
                break
    return client.get(f"/api/v1/jobs/{job_id}").json()


def client_loop(base: str, jobs: list[dict], out: dict, lock: threading.Lock, done: list[int]):
    with httpx.Client(base_url=base, timeout=120) as client:
        for params in jobs:
            t0 = time.perf_counter()
            while True:
                r = client.post("/api/v1/jobs", json={"kind": "txt2img", "params": params})
                if r.status_code != 429:
                    break
                body = r.json()
                with lock:
                    out["answers_429"] += 1
                    if body.get("code") != "queue_full" or "queue is full" not in body.get(
                        "message", ""
                    ):
                        out["unclear_429"] += 1
                time.sleep(random.uniform(0.1, 0.4))
            if r.status_code != 200:
                with lock:
                    out["rejected"] += 1
                    out["errors"].append(r.text[:200])
                continue
            info = follow(client, r.json()["id"])
            latency = time.perf_counter() - t0
            with lock:
                done[0] += 1
                if info["status"] == "done":
                    out["finished"] += 1
                    out["latencies"].append(latency)
                else:
                    out["failed"] += 1
                    out["errors"].append(json.dumps(info.get("error"))[:200])


def measure_cancel(client: httpx.Client, at_step: int = 3) -> dict[str, float]:
    """A long job cancelled once it reaches `at_step`: time and steps until it is cancelled."""
    params = {"prompt": "a red circle", "steps": 150, "seed": 1, "preview": False}  # the cap
    job_id = client.post("/api/v1/jobs", json={"kind": "txt2img", "params": params}).json()["id"]
    t_start, info = time.perf_counter(), {}
    while True:
        info = client.get(f"/api/v1/jobs/{job_id}").json()
        if info["step"] >= at_step:
            break
        time.sleep(0.01)
    step_s = (time.perf_counter() - t_start) / max(
        1, info["step"]
    )  # incl. start-up: an upper bound
    t0 = time.perf_counter()
    cancel = client.post(f"/api/v1/jobs/{job_id}/cancel").json()
    step_at_cancel = cancel["step"]
    while True:
        info = client.get(f"/api/v1/jobs/{job_id}").json()
        if info["status"] not in ("queued", "running"):
            break
        time.sleep(0.005)
    return {
        "cancel_to_cancelled_s": time.perf_counter() - t0,
        "cancel_steps_after_request": info["step"] - step_at_cancel,
        "cancel_status_ok": float(info["status"] == "cancelled"),
        "seconds_per_step_during_cancel_test": step_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--max-queue", type=int, default=4, help="Server queue (small: 429s happen).")
    ap.add_argument("--out", default=None, help="Result name (default: server_load).")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="imagesynth-load-"))
    port = free_port()
    cmd = [sys.executable, "-m", "imagesynth", "serve", "--port", str(port)]
    cmd += ["--outputs", str(tmp / "outputs"), "--max-queue", str(args.max_queue)]
    log = open(tmp / "server.log", "w")  # noqa: SIM115 (open while the server runs)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    figures: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        with httpx.Client(base_url=base, timeout=120) as client:
            while True:
                try:
                    if client.get("/api/v1/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.perf_counter() - t0 > 120:
                    raise SystemExit(f"the server did not start; see {tmp / 'server.log'}")
                time.sleep(0.2)
            figures["server_start_s"] = time.perf_counter() - t0
            figures["rss_start_mib"] = rss_mib(proc.pid)
            warm = client.post("/api/v1/jobs", json={"kind": "txt2img", "params": {"steps": 2}})
            follow(client, warm.json()["id"])  # loads the model once
            figures["rss_after_warmup_mib"] = rss_mib(proc.pid)

            rng = random.Random(0)
            all_jobs = [
                {"prompt": rng.choice(["a red circle", "a blue square", "a green triangle"]),
                 "steps": rng.randint(2, 4), "seed": i, "width": 32, "height": 32}
                for i in range(args.jobs)
            ]  # fmt: skip
            out = {"finished": 0, "failed": 0, "rejected": 0, "answers_429": 0, "unclear_429": 0}
            out.update(latencies=[], errors=[])
            done, lock = [0], threading.Lock()
            mon = Monitor(proc.pid, done)
            mon.start()
            threads = [
                threading.Thread(
                    target=client_loop,
                    args=(base, all_jobs[i :: args.clients], out, lock, done),
                )
                for i in range(args.clients)
            ]
            t_load = time.perf_counter()
            for t in threads:
                t.start()
            last_print = 0.0
            while any(t.is_alive() for t in threads):
                time.sleep(0.5)
                if time.perf_counter() - last_print > 10:
                    last_print = time.perf_counter()
                    el = last_print - t_load
                    eta = el / max(1, done[0]) * (args.jobs - done[0])
                    print(f"  {done[0]}/{args.jobs} jobs, {el:.0f} s, ETA {eta:.0f} s", flush=True)
            wall = time.perf_counter() - t_load
            mon.stop.set()
            mon.join()
            figures["rss_end_mib"] = rss_mib(proc.pid)
            figures["rss_peak_mib"] = rss_mib(proc.pid, "VmHWM")
            cancel = measure_cancel(client)
            figures["rss_after_cancel_mib"] = rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    lat = sorted(out["latencies"])
    half = [(d, m) for d, m in mon.samples if d >= args.jobs // 2]
    growth = 0.0
    if len(half) >= 2 and half[-1][0] > half[0][0]:
        growth = (half[-1][1] - half[0][1]) * 1024 / (half[-1][0] - half[0][0])
    figures.update(
        clients=args.clients,
        jobs_submitted=args.jobs,
        jobs_finished=out["finished"],
        jobs_failed=out["failed"],
        jobs_rejected_other=out["rejected"],
        answers_429=out["answers_429"],
        answers_429_unclear=out["unclear_429"],
        max_queue=args.max_queue,
        wall_s=wall,
        jobs_per_s=out["finished"] / wall,
        latency_p50_s=statistics.median(lat) if lat else float("nan"),
        latency_p95_s=lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan"),
        rss_growth_kib_per_job_second_half=growth,
        **cancel,
    )
    print(f"{'figure':40s} value")
    for k, v in figures.items():
        print(f"{k:40s} {v:.3f}" if isinstance(v, float) else f"{k:40s} {v}")
    if out["errors"]:
        print("errors (first 5):", *out["errors"][:5], sep="\n  ")
    write_result(args.out or "server_load", figures, command_line())


if __name__ == "__main__":
    main()
