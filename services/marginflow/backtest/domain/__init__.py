"""Pure parts of the backtest: statistics (numpy, scipy.stats), reference portfolios, the estimator
replay composed from riskparams' domain functions. No I/O, no clock, no environment."""
