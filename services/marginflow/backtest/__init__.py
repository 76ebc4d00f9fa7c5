"""Margin backtest and calibration report: a price history through the same riskparams estimators
and margin core the services use; coverage, capital, procyclicality and liquidations on noise."""
