"""A folder of wheels that installs hts on a machine with no package index.

    python scripts/wheelhouse.py [--python 3.12] [--platform manylinux_2_28_x86_64]
                                 [--out wheelhouse] [--extras test,browser]
                                 [--torch no|yes] [--torch-index URL] [--skip NAME ...]

(``make wheelhouse PY=… PLATFORM=… OUT=… EXTRAS=… TORCH=… TORCH_INDEX=…`` runs it.)

What it does, on a machine that reaches a package index:

1. builds hts itself as a wheel from this checkout;
2. resolves hts (and the extras asked for) for the target Python and platform with
   ``pip install --dry-run --report --only-binary=:all: --python-version … --platform …``,
   so every version is one pip would pick on the target;
3. where a dependency has no wheel at all (a pure-Python sdist such as python-hostlist),
   downloads its sdist, builds a wheel of it here (``pip wheel --no-deps``) and resolves
   again; where that sdist builds a platform-specific wheel (icet: C++), the sdist itself
   goes into the folder with wheels of its build requirements (setuptools, pybind11), and
   pip builds it on the target (a C++ compiler there; about a minute for icet);
4. downloads each resolved distribution (``pip download --no-deps``) into the folder,
   leaving out torch and what only torch needs (triton, the nvidia-* CUDA libraries)
   unless ``--torch yes``: a GPU machine usually has its own CUDA build of torch;
5. checks the folder is complete: the same resolution again with ``--no-index
   --find-links <folder>`` (and, when torch is left out, a metadata-only stand-in for
   the target's own torch), then writes ``requirements.txt`` (the pins) and
   ``INSTALL.txt`` (how to install) beside the wheels.

On the target, with no network:

    pip install --no-index --find-links wheelhouse hts            # torch already there
    pip install --no-index --find-links wheelhouse 'hts[test]'     # with an extra it holds

The dft extra (GPAW) is not offered: GPAW is built from source against MPICH, libxc,
OpenBLAS and FFTW (``make setup``), which a wheel built elsewhere cannot stand in for.

Markers that depend on the OS or the CPU (``sys_platform``, ``platform_machine``) are
evaluated by pip for the machine this runs on, so build a Linux x86-64 wheelhouse on
Linux x86-64 (an aarch64 one on aarch64).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip"]
#: extras that cannot come from wheels built elsewhere, and why
NOT_OFFERED = {
    "dft": "GPAW is compiled from source against MPICH, libxc, OpenBLAS and FFTW; "
    "build it on the target with `make setup` (or the container recipe in containers/)",
}


def log(msg: str) -> None:
    print(f"wheelhouse: {msg}", flush=True)


def host_platform() -> str:
    """This machine's newest manylinux tag (glibc version and CPU)."""
    libc, ver = platform.libc_ver()
    if libc != "glibc" or not ver:
        raise SystemExit("wheelhouse: not a glibc Linux: give --platform")
    major, minor = ver.split(".")[:2]
    return f"manylinux_{major}_{minor}_{platform.machine()}"


def platform_tags(target: str) -> list[str]:
    """Every platform tag a machine of ``target`` installs: pip matches ``--platform``
    exactly, so manylinux_2_28 also needs manylinux_2_27 … 2_17, manylinux2014 and older."""
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", target)
    legacy = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
    if not m:
        m2 = re.fullmatch(r"(manylinux2014|manylinux2010|manylinux1)_(\w+)", target)
        if not m2:
            return [target]  # macosx_…, win_amd64, linux_x86_64: as given
        m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", f"manylinux_2_{legacy[m2[1]]}_{m2[2]}")
    major, minor, arch = int(m[1]), int(m[2]), m[3]
    tags = [f"manylinux_{major}_{n}_{arch}" for n in range(minor, 4, -1)]
    tags += [f"{name}_{arch}" for name, n in legacy.items() if n <= minor]
    return tags


def target_flags(py: str, tags: list[str]) -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", py, "--implementation", "cp"]
    for t in tags:
        flags += ["--platform", t]
    return flags


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, text=True, **kw)


