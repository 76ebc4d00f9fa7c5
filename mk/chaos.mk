# The chaos run: its own Kafka + Redis (own ports and data directory), the platform under the
# supervisor, the simulator, a demo book and a fill generator; one fault at a time, checks after each.
# Loopback only, bounded by SECONDS, stops everything it started. Included from the main Makefile.
ACCOUNTS ?= 100000
RATE ?= 1000
SECONDS ?= 3600
STEADY ?= 10
CHAOS_REPORT ?= chaos-report.md
CHAOS_ARGS ?=

.PHONY: chaos chaos-small

chaos: build tools
	$(PY) -m marginflow.chaos --accounts $(ACCOUNTS) --rate $(RATE) --seconds $(SECONDS) \
		--steady-seconds $(STEADY) --report $(CHAOS_REPORT) $(CHAOS_ARGS)

# One kill -9 per service and one Redis flush, 1,000 accounts (what `make test` runs, as a test).
chaos-small: build tools
	$(PY) -m marginflow.chaos --small --accounts 1000 --rate 200 --seconds 600 --steady-seconds 3 \
		--report $(CHAOS_REPORT) $(CHAOS_ARGS)
