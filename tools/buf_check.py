"""`buf lint` and `buf breaking` on protos/ (buf.yaml), as `make test` runs them.

Breaking changes are judged against the previous commit (`HEAD~1`, the
commit a change lands on). A checkout without one (a clone of depth 1, a
tree without git history), or history buf cannot read, skips that check
with a note saying why instead of failing: there is nothing to compare
with, and a red build would name no fault of the protos. Lint always runs;
neither check needs the network (buf.yaml has no dependencies).

Usage: python tools/buf_check.py [--against REF] [--root CHECKOUT]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# buf's exit status when it ran and found violations; anything else non-zero is buf failing to run.
FOUND_VIOLATIONS = 100


def _buf() -> str:
    """The buf of the `buf-bin` package, installed beside this interpreter."""
    found = shutil.which("buf", path=sysconfig.get_path("scripts"))
    if found is None:
        raise SystemExit("buf not found; install the dev extras (buf-bin)")
    return found


def _git(root: Path, *args: str) -> str | None:
    """git's output, or None when git is missing or fails (no repository, unknown ref)."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def lint(buf: str, root: Path) -> bool:
    passed = subprocess.run([buf, "lint"], cwd=root, check=False).returncode == 0
    print("buf lint: passed" if passed else "buf lint: failed (above)")
    return passed


def breaking(buf: str, root: Path, against: str) -> bool:
    """False only for breaking changes found; a comparison that cannot be made is skipped."""
    commit = _git(root, "rev-parse", "--verify", "--quiet", f"{against}^{{commit}}")
    common_dir = _git(root, "rev-parse", "--git-common-dir")
    if commit is None or common_dir is None:
        print(f"buf breaking: skipped, this checkout has no {against} to compare with "
              "(a shallow clone or a tree without git history)")
        return True
    # The common git dir, not `.git`: in a worktree `.git` is a file buf cannot read.
    git_dir = (root / common_dir).resolve()
    done = subprocess.run(
        [buf, "breaking", "--against", f"{git_dir}#format=git,ref={commit},subdir=protos"],
        cwd=root, capture_output=True, text=True, check=False,
    )
    print(done.stdout, end="")
    if done.returncode == 0:
        print(f"buf breaking: no breaking change since {against} ({commit[:12]})")
        return True
    if done.returncode == FOUND_VIOLATIONS:
        print(f"buf breaking: breaking changes since {against} ({commit[:12]}), above")
        return False
    print(f"buf breaking: skipped, buf could not read {against} ({commit[:12]}):\n{done.stderr.strip()}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD~1", help="git ref to compare with (default: HEAD~1)")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to check (default: this one)")
    args = parser.parse_args(argv)
    buf = _buf()
    linted = lint(buf, args.root)
    compatible = breaking(buf, args.root, args.against)
    return 0 if linted and compatible else 1


if __name__ == "__main__":
    sys.exit(main())
