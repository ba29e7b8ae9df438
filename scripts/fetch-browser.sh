#!/usr/bin/env bash
# A headless Chromium for the dashboard's browser test (tests/integration/test_fleet_dashboard.py),
# into build/browser/. Debian's chromium is not in the mirror these machines reach and Playwright's
# browser download is not reachable; the npm registry is, and @sparticuz/chromium ships a headless
# Chromium there (brotli-packed, with the few libraries and fonts it needs). npm fetches the pinned
# version, the tarball's SHA-512 must match the pin, node's zlib unpacks the brotli files.
# Idempotent: a finished build/browser/chromium is kept. Exit 0 with build/browser/UNAVAILABLE
# holding the reason when npm or node is missing or the download fails (the test then skips and
# says why); any other failure (a hash mismatch) is an error.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=153.0.0
# `npm view @sparticuz/chromium@153.0.0 dist.integrity`
INTEGRITY=sha512-jiGWqSvPMdu4+P9TilYqAR7yEGPEHINx+lCvE/NqNO/EHYzF/x1hUiI5T6ioVIt7dEy7n88byyT0vk+dnsgQwA==
OUT=build/browser

if [ -x "$OUT/chromium" ] && [ "$(cat "$OUT/VERSION" 2>/dev/null)" = "$VERSION" ]; then
    exit 0
fi
unavailable() {
    mkdir -p "$OUT"
    echo "$1" > "$OUT/UNAVAILABLE"
    echo "fetch-browser: $1" >&2
    exit 0
}
for tool in npm node; do
    command -v "$tool" >/dev/null || unavailable "'$tool' is not installed (Node.js from the distribution or NodeSource)"
done

rm -rf "$OUT" && mkdir -p "$OUT/pack"
if ! (cd "$OUT/pack" && npm pack --silent "@sparticuz/chromium@$VERSION" >/dev/null 2>npm.log); then
    unavailable "npm could not fetch @sparticuz/chromium@$VERSION: $(tail -1 "$OUT/pack/npm.log")"
fi
tarball="$OUT/pack/sparticuz-chromium-$VERSION.tgz"
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$actual" != "$INTEGRITY" ]; then
    echo "fetch-browser: $tarball does not match the pinned SHA-512 ($actual)" >&2
    exit 1
fi
tar xzf "$tarball" -C "$OUT/pack"
node -e '
const zlib = require("zlib"), fs = require("fs");
const [bin, out] = process.argv.slice(1);
for (const name of ["chromium", "al2023.tar", "swiftshader.tar", "fonts.tar"]) {
    fs.writeFileSync(`${out}/${name}`, zlib.brotliDecompressSync(fs.readFileSync(`${bin}/${name}.br`)));
}' "$OUT/pack/package/bin" "$OUT"
for archive in al2023 swiftshader fonts; do
    tar xf "$OUT/$archive.tar" -C "$OUT" && rm "$OUT/$archive.tar"
done
# the package's fonts.conf points at AWS Lambda's paths: ours names its fonts and Debian's
cat > "$OUT/fonts.conf" <<CONF
<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig>
  <dir>$PWD/$OUT/fonts</dir>
  <dir>/usr/share/fonts</dir>
  <cachedir>$PWD/$OUT/fonts-cache</cachedir>
</fontconfig>
CONF
rm -rf "$OUT/pack"
chmod 755 "$OUT/chromium"
echo "$VERSION" > "$OUT/VERSION"
echo "fetch-browser: headless Chromium $VERSION in $OUT/"
