"""Pure maths of riskparams: numpy and dataclasses only (no I/O, no clocks, no environment).

Units: returns are natural-log returns per sampling interval; variances are per sampling interval
unless a name says ``annual``; volatilities published are annualised with
``samples_per_year = 365 d / interval`` (crypto trades every day).
"""
