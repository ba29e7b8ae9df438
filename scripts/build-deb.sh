#!/usr/bin/env bash
# make deb: builds the sdbox Debian package out of tree and runs lintian.
#
# The source tree (tracked and new files, not ignored ones) is copied to
# build/deb/src so that dpkg-buildpackage writes nothing into the work tree or
# its parent; the hash-pinned Python artefacts are downloaded once into
# build/deb/wheelhouse (pip checks each against debian/requirements.lock), and
# the package build itself is offline.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/build/deb
version=$(dpkg-parsechangelog -l debian/changelog -S Version)
src=$out/src/sdbox-$version
start=$SECONDS

mkdir -p "$out/wheelhouse"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# A venv of Debian's Python holding only the pinned setuptools reads the
# sdists' metadata (--no-build-isolation), instead of pip fetching their
# build requirements unpinned.
tools=$out/tools-venv
if [ ! -x "$tools/bin/python" ]; then
    /usr/bin/python3 -m venv "$tools"
    "$tools/bin/python" -m pip download -q --no-deps --require-hashes -d "$out/wheelhouse" \
        -r debian/build-requirements.lock
    "$tools/bin/python" -m pip install -q --no-index --no-deps --require-hashes \
        --find-links "$out/wheelhouse" -r debian/build-requirements.lock
fi
"$tools/bin/python" -m pip download -q --no-deps --no-build-isolation --require-hashes \
    -d "$out/wheelhouse" -r debian/requirements.lock -r debian/build-requirements.lock 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }

rm -rf "$out/src"
mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -c | tar -x -C "$src"
rm -f "$out"/*.deb "$out"/*.buildinfo "$out"/*.changes

# SOURCE_DATE_EPOCH: the changelog's date, so that two builds of one source match.
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l debian/changelog -S Timestamp)
export SOURCE_DATE_EPOCH
(cd "$src" && SDBOX_WHEELHOUSE="$out/wheelhouse" dpkg-buildpackage -us -uc -b) \
    > "$out/build.log" 2>&1 || { tail -40 "$out/build.log" >&2; echo "build-deb: dpkg-buildpackage failed (log: $out/build.log)" >&2; exit 1; }
mv "$out"/src/*.deb "$out"/src/*.buildinfo "$out"/src/*.changes "$out"/
deb=$(ls "$out"/sdbox_"$version"_*.deb)
echo "build-deb: $(basename "$deb") $(du -h "$deb" | cut -f1) in $((SECONDS - start)) s"

# lintian: errors and warnings fail the build; overrides carry their reason
# (debian/sdbox.lintian-overrides).
lintian --fail-on error,warning --info --display-info "$out"/sdbox_"$version"_*.changes | tee "$out/lintian.log"
echo "build-deb: lintian clean (log: $out/lintian.log)"
