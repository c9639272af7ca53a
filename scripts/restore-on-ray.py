#!/usr/bin/env python3
"""Restores video files on a Ray cluster: every input is cut into segments on its keyframes
(gst-gpen-restore --plan), each segment is one Ray task running gst-gpen-restore --segment, and
each input's segments are joined with its sound (gst-gpen-restore --join).

  scripts/restore-on-ray.py INPUT... OUTPUT|OUTDIR [--segments N] [--address ADDR]
                            [--gpus-per-task G] [--workdir DIR] -- [gst-gpen-restore options]

One input: the last path is the output file (.mp4 or .mkv). Several: the last path is a folder,
and each output is named after its input. All the segments of all the inputs share one job.

Without --address a local Ray is started (`pip install ray`, as scripts/setup.sh does); with one
(`ray://host:10001`, `auto`) the job runs on that cluster, where every node must see the inputs,
the work folder and the command at the same paths (a shared file system). A task whose worker
dies is retried by Ray. Segments already finished in the work folder (checked by their frame
count) are not redone, so running the same command again after an interruption redoes only the
unfinished ones.

Exit codes: 0 done; 1 a segment or a join failed; 2 bad arguments.
"""

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def find_command(given):
    """gst-gpen-restore: --command, $GST_GPEN_RESTORE, else the newest build of this checkout."""
    if given:
        return Path(given).resolve()
    if os.environ.get("GST_GPEN_RESTORE"):
        return Path(os.environ["GST_GPEN_RESTORE"]).resolve()
    built = [ROOT / "target" / p / "gst-gpen-restore" for p in ("release", "debug")]
    built = [p for p in built if p.exists()]
    return max(built, key=lambda p: p.stat().st_mtime) if built else None


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="restore-on-ray.py",
        description="Restores the faces of video files on a Ray cluster, in segments joined without seams.",
        epilog="Options after -- go to gst-gpen-restore (e.g. -- --size 512 --fp16); see gst-gpen-restore --help.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="INPUT... OUTPUT|OUTDIR", help="the inputs, then the output file (one input) or folder")
    p.add_argument("--segments", type=int, default=4, metavar="N",
                   help="segments per input (fewer when an input has fewer keyframes)")
    p.add_argument("--address", default=None, help="Ray cluster to join (ray://host:10001, auto); none: start a local Ray")
    p.add_argument("--gpus-per-task", type=float, default=None, metavar="G",
                   help="GPUs each task asks Ray for; default: 1 where the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-task", type=float, default=1, metavar="C", help="CPUs each task asks Ray for")
    p.add_argument("--num-cpus", type=int, default=None, metavar="C", help="CPUs of the local Ray (default: all); ignored with --address")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="where segments are kept until joined; default: OUTPUT.segments beside the (first) output")
    p.add_argument("--retries", type=int, default=3, help="times Ray retries a segment whose worker died")
    p.add_argument("--preroll", type=float, default=2.0, metavar="SECONDS",
                   help="seconds analysed before each segment (gst-gpen-restore --preroll)")
    p.add_argument("--command", default=None, metavar="PATH",
                   help="gst-gpen-restore to run; default: $GST_GPEN_RESTORE, else target/{release,debug} of this checkout")
    p.add_argument("--keep-segments", action="store_true", help="keep the segment files after the join")
    ours, _, theirs = _split(argv)
    args = p.parse_args(ours)
    args.restore_options = theirs
    if len(args.paths) < 2:
        p.error("give at least one INPUT and the OUTPUT")
    if args.segments < 1:
        p.error("--segments must be 1 or more")
    if args.gpus_per_task is not None and args.gpus_per_task < 0:
        p.error("--gpus-per-task must be 0 or more")
    inputs = [Path(i) for i in args.paths[:-1]]
    for i in inputs:
        if not i.is_file():
            p.error(f"{i}: no such file")
    out = Path(args.paths[-1])
    if len(inputs) == 1 and out.suffix.lower() in (".mp4", ".mkv"):
        args.outputs = [out]
    elif len(inputs) == 1 and not out.is_dir():
        p.error(f"{out}: the output must end in .mp4 or .mkv (or be an existing folder)")
    else:
        if not out.is_dir():
            p.error(f"{out}: with several inputs the last path must be an existing folder")
        args.outputs = [out / (i.stem + "-restored.mp4") for i in inputs]
    if len(set(args.outputs)) != len(args.outputs):
        p.error("two inputs would give the same output name: rename one")
    args.inputs = inputs
    args.command = find_command(args.command)
    if args.command is None or not args.command.exists():
        p.error("gst-gpen-restore not found: build it (cargo build --release --bin gst-gpen-restore), "
                "or give --command or $GST_GPEN_RESTORE")
    return args


