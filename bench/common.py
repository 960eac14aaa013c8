"""Shared by the benchmarks: building Skiff and the probes, installing QEMU,
and timing a VMM from spawn to a marker on its console."""
import os, shutil, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ensure_qemu():
    if shutil.which("qemu-system-x86_64"):
        return
    log("[bench] installing qemu-system-x86")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-q", "qemu-system-x86"], check=True, env=env, stdout=sys.stderr)


def build():
    """Returns (skiff binary, probe directory)."""
    skiff = subprocess.run([os.path.join(ROOT, "scripts/build")], check=True, capture_output=True, text=True).stdout.strip()
    probes = subprocess.run([os.path.join(ROOT, "probes/build.sh"), os.path.join(ROOT, ".build/probes")],
                            check=True, capture_output=True, text=True).stdout.strip()
    return skiff, probes


def spawn_helper():
    """bench/spawn, built once (static, so its own footprint is tiny)."""
    out = os.path.join(ROOT, ".build/bench-spawn")
    src = os.path.join(ROOT, "bench/spawn.c")
    if not os.path.exists(out) or os.path.getmtime(src) > os.path.getmtime(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        subprocess.run(["gcc", "-O2", "-static", "-o", out, src], check=True)
    return out


def time_to_marker(argv, marker, timeout=20.0):
    """Runs argv under bench/spawn; returns (seconds from spawn to the marker
    on stdout, peak RSS in KiB)."""
    r = subprocess.run([spawn_helper(), marker, str(int(timeout * 1000))] + argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]}: {r.stderr.strip()}")
    ns, rss = r.stdout.split()
    return int(ns) / 1e9, int(rss)


def median(xs):
    return statistics.median(xs)


def release_skiffd():
    """skiffd as the package builds it (scripts/package-deb): optimized, in a
    folder of its own (.build/release holds the static skiff, built with
    other flags); $SKIFFD_BIN instead if set."""
    if os.environ.get("SKIFFD_BIN"):
        return os.environ["SKIFFD_BIN"]
    log("[bench] building skiffd (release)")
    subprocess.run(["swift", "build", "-c", "release", "--product", "skiffd", "--static-swift-stdlib", "--scratch-path", ".build-release"],
                   cwd=ROOT, check=True, stdout=sys.stderr)
    return os.path.join(ROOT, ".build-release/release/skiffd")