def resolve(
    spec: str,
    flags: list[str],
    find_links: list[Path],
    extra: list[str],
    report: Path,
    env: dict | None = None,
) -> tuple[bool, str]:
    """``pip install --dry-run`` for the target: (ok, pip's output)."""
    with tempfile.TemporaryDirectory() as t:
        cmd = [
            *PIP,
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "--target",
            t,
            *flags,
            *[a for d in find_links for a in ("--find-links", str(d))],
            *extra,
            spec,
        ]
        p = run(cmd, capture_output=True, env=env)
    return p.returncode == 0, p.stdout + p.stderr


class PlatformSdist(Exception):
    """An sdist whose wheel is platform-specific: it travels as source (``path``)."""

    def __init__(self, path: Path, name: str, version: str, build_requires: list[str]):
        super().__init__(path.name)
        self.path, self.name, self.version, self.build_requires = (
            path,
            name,
            version,
            build_requires,
        )


def build_sdist_wheel(req: str, into: Path, index: list[str]) -> Path:
    """A wheel of a package that has only an sdist, built here, if it is pure Python;
    else :class:`PlatformSdist` carries the sdist (copied into ``into/../sdist``)."""
    with tempfile.TemporaryDirectory() as t:
        sd = Path(t) / "sdist"
        p = run(
            [
                *PIP,
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary=:all:",
                "-d",
                str(sd),
                *index,
                req,
            ],
            capture_output=True,
        )
        if p.returncode:
            raise SystemExit(f"wheelhouse: no wheel and no sdist for {req}:\n{p.stdout}{p.stderr}")
        (src,) = list(sd.iterdir())
        wd = Path(t) / "wheel"
        p = run(
            [*PIP, "wheel", "--quiet", "--no-deps", "-w", str(wd), *index, str(src)],
            capture_output=True,
        )
        if p.returncode:
            raise SystemExit(f"wheelhouse: building {src.name} failed:\n{p.stdout}{p.stderr}")
        (whl,) = list(wd.glob("*.whl"))
        if not whl.name.endswith("-none-any.whl"):
            name, version = whl.name.split("-")[:2]
            keep = into.parent / "sdist"
            keep.mkdir(parents=True, exist_ok=True)
            kept = Path(shutil.copy2(src, keep / src.name))
            raise PlatformSdist(kept, name, version, sdist_build_requires(kept))
        into.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(whl, into / whl.name))


def _sdist_file(sdist: Path, name: str) -> str | None:
    """The text of a file at the top of an sdist (``<pkg>-<version>/<name>``), or None."""
    import tarfile

    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            if m.name.count("/") == 1 and m.name.endswith(f"/{name}"):
                return tar.extractfile(m).read().decode()
    return None


