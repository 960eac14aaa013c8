#!/usr/bin/env python3
"""Image archives for OCIImportTests: OUT BUSYBOX CANARY.

good.tar    docker save, two layers: busybox, /bin/sh, a setuid file, a
            hard link; the second whites out a file and makes a folder opaque
good-oci/   an OCI image layout folder, its layer gzipped
bad-*.tar   docker save archives each with one hostile thing in it; CANARY
            is the absolute path that none of them may create
"""
import gzip, hashlib, io, json, os, sys, tarfile

out, busybox, canary = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(out, exist_ok=True)
bb = open(busybox, "rb").read()


def entry(t, name, data=b"", mode=0o644, kind=tarfile.REGTYPE, link="", **kw):
    i = tarfile.TarInfo(name)
    i.type, i.mode, i.linkname = kind, mode, link
    for k, v in kw.items():
        setattr(i, k, v)
    if kind == tarfile.REGTYPE:
        i.size = len(data)
        t.addfile(i, io.BytesIO(data))
    else:
        t.addfile(i)


def layer(entries, fmt=tarfile.GNU_FORMAT, pax=None):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=fmt, pax_headers=pax or {}) as t:
        for e in entries:
            entry(t, *e[0:2], **e[2]) if len(e) == 3 else entry(t, *e)
    return b.getvalue()


base = [("bin", b"", {"kind": tarfile.DIRTYPE, "mode": 0o755}),
        ("bin/busybox", bb, {"mode": 0o755}),
        ("bin/sh", b"", {"kind": tarfile.SYMTYPE, "link": "busybox"}),
        ("bin/suid", b"#!/bin/sh\n", {"mode": 0o4755}),
        ("bin/bb2", b"", {"kind": tarfile.LNKTYPE, "link": "bin/busybox"}),
        ("etc/passwd", b"root:x:0:0:root:/:/bin/sh\n", {}),
        ("a/old", b"old\n", {}),
        ("b/x", b"x\n", {})]
upper = [("a/.wh.old", b"", {}), ("b/.wh..wh..opq", b"", {}), ("b/new", b"new\n", {})]
config = {"config": {"Cmd": ["/bin/sh", "-c", "echo imported-$GREETING"], "Env": ["GREETING=ok", "PATH=/bin"], "WorkingDir": "/"}}


def docker_save(name, layers, config=config, manifest=None):
    with tarfile.open(os.path.join(out, name), "w") as t:
        paths = []
        for n, data in enumerate(layers):
            p = "l%d/layer.tar" % n
            paths.append(p)
            entry(t, p, data)
        entry(t, "config.json", json.dumps(config).encode())
        m = manifest or [{"Config": "config.json", "RepoTags": ["tiny:1"], "Layers": paths}]
        entry(t, "manifest.json", json.dumps(m).encode())


docker_save("good.tar", [layer(base), layer(upper)])

# OCI layout folder: blobs by digest, the layer gzipped.
oci = os.path.join(out, "good-oci")
os.makedirs(oci + "/blobs/sha256", exist_ok=True)


def blob(data):
    d = hashlib.sha256(data).hexdigest()
    open(oci + "/blobs/sha256/" + d, "wb").write(data)
    return "sha256:" + d, len(data)


l, ls = blob(gzip.compress(layer(base), mtime=0))
c, cs = blob(json.dumps(config).encode())
m, ms = blob(json.dumps({"schemaVersion": 2, "config": {"digest": c, "size": cs, "mediaType": "application/vnd.oci.image.config.v1+json"},
                         "layers": [{"digest": l, "size": ls, "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}]}).encode())
json.dump({"schemaVersion": 2, "manifests": [{"digest": m, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "tinyoci:2"}}]},
          open(oci + "/index.json", "w"))
open(oci + "/oci-layout", "w").write('{"imageLayoutVersion": "1.0.0"}')

climb = "../" * 12 + canary.lstrip("/")
name = os.path.basename(canary)
docker_save("bad-dotdot.tar", [layer([(climb, b"escaped\n", {})])])
docker_save("bad-absolute.tar", [layer([(canary, b"escaped\n", {})], fmt=tarfile.PAX_FORMAT)])
docker_save("bad-symlink.tar", [layer([("evil", b"", {"kind": tarfile.SYMTYPE, "link": os.path.dirname(canary)}),
                                        ("evil/" + name, b"escaped\n", {})])])
docker_save("bad-hardlink.tar", [layer([("x", b"", {"kind": tarfile.LNKTYPE, "link": "../../../../../../etc/passwd"})])])
docker_save("bad-device.tar", [layer([("dev/kmsg", b"", {"kind": tarfile.CHRTYPE, "devmajor": 1, "devminor": 11})])])
docker_save("bad-notar.tar", [os.urandom(4096)])
docker_save("bad-missing.tar", [layer(base)], manifest=[{"Config": "config.json", "Layers": ["nope/layer.tar"]}])
docker_save("bad-pax.tar", [layer([("f", b"x", {})], fmt=tarfile.PAX_FORMAT, pax={"comment": "x" * 100000})])
