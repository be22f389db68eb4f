# portico — see README.md. `make` builds build/portico.
CC      ?= cc
# -flto: proxy/ is split by concern into files whose hot functions call each
# other; link-time optimisation inlines across them as one file did
# (bench/instr.sh: +8% user-space instructions per request without it)
CFLAGS  ?= -O2 -g -flto=auto
SAN     ?= 0
BUILD   := build
ifeq ($(SAN),1)
BUILD   := build/san
CFLAGS  := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
LDFLAGS += -fsanitize=address,undefined
endif
ifeq ($(findstring -flto,$(CFLAGS)),-flto)
LDFLAGS += -flto=auto
endif
override CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Isrc -MMD -MP
LDLIBS  := -lyaml -lpthread -lssl -lcrypto -lz -lbrotlienc -lzstd
PYTHON  := /usr/bin/python3

SRCS    := $(sort $(wildcard src/*/*.c))
OBJS    := $(SRCS:src/%.c=$(BUILD)/obj/%.o)
LIBOBJS := $(filter-out $(BUILD)/obj/main.o,$(OBJS))
UNIT    := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/test_*.c))
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: all deps run test unit integration fuzz bench bench-pg bench-cache bench-evict bench-compress conformance clean
all: $(BUILD)/portico

deps:
	@scripts/deps.sh

$(BUILD)/portico: $(BUILD)/obj/main.o $(LIBOBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/obj/main.o: override CFLAGS += -DPORTICO_VERSION='"$(VERSION)"'
# main.o is rebuilt when the version changes (a new commit), not only when main.c does,
# so that --version and the logs name the commit that was built
$(BUILD)/obj/main.o: $(BUILD)/version.txt
$(BUILD)/version.txt: FORCE
	@mkdir -p $(dir $@); echo '$(VERSION)' | cmp -s - $@ 2>/dev/null || echo '$(VERSION)' > $@
FORCE:
$(BUILD)/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(LIBOBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $(LDFLAGS) -o $@ $< $(LIBOBJS) $(LDLIBS) -lcmocka

run: deps all
	@$(PYTHON) examples/demo_upstream.py --port 9001 & echo $$! > $(BUILD)/demo.pid; \
	trap 'kill $$(cat $(BUILD)/demo.pid) 2>/dev/null' EXIT INT TERM; \
	echo; echo "portico on http://127.0.0.1:8080 in front of a demo upstream on :9001. Try:"; \
	echo "  curl -i http://127.0.0.1:8080/"; \
	echo "  curl -i http://127.0.0.1:8080/echo -d 'hello'"; \
	echo "  curl -i 'http://127.0.0.1:8080/bytes?n=100000' -o /dev/null"; \
	echo "  curl -i http://127.0.0.1:8080/static/app.js          # headers: Cache-Control set, Server removed"; \
	echo "  curl -i 'http://127.0.0.1:8080/./static/%61pp.js'     # the same route: paths are matched normalised"; \
	echo "  for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:8080/auth/login; done; echo   # 200 200 200 429 429"; \
	echo "  for i in 1 2 3; do curl -s -D- -o /dev/null http://127.0.0.1:8080/feed/home | grep -E 'X-Cache|Age'; done   # MISS, then HIT from memory"; \
	echo "  curl -s -X POST http://127.0.0.1:8080/posts/ -d x >/dev/null; curl -sI http://127.0.0.1:8080/feed/home | grep X-Cache   # a write bumped the feed"; \
	echo "  curl -s -X POST 'http://127.0.0.1:9901/cache/purge?prefix=/feed/'   # purge by URL, prefix or tag"; \
	echo "  curl -s -H 'Accept-Encoding: br' -D- -o /dev/null http://127.0.0.1:8080/feed/home | grep -iE 'content-(encoding|length)'   # brotli, compressed once and kept in the cache"; \
	echo "  open http://127.0.0.1:9901/   curl -s http://127.0.0.1:9901/metrics | head   # status page, metrics"; \
	echo "Ctrl-C stops both."; echo; \
	$(BUILD)/portico -c examples/quickstart.yaml

# portico with a test-only stage (tests/stage/): the stage interface's own tests
$(BUILD)/tests/portico-stagetest: tests/stage/test_stage.c $(BUILD)/obj/main.o $(LIBOBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/obj/main.o $(LIBOBJS) $(LDLIBS)

unit: $(UNIT)
	@set -e; for t in $(UNIT); do echo "== $$t"; $$t; done

# -rsxX: every skipped or xfailed test says why in the summary
integration: $(BUILD)/portico $(BUILD)/tests/portico-stagetest
	PORTICO_BIN=$(abspath $(BUILD)/portico) PORTICO_STAGETEST_BIN=$(abspath $(BUILD)/tests/portico-stagetest) $(PYTHON) -m pytest -q -rsxX --timeout=600 tests/integration

# `make test` installs everything the tests need (scripts/deps.sh: Chromium,
# promtool, PostgreSQL...), so a skipped test there is a failure (PORTICO_NO_SKIP).
test: deps
	@$(MAKE) --no-print-directory all unit
	@PORTICO_NO_SKIP=1 $(MAKE) --no-print-directory integration

fuzz:
	@scripts/deps.sh fuzz
	@$(MAKE) --no-print-directory -f tests/fuzz/fuzz.mk

bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory all
	bench/run.sh
	bench/cache_bench.sh
	bench/cache_gzip_bench.sh
	bench/pg_bench.py

# only the cache's part: hits against Varnish, nginx and HAProxy's caches, then compressed
# (gzip) hits of a 32 KiB JSON body against nginx's proxy_cache + gzip
bench-cache:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory all
	bench/cache_bench.sh
	bench/cache_gzip_bench.sh

# only the PostgreSQL pooler's part: portico against PgBouncer with pgbench
bench-pg:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory all
	bench/pg_bench.py

# compression ratio and CPU per byte of gzip, brotli and zstd at every level over a corpus of
# JSON, HTML, CSS and JavaScript (bench/corpus.py, bench/compress_levels.c; docs/benchmarks.md)
$(BUILD)/bench/compress_levels: bench/compress_levels.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< -lz -lbrotlienc -lzstd

bench-compress: $(BUILD)/bench/compress_levels
	$(PYTHON) bench/corpus.py $(BUILD)/corpus
	$(BUILD)/bench/compress_levels -o $(BUILD)/bench/compress_stream.tsv $(BUILD)/corpus
	$(BUILD)/bench/compress_levels -w -o $(BUILD)/bench/compress_whole.tsv $(BUILD)/corpus

# the public HTTP caching test suite (npm http-cache-tests) against portico's cache; fails when
# a required test fails. PEERS=1 also scores nginx, Varnish, HAProxy and httpd, and compares.
# Results: build/conformance/<proxy>.json. docs/benchmarks.md, "Cache conformance".
# SAN=1 runs it against the sanitizer build (an ASan/UBSan report ends that portico: exit 2).
CONFORMANCE_PEERS := $(if $(filter 1,$(PEERS)),nginx varnish haproxy apache)
conformance:
	@scripts/deps.sh conformance $(if $(CONFORMANCE_PEERS),conformance-peers)
	@$(MAKE) --no-print-directory all
	PORTICO_BIN=$(abspath $(BUILD)/portico) tests/conformance/run.sh portico $(CONFORMANCE_PEERS)

# the cache store's eviction against plain LRU on Zipf traces, in hit ratio
# (docs/benchmarks.md, "Cache eviction"); about a minute, one core
$(BUILD)/bench/cache_evict: bench/cache_evict.c $(LIBOBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIBOBJS) $(LDLIBS) -lm

bench-evict: $(BUILD)/bench/cache_evict
	$(BUILD)/bench/cache_evict

clean:
	rm -rf build

# main.c is outside src/*/ (so not in OBJS) and unit tests are built in one step:
# include their dependency files too, or a header change leaves them stale
-include $(OBJS:.o=.d) $(BUILD)/obj/main.d $(UNIT:=.d)