def sdist_requires(sdist: Path) -> list[str]:
    """The ``Requires-Dist`` lines of an sdist's PKG-INFO (its runtime needs)."""
    text = _sdist_file(sdist, "PKG-INFO") or ""
    return [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def sdist_build_requires(sdist: Path) -> list[str]:
    """The ``[build-system] requires`` of an sdist's pyproject.toml (setuptools if none)."""
    default = ["setuptools", "wheel"]
    text = _sdist_file(sdist, "pyproject.toml")
    if text is None:
        return default
    return list(tomllib.loads(text).get("build-system", {}).get("requires", default))


def requires_graph(items: list[dict], env: dict) -> dict[str, set[str]]:
    """name → the names it needs among the resolved ones, markers evaluated for the target."""
    names = {canonicalize_name(i["metadata"]["name"]) for i in items}
    graph: dict[str, set[str]] = {}
    for i in items:
        md = i["metadata"]
        extras = set(i.get("requested_extras") or []) | {""}
        deps = set()
        for line in md.get("requires_dist") or []:
            r = Requirement(line)
            n = canonicalize_name(r.name)
            if n not in names:
                continue
            if r.marker is None or any(r.marker.evaluate({**env, "extra": e}) for e in extras):
                deps.add(n)
        graph[canonicalize_name(md["name"])] = deps
    return graph


def reachable(graph: dict[str, set[str]], roots: set[str], cut: set[str]) -> set[str]:
    seen, todo = set(), [r for r in roots if r not in cut]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo += [d for d in graph.get(n, ()) if d not in cut and d not in seen]
    return seen


def skip_names(words: list[str]) -> list[str]:
    """Package names from words (space or comma separated); ``@FILE`` reads a file of them,
    one a line, ``#`` starting a comment."""
    out = []
    for w in words:
        for part in w.replace(",", " ").split():
            if part.startswith("@"):
                for line in Path(part[1:]).read_text().splitlines():
                    out += line.split("#")[0].split()
            else:
                out.append(part)
    return out


def stub_wheel(name: str, version: str, into: Path, requires: list[str] = ()) -> Path:
    """A metadata-only wheel standing in for a package the target already has (its torch),
    or one built there from its sdist (``requires``: its needs, so they are resolved)."""
    name = canonicalize_name(name)
    stem = f"{name.replace('-', '_')}-{version}"
    dist = f"{stem}.dist-info"
    path = into / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            f"{dist}/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires),
        )
        z.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: hts\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(f"{dist}/RECORD", "")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--python",
        default=f"{sys.version_info[0]}.{sys.version_info[1]}",
        help="target Python X.Y (default: the one running this)",
    )
    ap.add_argument(
        "--platform",
        default="",
        help="target platform tag, e.g. manylinux_2_28_x86_64 (default: this machine's)",
    )
    ap.add_argument("--out", default="wheelhouse", help="folder of wheels (default: wheelhouse)")
    ap.add_argument("--extras", default="", help="comma-separated extras of hts, e.g. test,browser")
    ap.add_argument(
        "--torch",
        default="no",
        choices=["no", "yes"],
        help="include torch and its CUDA libraries (default: no)",
    )
    ap.add_argument(
        "--torch-index",
        default="",
        help="extra index for torch's build, e.g. https://download.pytorch.org/whl/cu128",
    )
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        help="packages the target already has, or @FILE of them (left out like torch, with "
        "what only they need)",
    )
    args = ap.parse_args()
    t_start = time.perf_counter()

    py = args.python
    if not re.fullmatch(r"3\.\d+", py):
        raise SystemExit(f"wheelhouse: --python {py!r}: give X.Y, e.g. 3.12")
    target = args.platform or host_platform()
    tags = platform_tags(target)
    m = re.search(r"(x86_64|aarch64|ppc64le|s390x|i686|armv7l|amd64|arm64)$", target)
    arch = m[1] if m else platform.machine()
    if arch != platform.machine():
        log(
            f"warning: building for {target} on {platform.machine()}: markers that name the CPU "
            "are evaluated for this machine"
        )
    flags = target_flags(py, tags)
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for e in extras:
        if e in NOT_OFFERED:
            raise SystemExit(f"wheelhouse: the {e} extra is not offered: {NOT_OFFERED[e]}")
        if e not in project.get("optional-dependencies", {}):
            raise SystemExit(
                f"wheelhouse: hts has no extra {e!r} "
                f"(it has: {', '.join(project['optional-dependencies'])})"
            )
    index = ["--extra-index-url", args.torch_index] if args.torch_index else []

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stale = [*out.glob("*.whl"), *out.glob("*.tar.gz")]
    for f in stale:  # one version of each: a folder holding two stops a --no-deps install
        f.unlink()
    if stale:
        log(f"removed {len(stale)} wheels and sdists of an earlier build from {out}")
    work = Path(tempfile.mkdtemp(prefix="wheelhouse-"))  # pip's reports, sdists' wheels
    atexit.register(shutil.rmtree, work, True)
    built = work / "built"
    log(f"target: CPython {py}, {target} (platform tags: {', '.join(tags)})")

    # 1. hts itself
    with tempfile.TemporaryDirectory() as t:
        p = run([*PIP, "wheel", "--quiet", "--no-deps", "-w", t, str(ROOT)], capture_output=True)
        if p.returncode:
            raise SystemExit(f"wheelhouse: building hts failed:\n{p.stdout}{p.stderr}")
        (whl,) = list(Path(t).glob("hts-*.whl"))
        hts_whl = Path(shutil.copy2(whl, out / whl.name))
    log(f"built {hts_whl.name}")
    spec = f"{hts_whl}[{','.join(extras)}]" if extras else str(hts_whl)

    # 2-3. resolve for the target; sdist-only packages become wheels built here
    report = work / "resolve.json"
    stubs = work / "stubs"  # metadata stand-ins for sdists built on the target
    stubs.mkdir()
    sdists: list[PlatformSdist] = []
    for _ in range(50):
        links = [built, stubs] if built.exists() else [stubs]
        ok, text = resolve(spec, flags, links, index, report)
        if ok:
            break
        m = re.search(r"No matching distribution found for (.+)", text)
        if not m or canonicalize_name(Requirement(m[1].split(" (from")[0]).name) == "torch":
            raise SystemExit(f"wheelhouse: resolving for the target failed:\n{text}")
        req = m[1].split(" (from")[0].strip()
        log(f"{req}: no wheel for the target; building one from its sdist")
        try:
            w = build_sdist_wheel(req, built, index)
        except PlatformSdist as sd:
            log(
                f"{sd.path.name} builds a platform-specific wheel: it travels as source, "
                f"built on the target (needs {', '.join(sd.build_requires)})"
            )
            sdists.append(sd)
            stub_wheel(sd.name, sd.version, stubs, sdist_requires(sd.path))
            continue
        log(f"built {w.name}")
    else:
        raise SystemExit("wheelhouse: too many sdist-only packages")
    items = json.loads(report.read_text())["install"]

    # 4. what to leave out, then download the rest
    env = {
        "python_version": py,
        "python_full_version": f"{py}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux" if "linux" in target else sys.platform,
        "platform_system": "Linux" if "linux" in target else platform.system(),
        "platform_machine": arch,
        "os_name": "posix",
    }
    graph = requires_graph(items, env)
    cut = {canonicalize_name(s) for s in skip_names(args.skip)}
    if args.torch == "no":
        cut.add("torch")
    keep = reachable(graph, {"hts"}, cut)
    left_out = sorted(
        f"{i['metadata']['name']}=={i['metadata']['version']}"
        for i in items
        if canonicalize_name(i["metadata"]["name"]) not in keep
    )
    pins = sorted(
        (canonicalize_name(i["metadata"]["name"]), i["metadata"]["version"])
        for i in items
        if canonicalize_name(i["metadata"]["name"]) in keep - {"hts"}
    )
    have = (
        {canonicalize_name(w.name.split("-")[0]): w for w in built.glob("*.whl")}
        if built.exists()
        else {}
    )
    from_built = [(n, v) for n, v in pins if n in have and f"-{v}-" in have[n].name]
    for n, _ in from_built:
        shutil.copy2(have[n], out / have[n].name)
    sdist_names = {canonicalize_name(sd.name) for sd in sdists}
    to_get = [f"{n}=={v}" for n, v in pins if (n, v) not in from_built and n not in sdist_names]
    log(f"downloading {len(to_get)} wheels ({len(from_built)} built from sdists)")
    p = run(
        [*PIP, "download", "--quiet", "--no-deps", *flags, *index, "-d", str(out), *to_get],
        capture_output=True,
    )
    if p.returncode:
        raise SystemExit(f"wheelhouse: downloading failed:\n{p.stdout}{p.stderr}")
    to_build = [sd for sd in sdists if canonicalize_name(sd.name) in keep]
    for sd in to_build:
        shutil.copy2(sd.path, out / sd.path.name)
    build_reqs = sorted({r for sd in to_build for r in sd.build_requires})
    if build_reqs:
        # wheels of what building them needs, so pip's isolated build finds them offline
        p = run(
            [*PIP, "download", "--quiet", *flags, *index, "-d", str(out), *build_reqs],
            capture_output=True,
        )
        if p.returncode:
            raise SystemExit(
                f"wheelhouse: downloading the build requirements {build_reqs} failed:\n"
                f"{p.stdout}{p.stderr}"
            )
        log(f"{len(to_build)} sdists to build on the target, with {', '.join(build_reqs)}")

    # 5. complete? the same resolution with no index and no pip configuration (a bare
    # target), the packages left out (torch, --skip) stood in for by metadata-only wheels
    torch_pin = next(
        (
            i["metadata"]["version"].split("+")[0]
            for i in items
            if canonicalize_name(i["metadata"]["name"]) == "torch"
        ),
        None,
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    clean["PIP_CONFIG_FILE"] = os.devnull
    with tempfile.TemporaryDirectory() as t:
        for i in items:
            n = canonicalize_name(i["metadata"]["name"])
            if n in cut:
                stub_wheel(i["metadata"]["name"], i["metadata"]["version"], Path(t))
        for sd in sdists:
            stub_wheel(sd.name, sd.version, Path(t), sdist_requires(sd.path))
        ok, text = resolve(
            f"hts[{','.join(extras)}]" if extras else "hts",
            [*flags, "--no-index"],
            [out, Path(t)],
            [],
            work / "check.json",
            env=clean,
        )
    if not ok:
        raise SystemExit(f"wheelhouse: the folder is incomplete:\n{text}")
    log("checked: pip resolves hts from the folder alone for the target")

    wheels = sorted(out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    kept_sdists = sorted(out.glob("*.tar.gz"))
    (out / "requirements.txt").write_text("".join(f"{w.name}\n" for w in [*wheels, *kept_sdists]))
    want = f"'hts[{','.join(extras)}]'" if extras else "hts"
    torch_line = (
        f"torch is NOT in this folder: install the target's own build of torch {torch_pin} first\n"
        "(a CUDA build on a GPU node).\n"
        if args.torch == "no"
        else f"torch {torch_pin} is in this folder.\n"
    )
    (out / "INSTALL.txt").write_text(
        f"hts wheelhouse: CPython {py}, {target}, extras [{','.join(extras)}], "
        f"{len(wheels)} wheels, {size / 2**20:.0f} MiB.\n\n"
        f"    pip install --no-index --find-links {out.name} {want}\n\n{torch_line}"
        "Where the target's torch (or another package left out) is of another version than\n"
        "hts pins, install the wheels as they are, without resolving:\n"
        f"    pip install --no-index --no-deps {out.name}/*.whl\n"
        + (
            "\nBuilt on the target from source (a C++ compiler needed; the build requirements'\n"
            f"wheels are here): {', '.join(x.name for x in kept_sdists)}; the installs above\n"
            "build them, or on their own:\n"
            f"    pip install --no-index --find-links {out.name} --no-deps "
            f"{' '.join(f'{out.name}/{x.name}' for x in kept_sdists)}\n"
            if kept_sdists
            else ""
        )
        + (
            f"\nLeft out (the target's own, or needed only by those): {', '.join(left_out)}\n"
            if left_out
            else ""
        )
    )
    log(
        f"{len(wheels)} wheels, {size / 2**20:.0f} MiB in {out} ({time.perf_counter() - t_start:.0f} s)"
    )
    if left_out:
        shown = [x for x in left_out if not x.startswith("nvidia-")]
        n_nv = len(left_out) - len(shown)
        log(
            "left out (the target's own, or needed only by those): "
            + ", ".join(shown)
            + (f" and {n_nv} nvidia-* CUDA libraries" if n_nv else "")
        )
    if args.torch == "no":
        log(
            f"torch is not included: install the target's torch {torch_pin} first, or build with "
            "WITH_TORCH=yes (--torch yes) to include it; add TORCH_INDEX=URL (--torch-index) for "
            "a CUDA variant, e.g. https://download.pytorch.org/whl/cu128"
        )
    log(f"install with: pip install --no-index --find-links {out} {want}")


if __name__ == "__main__":
    main()
