# The margin backtest and calibration report (services/marginflow/backtest).
# Included from the main Makefile; PY is the project's virtualenv python. No Kafka or Redis needed.
#   make backtest                      10-year daily simulated history of BTC/ETH/SOL (marketdata simulator)
#   make backtest DATA=history.csv     your own history in the replay CSV format
#   make backtest OUT=dir SWEEP=1      report directory; SWEEP=1 adds the settings sweep (its own time, see README)
PY ?= .venv/bin/python
OUT ?= .run/backtest
BACKTEST_ARGS ?=

.PHONY: backtest

backtest: build
	$(PY) -m marginflow.backtest --out $(OUT) $(if $(DATA),--data $(DATA)) $(if $(SWEEP),--sweep) $(BACKTEST_ARGS)
