# The C margin core (services/marginflow/core): build, sanitizer run, benchmark.
# Included from the main Makefile; PY is the project's virtualenv python.
PY ?= .venv/bin/python
CORE_DIR := services/marginflow/core
CORE_TESTS := tests/unit/core tests/golden/core
# ASan must be the first DSO loaded into the (unsanitized) python process.
CORE_LIBASAN = $(shell gcc -print-file-name=libasan.so)
# Python frees little at exit: leak reports would be noise; UBSan stops at the first finding.
CORE_ASAN_ENV = ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONMALLOC=malloc MARGINFLOW_CORE=c

.PHONY: core-build core-test core-test-isa core-sanitize core-valgrind bench-core

# Editable install compiles _ccore in place (setup.py); build_ext --inplace is the fallback.
core-build:
	$(PY) -m pip install -q --no-build-isolation --no-deps -e . || $(PY) setup.py -q build_ext --inplace
	$(PY) -c "import marginflow.core as c; assert c.IMPLEMENTATION == 'c', c.IMPLEMENTATION; print('core:', c.ccore.__file__)"

core-test: core-build
	$(PY) -m pytest -q $(CORE_TESTS)

# The same tests with the hot loops capped at each instruction-set level (levels the CPU
# lacks fall back to the best it has).
core-test-isa: core-build
	@for isa in generic avx2 avx512; do echo "== MARGINFLOW_CORE_ISA=$$isa"; \
		MARGINFLOW_CORE_ISA=$$isa $(PY) -m pytest -q -p no:cacheprovider $(CORE_TESTS) || exit 1; done

# Rebuild with -fsanitize=address,undefined, run the core tests under it, then restore the
# optimised build whatever the outcome (the exit status is the sanitized run's).
core-sanitize:
	@status=0; \
	MARGINFLOW_CORE_SANITIZE=1 $(PY) setup.py -q build_ext --inplace --force && \
	env $(CORE_ASAN_ENV) LD_PRELOAD=$(CORE_LIBASAN) $(PY) -m pytest -q -p no:cacheprovider $(CORE_TESTS) || status=$$?; \
	$(PY) setup.py -q build_ext --inplace --force >/dev/null || status=1; \
	if [ $$status -eq 0 ]; then echo "core-sanitize: clean (ASan+UBSan)"; else echo "core-sanitize: FAILED ($$status)"; fi; \
	exit $$status

# Memcheck on a short workload (every entry point, errors included) with the -O0 -g build.
# CPython and numpy have known memcheck noise of their own: only the reports whose stack
# goes through _ccore count (awk below), and they must be none.
CORE_VG_LOG := build/core-valgrind.log
core-valgrind:
	@mkdir -p build; status=0; \
	MARGINFLOW_CORE_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force && \
	PYTHONMALLOC=malloc valgrind --leak-check=full --show-leak-kinds=definite --num-callers=30 \
		--log-file=$(CORE_VG_LOG) $(PY) bench/bench_core.py --smoke || status=$$?; \
	$(PY) setup.py -q build_ext --inplace --force >/dev/null || status=1; \
	ours=$$(awk '/^==[0-9]+== *$$/{if (blk ~ /_ccore/ && blk ~ /(Invalid|uninitialised|Conditional jump|definitely lost|Mismatched|overlap)/) n++; blk=""; next} {blk = blk "\n" $$0} END{print n+0}' $(CORE_VG_LOG)); \
	echo "core-valgrind: $$ours memcheck report(s) involving _ccore (full log: $(CORE_VG_LOG))"; \
	[ $$status -eq 0 ] && [ $$ours -eq 0 ]

bench-core: core-build
	$(PY) bench/bench_core.py $(BENCH_CORE_ARGS)
