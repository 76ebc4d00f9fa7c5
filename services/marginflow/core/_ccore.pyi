"""Type stubs of the C margin core (same API as marginflow.core.reference)."""

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

Float64Array: TypeAlias = npt.NDArray[np.float64]
Int64Array: TypeAlias = npt.NDArray[np.int64]
Int32Array: TypeAlias = npt.NDArray[np.int32]
Int8Array: TypeAlias = npt.NDArray[np.int8]
FlagArray: TypeAlias = npt.NDArray[np.uint8] | npt.NDArray[np.bool_]
BoolArray: TypeAlias = npt.NDArray[np.bool_]

KIND_PERP: int
KIND_FUTURE: int
KIND_CALL: int
KIND_PUT: int

def black76_price(
    kind: Int8Array, forward: Float64Array, strike: Float64Array, expiry_years: Float64Array,
    implied_vol: Float64Array,
) -> Float64Array: ...
def risk_arrays(
    kind: Int8Array, underlying: Int32Array, forward: Float64Array, strike: Float64Array,
    expiry_years: Float64Array, implied_vol: Float64Array, multiplier: Float64Array,
    price_shock: Float64Array, vol_shock: Float64Array, *, horizon_years: float = 0.0,
    vol_shock_relative: bool = False, n_threads: int = 2,
) -> Float64Array: ...
def depth_distance(
    instrument: Int32Array, size: Float64Array, points_share: Float64Array, points_bps: Float64Array,
    last_contracts: Float64Array, last_bps: Float64Array, floor_bps: Float64Array, uncovered_penalty: float,
) -> Float64Array: ...


def valuate(
    indptr: Int64Array, instrument: Int32Array, size: Float64Array, entry: Float64Array, isolated: FlagArray,
    isolated_collateral: Float64Array, isolated_im: Float64Array, balances: Float64Array, cross_im: Float64Array,
    mm_factor: float, mark: Float64Array, contract_size: Float64Array, mark_time_ms: Int64Array,
    fresh: FlagArray, unit_value: Float64Array, asset_fresh: FlagArray, asset_time_ms: Int64Array, *,
    n_threads: int = 1,
) -> dict[str, Float64Array | Int64Array | Int8Array | BoolArray]: ...

class MarginModel:
    def __init__(
        self, risk: Float64Array, underlying: Int32Array, n_grid: int, tail_weights: Float64Array,
        es_level: float, unit_notional: Float64Array, mark_value: Float64Array, half_spread: Float64Array,
        depth: Float64Array, bracket_floor: Float64Array, bracket_rate: Float64Array, mm_factor: float,
    ) -> None: ...
    @property
    def n_instruments(self) -> int: ...
    @property
    def n_underlyings(self) -> int: ...
    @property
    def n_grid(self) -> int: ...
    @property
    def n_tail(self) -> int: ...
    @property
    def n_hist(self) -> int: ...
    @property
    def n_worst(self) -> int: ...
    @property
    def es_level(self) -> float: ...
    @property
    def mm_factor(self) -> float: ...
    def compute(
        self, indptr: Int64Array, instrument: Int32Array, size: Float64Array, isolated: FlagArray,
        n_threads: int = 2, *, scale: Float64Array | None = None,
    ) -> dict[str, Float64Array | Int64Array]: ...
    def what_if(
        self, instrument: Int32Array, size: Float64Array, isolated: FlagArray, delta_instrument: Int32Array,
        delta_size: Float64Array,
    ) -> dict[str, float | int]: ...
    def explain(
        self, instrument: Int32Array, size: Float64Array, isolated: FlagArray, *, scale: Float64Array | None = None,
    ) -> dict[str, Any]: ...
