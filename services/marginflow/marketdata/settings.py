"""Settings of the marketdata service (environment variables, parsed once)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib

from marginflow.shared.config import (CommonSettings, choice, env, float_list, non_negative_int, parse_bool, parse_port,
                                      positive_float, positive_int, unit_interval)
from marginflow.shared.depthcurve import DEFAULT_BUCKETS_BPS, check_buckets


def depth_buckets(text: str) -> tuple[float, ...]:
    """Comma-separated distances from the mid in bps, > 0 and strictly increasing."""
    return check_buckets(float_list(text))


def book_levels(text: str) -> int:
    value = positive_int(text)
    if value > 32:
        raise ValueError(f"must be in 1..32, got {value}")
    return value


def speed(text: str) -> float | None:
    """'max' (as fast as possible) or a positive multiple of event time."""
    if text.strip().lower() == "max":
        return None
    return positive_float(text)


@dataclasses.dataclass(frozen=True)
class MarketDataSettings:
    common: CommonSettings = dataclasses.field(default_factory=CommonSettings)
    grpc_port: int = env("MF_MARKETDATA_GRPC_PORT", parse_port, 50051, "marketdata gRPC port")
    metrics_port: int = env("MF_MARKETDATA_METRICS_PORT", parse_port, 9101, "marketdata /metrics port")
    source: str = env("MF_MD_SOURCE", choice("simulator", "replay"), "simulator", "simulator or replay")
    replay_file: str = env("MF_MD_REPLAY_FILE", str, "", "CSV of ticks to replay (MF_MD_SOURCE=replay)")
    speed: float | None = env("MF_MD_SPEED", speed, 1.0, "pace: multiple of event time, or 'max'")
    sim_seed: int = env("MF_MD_SIM_SEED", non_negative_int, 7, "simulator seed")
    sim_step_ms: int = env("MF_MD_SIM_STEP_MS", positive_int, 100, "simulator event-time step")
    sim_block_steps: int = env("MF_MD_SIM_BLOCK_STEPS", positive_int, 10, "simulator steps per published batch")
    jump_threshold: float = env("MF_MD_JUMP_THRESHOLD", unit_interval, 0.10,
                                "log move from the last price that holds a tick as suspect")
    confirm_ticks: int = env("MF_MD_JUMP_CONFIRM_TICKS", positive_int, 3, "ticks that confirm a suspect jump")
    jump_hold_ms: int = env("MF_MD_JUMP_HOLD_MS", positive_int, 60_000,
                            "event time after which an uncontradicted suspect jump is confirmed")
    mark_interval_ms: int = env("MF_MD_MARK_INTERVAL_MS", non_negative_int, 250,
                                "event-time spacing of marks per instrument")
    exit_at_end: bool = env("MF_MD_EXIT_AT_END", parse_bool, False, "exit when a replay ends (default: keep serving)")
    basis_half_life_ms: int = env("MF_MD_BASIS_HALF_LIFE_MS", positive_int, 30_000, "mark basis smoothing")
    depth_buckets_bps: tuple[float, ...] = env("MF_MD_DEPTH_BUCKETS_BPS", depth_buckets, DEFAULT_BUCKETS_BPS,
                                               "distances of the marks' depth curve from the mid, bps")
    sim_book_levels: int = env("MF_MD_SIM_BOOK_LEVELS", book_levels, 12, "simulator book levels per side (1..32)")


# ---- command-line options that stand for settings (the service and the supervisor share them)

def add_source_options(parser: argparse.ArgumentParser) -> None:
    """--replay / --speed / --universe, shared with the supervisor (``make run REPLAY= SPEED=``)."""
    parser.add_argument("--replay", help="CSV of ticks to replay instead of the simulator")
    parser.add_argument("--speed", help="'max' or a multiple of event time (default 1)")
    parser.add_argument("--universe", help="instrument universe TOML file")


def source_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment variables the source options stand for (paths made absolute)."""
    env: dict[str, str] = {}
    if args.replay:
        env["MF_MD_SOURCE"] = "replay"
        env["MF_MD_REPLAY_FILE"] = str(pathlib.Path(args.replay).resolve())
    if args.speed:
        env["MF_MD_SPEED"] = args.speed
    if args.universe:
        env["MF_UNIVERSE_FILE"] = str(pathlib.Path(args.universe).resolve())
    return env


def apply_command_line(argv: list[str]) -> None:
    """``python -m marginflow.marketdata [--replay FILE] [--speed max|N] [--universe FILE] [--seed N]
    [--exit-at-end]``: the options set the environment variables they stand for (they win)."""
    parser = argparse.ArgumentParser(prog="marginflow.marketdata",
                                     description="Market data: simulator or replay, validation, index and marks.")
    add_source_options(parser)
    parser.add_argument("--seed", help="simulator seed")
    parser.add_argument("--exit-at-end", action="store_true", help="exit when the replay ends")
    args = parser.parse_args(argv)
    os.environ.update(source_env(args))
    if args.seed:
        os.environ["MF_MD_SIM_SEED"] = args.seed
    if args.exit_at_end:
        os.environ["MF_MD_EXIT_AT_END"] = "true"
