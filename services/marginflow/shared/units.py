"""Time units of the platform, defined once. Years are ACT/365 (365 days of 86,400 s), the
convention of the annualised volatilities and of Black-76's time to expiry here."""

MS_PER_SECOND = 1_000
SECONDS_PER_HOUR = 3_600
MS_PER_HOUR = SECONDS_PER_HOUR * MS_PER_SECOND
SECONDS_PER_DAY = 86_400
MS_PER_DAY = SECONDS_PER_DAY * MS_PER_SECOND
DAYS_PER_YEAR = 365.0
SECONDS_PER_YEAR = DAYS_PER_YEAR * SECONDS_PER_DAY
MS_PER_YEAR = SECONDS_PER_YEAR * MS_PER_SECOND
