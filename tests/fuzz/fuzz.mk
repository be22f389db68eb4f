# tests/fuzz/fuzz.mk: libFuzzer targets. Run from the repository root:
#
#   make fuzz                                   build and run every target
#   make -f tests/fuzz/fuzz.mk FUZZ_SECONDS=600 run-request
#   make -f tests/fuzz/fuzz.mk build            build only
#   make -f tests/fuzz/fuzz.mk check            replay the seed corpora once
#   make -f tests/fuzz/fuzz.mk FUZZ_FLAGS='-jobs=4 -workers=4' run-chunked
#   make -f tests/fuzz/fuzz.mk check-known      replay tests/fuzz/known-crashes/
#
# Every tests/fuzz/fuzz_<name>.c is a target, built into build/fuzz/fuzz_<name>
# from that file plus $(SRCS_<name>) and linked with $(LIBS_<name>). It runs
# for FUZZ_SECONDS on build/fuzz/corpus/<name>/ (where new inputs go) seeded
# from tests/fuzz/corpus/<name>/, with tests/fuzz/<name>.dict or $(DICT_<name>)
# if present. Crashes are written to build/fuzz/artifacts/<name>-*; replay one
# with `build/fuzz/fuzz_<name> build/fuzz/artifacts/<name>-crash-...`.

FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_CFLAGS  ?= -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
override FUZZ_CFLAGS += -Isrc -D_GNU_SOURCE -std=c11 -Wall -Wextra
FUZZ_FLAGS   ?=
FUZZ_OUT     := build/fuzz

FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))

SRCS_request  := $(wildcard src/http/*.c)
SRCS_response := $(wildcard src/http/*.c)
SRCS_chunked  := $(wildcard src/http/*.c)
DICT_request  := tests/fuzz/http.dict
DICT_response := tests/fuzz/http.dict
DICT_chunked  := tests/fuzz/http.dict

# fuzz_conf (the YAML config loader in src/conf/) belongs to the owner of
# src/conf/: adding tests/fuzz/fuzz_conf.c and tests/fuzz/corpus/conf/ is all
# it takes; adjust these if the loader needs more of src/.
SRCS_conf ?= $(wildcard src/conf/*.c) src/core/log.c
LIBS_conf ?= -lyaml
DICT_conf ?= $(wildcard tests/fuzz/conf.dict)

# the log lines' handling of client bytes (src/obs/alog.c)
SRCS_logline := src/obs/alog.c src/core/log.c
LIBS_logline := -lpthread

# the whole request path (src/proxy/ with everything it calls), driven in
# process through the proxy_inline_* hook; seeds from gen_path_corpus.py
# check-path and check-known also fail on a descriptor left open by an input,
# a client connection that outlives the input, or a badly framed request
# sent upstream (see the header of fuzz_path.c)
check-path check-known: export FUZZ_PATH_FDS := 1
check-path check-known: export FUZZ_PATH_STRICT := 1
SRCS_path := $(filter-out src/main.c src/admin/% src/pg/%,$(sort $(wildcard src/*/*.c))) tests/stage/test_stage.c
LIBS_path := -lyaml -lpthread -lcrypto -lz -lbrotlienc -lzstd

# the cache's field parsers: Cache-Control, HTTP dates, If-None-Match
# (src/cache/policy.c, pure functions; http_ieq from src/http/)
SRCS_cachecc := src/cache/policy.c $(wildcard src/http/*.c)
LIBS_cachecc :=

# the PostgreSQL message parsers (src/pg/proto.c)
SRCS_pgmsg := src/pg/proto.c
LIBS_pgmsg :=

# targets whose code calls into the proxy (stage bodies, wakers, the stage
# API) link it as fuzz_path does, without the test stage
FUZZ_PROXY_SRCS := $(filter-out src/main.c src/admin/% src/pg/%,$(sort $(wildcard src/*/*.c)))
FUZZ_PROXY_LIBS := -lyaml -lpthread -lcrypto -lz -lbrotlienc -lzstd