def _split(argv):
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], "--", argv[i + 1:]
    return argv, "", []


def plan(command, path, n):
    """The segments gst-gpen-restore cuts `path` into for n workers (fewer on few keyframes)."""
    r = subprocess.run([str(command), "--plan", str(n), str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"restore-on-ray: {path}: {r.stderr.strip()}")
    if r.stderr.strip():
        print(f"restore-on-ray: {r.stderr.strip()}", file=sys.stderr)
    return json.loads(r.stdout)


def _die_with_parent():
    # The command must not outlive its Ray worker: a killed worker's segment is retried by Ray,
    # and two processes must never write the same segment.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def restore_segment(command, input_path, output, index, count, preroll, options, log, frames):
    """One Ray task: gst-gpen-restore --segment index/count, its frames done reported to the
    `frames` actor as the command prints them (a line every 5 s)."""
    import collections
    import re
    import socket
    with open(log, "a") as f:
        f.write(f"segment {index}/{count} of {input_path}: attempt on {socket.gethostname()} pid {os.getpid()}\n")
    t = time.time()
    key = f"{input_path}:{index}"
    cmd = [str(command), str(input_path), str(output), "--segment", f"{index}/{count}", "--preroll", str(preroll), *options]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
    tail = collections.deque(maxlen=60)
    done = re.compile(rf"segment {index}/{count}: (\d+)/\d+ frames")
    for line in p.stderr:
        tail.append(line)
        m = done.search(line)
        if m:
            frames.set.remote(key, int(m.group(1)))
    code = p.wait()
    log_tail = "".join(tail)
    if code != 0:
        # A failed command (bad model, broken input) fails the same way when retried: reported, not retried.
        return {"ok": False, "code": code, "log": log_tail[-4000:]}
    return {"ok": True, "skipped": "already complete" in log_tail, "seconds": time.time() - t, "log": log_tail[-2000:]}


class Frames:
    """Frames done per segment, as the tasks report them (a Ray actor)."""

    def __init__(self):
        self.done = {}

    def set(self, key, n):
        self.done[key] = n

    def total(self):
        return sum(self.done.values())


class Progress:
    """Segments and frames done: a tqdm bar on a terminal when tqdm is there, lines otherwise
    (one per finished segment, and the frames every 10 s)."""

    def __init__(self, segments, frames):
        self.segments, self.frames, self.done, self.frames_done = segments, frames, 0, 0
        self.start = self.last_line = time.time()
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=frames, unit="frame", desc=f"0/{segments} segments", file=sys.stderr)
            except ImportError:
                pass

    def frames_now(self, n):
        """Frames done so far, finished segments and those under way."""
        self.frames_done = max(self.frames_done, n)
        if self.bar:
            self.bar.update(self.frames_done - self.bar.n)
        elif time.time() - self.last_line >= 10:
            self._line("under way")

    def segment_done(self, frames_total, note):
        self.done += 1
        self.frames_now(frames_total)
        if self.bar:
            self.bar.set_description(f"{self.done}/{self.segments} segments")
        else:
            self._line(note)

    def _line(self, note):
        fps = self.frames_done / max(time.time() - self.start, 1e-3)
        print(f"restore-on-ray: {self.done}/{self.segments} segments, {self.frames_done}/{self.frames} frames, "
              f"{fps:.2f} fps ({note})", file=sys.stderr, flush=True)
        self.last_line = time.time()

    def close(self):
        if self.bar:
            self.bar.close()


