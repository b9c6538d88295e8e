# Thin wrapper over CMake. `make` = deps + configure + build (binary: build/imgbuild).
BUILD      ?= build
TEST_BUILD ?= build-asan
JOBS       ?= $(shell nproc)

.PHONY: all deps test-deps build demo test unit e2e bench clean

all: build

deps:
	@bash scripts/install-deps.sh build

test-deps:
	@bash scripts/install-deps.sh test

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# Builds the bundled example at HEAD and prints its tag and digest.
demo: build
	@bash scripts/demo.sh $(BUILD)/imgbuild

# Every test, under AddressSanitizer + UBSan: any sanitizer report fails the run.
test: test-deps
	@cmake -S . -B $(TEST_BUILD) -DCMAKE_BUILD_TYPE=Debug -DIB_SANITIZE=ON >/dev/null
	@cmake --build $(TEST_BUILD) -j $(JOBS)
	@cd $(TEST_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=86 \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:exitcode=87 \
	  ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

bench: build test-deps
	@bash bench/build.sh $(BUILD)/imgbuild
	@bash bench/push.sh $(BUILD)/imgbuild
	@bash bench/cache.sh $(BUILD)/imgbuild
	@if [ -f bench/run.sh ]; then bash bench/run.sh $(BUILD)/imgbuild; fi
	@bash bench/slim.sh $(BUILD)/imgbuild

clean:
	rm -rf $(BUILD) $(TEST_BUILD)
