"""Install, from a folder of wheels, only the distributions this interpreter lacks (GPU images, no network).

    python benchmarks/gpu/install_missing.py .whl /tmp/hf-soup-site

Each wheel goes in with ``--no-deps`` into the target folder (put first on ``PYTHONPATH``), so a
package the image already has is never shadowed by another version; a wheel that does not
fit this platform is reported and skipped, and the others still go in.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path


def distribution_name(wheel: Path) -> str:
    """The distribution a wheel file holds (its file name up to the first dash), normalised."""
    return wheel.name.split("-", 1)[0].replace("_", "-").lower()


def installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def main(folder: str, target: str) -> int:
    wheels = sorted(Path(folder).glob("*.whl"))
    missing = [wheel for wheel in wheels if not installed(distribution_name(wheel))]
    print(f"{len(wheels)} wheels, {len(missing)} missing here: {', '.join(distribution_name(w) for w in missing)}")
    failed = []
    for wheel in missing:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                               "--target", target, str(wheel)], capture_output=True, text=True)
        if done.returncode:
            failed.append(f"{wheel.name}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else '?'}")
    for line in failed:
        print("skipped", line)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
