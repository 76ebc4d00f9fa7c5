"""The margin application: use cases over the margin domain, with their ports passed in.

* :mod:`.ports` — the publisher and metrics ports, the configuration, the errors queries raise;
* :mod:`.models` — the model of a risk version (risk arrays + the core's MarginModel);
* :mod:`.evaluation` — full and incremental recalculation, equity at marks, states;
* :mod:`.publication` — which results go out, and when;
* :mod:`.queries` — GetMargin, WhatIf, Explain, liquidation prices (any thread);
* :mod:`.routing` — decoded records to the use cases (marks, risk params, snapshots, rebalances);
* :mod:`.engine` — :class:`MarginEngine`, the parts assembled.
"""

from marginflow.margin.application.engine import MarginEngine
from marginflow.margin.application.ports import (EngineConfig, EngineMetrics, NotReady, OtherVersion, Publisher,
                                                 UnknownAccount)

__all__ = ["MarginEngine", "EngineConfig", "EngineMetrics", "NotReady", "OtherVersion", "Publisher", "UnknownAccount"]