def main(argv):
    args = parse_args(argv)
    try:
        import ray
    except ImportError:
        print("restore-on-ray: the ray package is missing: run scripts/setup.sh, or pip install ray", file=sys.stderr)
        return 2
    jobs = []  # (input, output, workdir, plan)
    for inp, out in zip(args.inputs, args.outputs):
        workdir = Path(args.workdir) / inp.stem if args.workdir and len(args.inputs) > 1 else \
            Path(args.workdir) if args.workdir else out.with_name(out.name + ".segments")
        workdir.mkdir(parents=True, exist_ok=True)
        jobs.append((inp.resolve(), out.resolve(), workdir.resolve(), plan(args.command, inp, args.segments)))

    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.num_cpus, log_to_driver=False, include_dashboard=False)
    gpus = args.gpus_per_task
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    # max_retries: Ray reruns the task when its worker process dies (a killed or lost node);
    # the command itself then skips nothing but what is complete, and redoes the segment.
    task = ray.remote(num_cpus=args.cpus_per_task, num_gpus=gpus, max_retries=args.retries)(restore_segment)
    frames_done = ray.remote(num_cpus=0)(Frames).remote()

    pending = {}
    total_frames = 0
    for inp, out, workdir, p in jobs:
        n = len(p["segments"])
        for i, seg in enumerate(p["segments"]):
            seg_out = workdir / f"segment-{i:04d}-of-{n:04d}.mkv"
            ref = task.remote(args.command, inp, seg_out, i, n, args.preroll, args.restore_options, workdir / "attempts.log",
                              frames_done)
            pending[ref] = (inp, i, n, seg["frames"], f"{inp}:{i}")
            total_frames += seg["frames"]
    progress = Progress(len(pending), total_frames)
    failed = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
        if not ready:
            progress.frames_now(ray.get(frames_done.total.remote()))
            continue
        inp, i, n, frames, key = pending.pop(ready[0])
        try:
            r = ray.get(ready[0])
        except Exception as e:  # a task that ran out of retries
            r = {"ok": False, "code": None, "log": str(e)}
        if not r["ok"]:
            failed.append(f"{inp} segment {i}/{n} (exit {r['code']}):\n{r['log']}")
            ray.get(frames_done.set.remote(key, 0))
            progress.segment_done(ray.get(frames_done.total.remote()), f"segment {i}/{n} of {inp.name} failed")
            continue
        ray.get(frames_done.set.remote(key, frames))
        note = "already done" if r["skipped"] else f"{frames / max(r['seconds'], 1e-3):.2f} fps"
        progress.segment_done(ray.get(frames_done.total.remote()), f"{inp.name} segment {i}/{n}: {note}")
    progress.close()
    ray.shutdown()
    if failed:
        print("restore-on-ray: failed, the finished segments are kept for the next run:\n" + "\n".join(failed), file=sys.stderr)
        return 1

    for inp, out, workdir, p in jobs:
        n = len(p["segments"])
        segs = [workdir / f"segment-{i:04d}-of-{n:04d}.mkv" for i in range(n)]
        t = time.time()
        r = subprocess.run([str(args.command), "--join", str(out), *map(str, segs), "--audio-from", str(inp)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"restore-on-ray: joining {out} failed:\n{r.stderr}", file=sys.stderr)
            return 1
        print(f"restore-on-ray: {out}: {p['frames']} frames in {n} segments, joined in {time.time() - t:.1f} s", file=sys.stderr)
        if not args.keep_segments:
            for s in segs:
                s.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
