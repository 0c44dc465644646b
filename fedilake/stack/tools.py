"""Finding Java and Maven, and resolving each component's jars from Maven Central through `deploy/*/pom.xml`."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fedilake.settings import REPO_ROOT

from .errors import MissingToolError, StackError

log = logging.getLogger(__name__)

DEPLOY_DIR = REPO_ROOT / "deploy"
# Hadoop 3.4 calls Subject.getSubject, which Java 23 and later refuse.
SUPPORTED_JAVA = range(11, 22)
_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


@dataclass(frozen=True)
class JavaRuntime:
    java: Path
    major: int


def _java_major(java: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    match = _VERSION.search(out.stderr + out.stdout)
    if match is None:
        return None
    major = int(match[1])
    return int(match[2]) if major == 1 and match[2] else major


def find_java(java_home: Path | None) -> JavaRuntime:
    """The first Java 11-21 among: the configured home, $JAVA_HOME, `java` on PATH, /usr/lib/jvm."""
    candidates: list[Path] = []
    for home in (java_home, os.environ.get("JAVA_HOME")):
        if home:
            candidates.append(Path(home) / "bin" / "java")
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path).resolve())
    jvm_root = Path("/usr/lib/jvm")
    if jvm_root.is_dir():
        candidates.extend(sorted(jvm_root.glob("*/bin/java")))
    seen: list[str] = []
    for java in candidates:
        major = _java_major(java) if java.exists() else None
        seen.append(f"{java} ({major or 'not runnable'})")
        if major is not None and major in SUPPORTED_JAVA:
            return JavaRuntime(java, major)
    raise MissingToolError(
        "no suitable Java found: the stack needs Java 11 to 21 (17 recommended). "
        "Install it (Debian: apt-get install openjdk-17-jdk-headless) or set "
        "FEDILAKE_STACK_JAVA_HOME. Looked at: " + ("; ".join(seen) or "nothing")
    )


def find_maven() -> Path:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MissingToolError(
            "Maven (mvn) is not on PATH: the stack resolves its jars from Maven Central with it. "
            "Install it (Debian: apt-get install maven)."
        )
    return Path(mvn)


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def ensure_jars(component: str, lib_root: Path, java: JavaRuntime) -> Path:
    """The directory of `component`'s jars, resolved once per version of its pom."""
    pom = DEPLOY_DIR / component / "pom.xml"
    target = lib_root / component
    stamp = target / ".pom.sha256"
    digest = _pom_digest(pom)
    if stamp.exists() and stamp.read_text().strip() == digest:
        return target
    mvn = find_maven()
    log.info("resolving %s jars from Maven Central into %s (first run only)", component, target)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    env = dict(os.environ, JAVA_HOME=str(java.java.parent.parent))
    proc = subprocess.run(
        [
            str(mvn),
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={target}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise StackError(f"Maven could not resolve the {component} jars from {pom}", tail)
    stamp.write_text(digest + "\n")
    return target