# the cache's admin API (src/cache/admin.c): purge and bump query strings,
# on a real store (src/cache/store.c)
SRCS_cacheadmin := $(FUZZ_PROXY_SRCS)
LIBS_cacheadmin := $(FUZZ_PROXY_LIBS)

# where rate limits and the login guard read keys (src/limit/): cookies,
# form and JSON fields of a login body
SRCS_limitkeys := $(FUZZ_PROXY_SRCS)
LIBS_limitkeys := $(FUZZ_PROXY_LIBS)

# the proof-of-work challenge (src/limit/challenge.c): the pass cookie, the
# answer's query and the page; the stage functions it calls are played by
# the target itself
SRCS_challenge := src/limit/challenge.c
LIBS_challenge := -lcrypto

# SCRAM-SHA-256 both ways, the verifiers and the md5 response (src/pg/auth.c)
SRCS_scram := src/pg/auth.c
LIBS_scram := -lcrypto

FUZZ_BINS := $(FUZZ_TARGETS:%=$(FUZZ_OUT)/fuzz_%)
FUZZ_RUNS := $(FUZZ_TARGETS:%=run-%)
FUZZ_CHECKS := $(FUZZ_TARGETS:%=check-%)

.PHONY: all build run check check-known clean $(FUZZ_RUNS) $(FUZZ_CHECKS)
all: run
build: $(FUZZ_BINS)
run: $(FUZZ_RUNS)
check: $(FUZZ_CHECKS)

.SECONDEXPANSION:
$(FUZZ_BINS): $(FUZZ_OUT)/fuzz_%: tests/fuzz/fuzz_%.c $$(SRCS_$$*) $$(wildcard tests/fuzz/*.h) \
              $$(wildcard src/*/*.h) tests/fuzz/fuzz.mk
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(SRCS_$*) $(LIBS_$*)

$(FUZZ_RUNS): run-%: $(FUZZ_OUT)/fuzz_%
	@mkdir -p $(FUZZ_OUT)/corpus/$* $(FUZZ_OUT)/artifacts
	$< -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	   -artifact_prefix=$(FUZZ_OUT)/artifacts/$*- \
	   $(addprefix -dict=,$(or $(DICT_$*),$(wildcard tests/fuzz/$*.dict))) \
	   $(FUZZ_FLAGS) $(FUZZ_OUT)/corpus/$* $(wildcard tests/fuzz/corpus/$*)

$(FUZZ_CHECKS): check-%: $(FUZZ_OUT)/fuzz_%
	$< -runs=0 $(wildcard tests/fuzz/corpus/$*)

# tests/fuzz/known-crashes/<name>/: inputs that crash target <name> on the
# current code, kept out of the replayed corpus until their defect is fixed
# (see the README there). Fails while any of them still crashes; a fixed one
# belongs in tests/fuzz/corpus/<name>/ (git mv).
KNOWN_DIRS := $(patsubst tests/fuzz/known-crashes/%/,%,$(dir $(wildcard tests/fuzz/known-crashes/*/*)))
check-known: $(sort $(KNOWN_DIRS:%=$(FUZZ_OUT)/fuzz_%))
	@fail=0; for f in $(sort $(filter-out %/README.md,$(wildcard tests/fuzz/known-crashes/*/*))); do \
	    t=$$(basename $$(dirname $$f)); log=$(FUZZ_OUT)/known-$$t-$$(basename $$f).log; \
	    if $(FUZZ_OUT)/fuzz_$$t $$f >$$log 2>&1; then \
	        echo "fixed:   $$f (git mv it to tests/fuzz/corpus/$$t/)"; \
	    else \
	        what=$$(grep -m1 -E 'ERROR: |runtime error:|invariant failed|still open|descriptors open' $$log | \
	                sed -e 's/^.*ERROR: //' -e 's/ on address.*//' -e 's/^.*runtime error/runtime error/'); \
	        where=$$(grep -m1 -E '#[0-9]+ .* in [a-z_]+ .*src/' $$log | sed -e 's/.* in //' -e 's|/.*/src/|src/|'); \
	        echo "crashes: $$f: $$what in $$where ($$log)"; fail=1; \
	    fi; \
	done; exit $$fail

clean:
	rm -rf $(FUZZ_OUT)
