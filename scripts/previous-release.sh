#!/usr/bin/env bash
# Builds the previous release named in tests/previous-release (a commit of this repository)
# in a git worktree under .data/previous-release/, for the redeploy test, and prints the
# path of its manifest. The build is the commit's own: the packages its manifest's build
# commands name, into the worktree's own target/ (so the manifest's relative sources
# resolve, and the current build is never overwritten). Built once; later runs reuse it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
spec="$root/tests/previous-release"
value() { sed -n "s/^$1 *= *//p" "$spec" | head -n 1; }
commit=$(value commit)
manifest=$(value manifest)
[ -n "$commit" ] && [ -n "$manifest" ] || { echo "previous-release: $spec names no commit or manifest" >&2; exit 1; }
if ! git -C "$root" cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "previous-release: commit $commit is not in this clone (a shallow clone? fetch its history)" >&2
  exit 1
fi
dir="$root/.data/previous-release/$commit"
if [ ! -f "$dir/$manifest" ]; then
  git -C "$root" worktree prune
  mkdir -p "$(dirname "$dir")"
  git -C "$root" worktree add --force --detach "$dir" "$commit" >&2
fi
stamp="$dir/target/.flashclaim-built"
if [ ! -f "$stamp" ]; then
  # Every package the manifest's build commands name (`-p name`), nothing else.
  packages=$(grep -o -- '-p [a-z0-9_-]*' "$dir/$manifest" | sort -u | tr '\n' ' ')
  echo "previous-release: building $commit ($manifest): $packages" >&2
  # shellcheck disable=SC2086
  (cd "$dir" && cargo build -q --target wasm32-wasip2 --release $packages) >&2
  touch "$stamp"
fi
echo "$dir/$manifest"
