#!/usr/bin/env python3
"""Installs the model weights listed in weights/manifest.json into the folder gpenfilter reads.

    scripts/install-weights.py                 # the default set (GPEN-BFR-256/512, ParseNet, detectors)
    scripts/install-weights.py GPEN-BFR-1024 realesrnet_x2
    scripts/install-weights.py --all
    scripts/install-weights.py --list

Downloads resume where a previous attempt stopped (a `<file>.part` beside the target, continued
with an HTTP Range request). A file is installed only when its size and sha256 match the manifest
where the manifest knows them; where it does not, the file must at least hold the model's tensor
bytes, and its sha256 is printed and recorded in `checksums.sha256` in the folder, so that a later
change of the file is noticed. Exit status: 0 all requested models installed, 1 some failed (each
failure is named with its reason), 2 bad arguments. Standard library only.
"""
import argparse
import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 1 << 20


def default_dir():
    # Mirrors restorer::default_model_dir in the plugin.
    d = os.environ.get("GST_GPEN_MODEL_DIR")
    if d:
        return d
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "gst-gpen", "weights")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def read_recorded(folder):
    rec = {}
    path = os.path.join(folder, "checksums.sha256")
    if os.path.exists(path):
        for line in open(path):
            parts = line.split()
            if len(parts) == 2:
                rec[parts[1]] = parts[0]
    return rec


def record(folder, name, digest):
    rec = read_recorded(folder)
    rec[name] = digest
    with open(os.path.join(folder, "checksums.sha256"), "w") as f:
        for n in sorted(rec):
            f.write(f"{rec[n]}  {n}\n")


def check(path, model, recorded):
    """None when the file is right, else why not."""
    size = os.path.getsize(path)
    if model.get("size") is not None and size != model["size"]:
        return f"size {size} bytes, expected {model['size']}"
    if model.get("tensor_bytes") and size < model["tensor_bytes"]:
        return f"only {size} bytes, but the model's tensors alone take {model['tensor_bytes']} (an error page?)"
    digest = sha256_of(path)
    expected = model.get("sha256") or recorded.get(model["file"])
    if expected and digest != expected:
        return f"sha256 {digest}, expected {expected}"
    return None


def download(url, part, timeout):
    """Appends to `part` from where it stops; returns the bytes now in it."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    req = urllib.request.Request(url, headers={"User-Agent": "gst-gpen-install-weights"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            return have  # the part is already complete
        raise
    with resp:
        if have and resp.status != 206:
            print(f"  the server does not resume; starting again from 0", flush=True)
            have = 0
        mode = "ab" if have else "wb"
        total = resp.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        done, shown = have, -1
        with open(part, mode) as f:
            while True:
                try:
                    block = resp.read(CHUNK)
                except http.client.IncompleteRead as e:
                    f.write(e.partial)
                    done += len(e.partial)
                    block = b""
                if not block:
                    break
                f.write(block)
                done += len(block)
                pct = int(100 * done / total) if total else None
                if pct is not None and pct // 10 != shown:
                    shown = pct // 10
                    print(f"  {done >> 20} MiB of {total >> 20} MiB ({pct}%)", flush=True)
        if total is not None and done < total:
            raise IOError(f"connection ended at {done} of {total} bytes; run again to resume")
    return done


def install(model, folder, timeout):
    """None on success, else the reason of the failure."""
    target = os.path.join(folder, model["file"])
    recorded = read_recorded(folder)
    if os.path.exists(target):
        why = check(target, model, recorded)
        if why is None:
            print(f"{model['name']}: already installed ({target})")
            return None
        print(f"{model['name']}: the installed file is wrong ({why}); downloading it again")
        os.replace(target, target + ".bad")
    part = target + ".part"
    errors = []
    for url in model["urls"]:
        print(f"{model['name']}: downloading {url}", flush=True)
        try:
            download(url, part, timeout)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            errors.append(f"{url}: {e}")
            continue
        why = check(part, model, recorded)
        if why is not None:
            # A wrong file is not resumed next time.
            os.remove(part)
            errors.append(f"{url}: downloaded file rejected: {why}")
            continue
        os.replace(part, target)
        digest = sha256_of(target)
        if not model.get("sha256"):
            record(folder, model["file"], digest)
            print(f"{model['name']}: the manifest has no sha256 for it; recorded {digest} in checksums.sha256")
        print(f"{model['name']}: installed {target} ({os.path.getsize(target)} bytes, sha256 {digest})")
        return None
    return "; ".join(errors) or "no download address"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="model names (default: those marked default in the manifest)")
    ap.add_argument("--all", action="store_true", help="every model of the manifest")
    ap.add_argument("--list", action="store_true", help="list the models and whether they are installed")
    ap.add_argument("--dir", default=default_dir(), help="install folder (default: %(default)s)")
    ap.add_argument("--manifest", default=os.path.join(ROOT, "weights", "manifest.json"))
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a download fails")
    a = ap.parse_args()

    try:
        models = json.load(open(a.manifest))["models"]
    except (OSError, ValueError, KeyError) as e:
        print(f"install-weights: cannot read the manifest {a.manifest}: {e}", file=sys.stderr)
        return 2
    by_name = {m["name"]: m for m in models}
    if a.list:
        for m in models:
            there = os.path.exists(os.path.join(a.dir, m["file"]))
            print(f"{m['name']:26} {'installed' if there else '-':10} {m['architecture']:11} {m['variant']}  [{m['licence']}]")
        return 0
    unknown = [n for n in a.models if n not in by_name]
    if unknown:
        print(f"install-weights: unknown model(s) {', '.join(unknown)}; known: {', '.join(by_name)}", file=sys.stderr)
        return 2
    chosen = models if a.all else [by_name[n] for n in a.models] if a.models else [m for m in models if m.get("default")]
    os.makedirs(a.dir, exist_ok=True)
    failed = []
    for m in chosen:
        why = install(m, a.dir, a.timeout)
        if why is not None:
            failed.append((m["name"], why))
    for name, why in failed:
        print(f"install-weights: FAILED {name}: {why}", file=sys.stderr)
    print(f"install-weights: {len(chosen) - len(failed)} of {len(chosen)} installed in {a.dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
