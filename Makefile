# The newcomer's commands: `make demo` and `make test` set everything up themselves.
PY       ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed-stamp
SAMPLE   ?= captures/call_policed.pcap

.PHONY: venv demo test test-fast bench bench-read tools clean fuzz validate
FUZZ_SECONDS ?= 60

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -m throttledetect.warm
	touch $@

venv: $(STAMP)

# tshark is the reference the metrics tests compare against; tcpdump and iproute2 serve the
# real-kernel testbed (iptables its random drops); chromium (headless) opens the HTML report in the
# browser test. Installed from Debian's packages when missing and we are root.
tools:
	@if ! command -v tshark >/dev/null || ! command -v tcpdump >/dev/null || ! command -v chromium >/dev/null \
	    || ! command -v iptables >/dev/null || ! command -v tc >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing tshark, tcpdump, iproute2, iptables, chromium from Debian packages"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      tshark tcpdump iproute2 iptables chromium >/dev/null; \
	  else \
	    echo "note: tshark/tcpdump/iproute2/iptables/chromium missing and not root: tests that need them will skip"; \
	  fi; \
	fi

demo: venv
	$(BIN)/throttledetect analyze $(SAMPLE)

test: venv tools
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -x -m "not slow"

# Whole commands start to finish (flows, analyze) on the 2 M-packet mix and 5 copies of it (10 M
# packets), beside scapy, dpkt, nfstream (pip-installed here when missing), tshark and pyshark, and
# `flows` on 0.8, 3.9 and 10 GB captures (written under $TMPDIR, deleted after): bench/commands.py.
bench: venv tools
	$(BIN)/python -m bench.commands $(BENCH_ARGS)

# The reader and flow table alone, in-process, one core (the figures before issue 15): bench/run.py.
bench-read: venv
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The detectors against known truth: simulator scenarios over the corpus call traces (docs/validation.md).
validate: venv
	$(BIN)/throttledetect validate $(VALIDATE_ARGS)

# Coverage-guided fuzzing of the reader, the parsers and flows+classification (atheris, installed on
# demand: it needs no place in the test environment). Crashes land in fuzz/crashes/.
fuzz: venv
	$(BIN)/pip install -q atheris
	$(BIN)/python fuzz/run.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) .cache build *.egg-info .pytest_cache .hypothesis fuzz/corpus fuzz/seeds fuzz/crashes
