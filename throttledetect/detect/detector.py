"""What a detector declares: its name, the kind of throttling it tests, where its thresholds live
in DetectConfig, which flows it runs on, and its entry ``detect(ctx, flow) -> list[Detection]``.
run.py holds the list; adding a detector is one new module that declares one of these, and one
line there."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Detector:
    name: str                   # the test family, as in Detection.test's module ("shaping", "setup", ...)
    kind: str                   # verdicts.KINDS
    params: str                 # the DetectConfig field with its Params (thresholds)
    detect: Callable            # (DetectContext, flow index) -> list[Detection]
    roles: tuple = ("media",)   # the flow roles it runs on ("media", "setup")

    def run(self, ctx, i: int) -> list:
        return list(self.detect(ctx, i))
